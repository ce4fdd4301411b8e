#!/usr/bin/env bash
# Packages kubectl-mailroom for krew: OUTDIR/kubectl-mailroom_linux_amd64.tar.gz (the binary and
# LICENSE) and OUTDIR/mailroom.yaml (mailroom.yaml.in with the version and the archive's sha256).
# Usage: plugin/krew/package.sh VERSION OUTDIR BINARY
set -euo pipefail
[ "$#" -eq 3 ] || { echo "usage: $0 VERSION OUTDIR BINARY" >&2; exit 64; }
version="$1" out="$2" binary="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]] || { echo "$0: VERSION must look like v1.2.3, not $version" >&2; exit 64; }
[ -x "$binary" ] || { echo "$0: $binary is not an executable (cargo build --release -p kubectl-mailroom)" >&2; exit 66; }
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$binary" "$stage/kubectl-mailroom"
cp "$repo/LICENSE" "$stage/LICENSE"
archive="$out/kubectl-mailroom_linux_amd64.tar.gz"
# Reproducible: fixed owner, order and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -czf "$archive" kubectl-mailroom LICENSE
sha="$(sha256sum "$archive" | cut -d' ' -f1)"
sed -e "s/@VERSION@/$version/g" -e "s/@SHA256@/$sha/" "$here/mailroom.yaml.in" >"$out/mailroom.yaml"
echo "$archive"
echo "$out/mailroom.yaml"
