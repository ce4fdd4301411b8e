#!/usr/bin/env bash
# Build the test environment into a cache outside the repo: kube-apiserver, kube-controller-manager,
# etcd, helm, prometheus, promtool (from their Go modules, versions in tests/env/versions.env) and a
# Python venv with the SMTP/DKIM tools. Idempotent: what is already built is skipped, so a second run
# takes seconds. The first run takes several minutes on 2 cores (see docs/testing.md).
#
# Usage:
#   bash tests/env/prepare.sh               build what is missing, progress on stderr
#   eval "$(bash tests/env/prepare.sh --print-env)"   same, then export MAILROOM_TESTENV_* here
#
# Output: $MAILROOM_TESTENV_DIR = ${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/testenv/<k8s version>-<hash>
#   bin/    kube-apiserver kube-controller-manager etcd helm prometheus promtool
#   venv/   python with aiosmtpd, dkimpy, cryptography, dnspython
#   env.sh  exports MAILROOM_TESTENV_DIR, MAILROOM_TESTENV_BIN, MAILROOM_TESTENV_PYTHON
# <hash> is the first 12 hex digits of sha256(versions.env); tests/support computes the same path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
print_env=false
for arg in "$@"; do
    case "$arg" in
    --print-env) print_env=true ;;
    -h | --help)
        sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "prepare.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

# shellcheck source=versions.env
source "$here/versions.env"

start_all=$SECONDS
log() { echo "testenv: $*" >&2; }
die() {
    echo "testenv: error: $*" >&2
    exit 1
}

hash="$(sha256sum "$here/versions.env" | cut -c1-12)"
root="${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/testenv"
dir="$root/${KUBERNETES_VERSION}-${hash}"
bin="$dir/bin"
mkdir -p "$bin"

# One prepare at a time per cache (two test runs starting together must not build twice).
if command -v flock >/dev/null; then
    exec 9>"$root/.lock"
    if ! flock -n 9; then
        log "another prepare.sh holds $root/.lock; waiting for it"
        flock 9
    fi
fi

# === toolchains ===

# Every Go module here needs at least the go directive of its go.mod; we never let the go command
# download another toolchain behind our back (GOTOOLCHAIN=local), so check it up front.
check_go() {
    command -v go >/dev/null ||
        die "go not found on PATH. Install Go >= 1.26.7 (the Go toolchain) and rerun tests/env/prepare.sh."
    local have need=1.26.7 d
    have="$(GOTOOLCHAIN=local go env GOVERSION)"
    have="${have#go}"
    for d in "$here"/go/*/go.mod; do
        local v
        v="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$d")"
        if [ "$(printf '%s\n%s\n' "$need" "$v" | sort -V | tail -1)" = "$v" ]; then need="$v"; fi
    done
    if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
        die "go $have is too old: the tools modules in tests/env/go need go >= $need. Install a newer Go and rerun."
    fi
}

check_python() {
    command -v python3 >/dev/null ||
        die "python3 not found on PATH. Install Python >= 3.10 with the venv module and rerun tests/env/prepare.sh."
    python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null ||
        die "python3 must be >= 3.10 with the venv and ensurepip modules (Debian: apt-get install python3-venv)."
}

# === go builds ===

# The go.mod files are generated from versions.env by pin.sh; refuse to build from stale ones.
check_pinned() {
    local name="$1" module="$2" want="$3" got
    got="$(cd "$here/go/$name" && GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$module")" ||
        die "cannot read $module from tests/env/go/$name/go.mod; run: bash tests/env/pin.sh $name"
    [ "$got" = "$want" ] ||
        die "tests/env/go/$name pins $module $got but versions.env says $want; run: bash tests/env/pin.sh $name"
}

# go_build NAME "BINARIES" "PACKAGES" [extra go build args...]: builds every package of tools module
# NAME into $bin unless all of BINARIES already exist there. Builds into a temp dir and renames, so an
# interrupted build never leaves a half-written binary that a later run would take as done.
go_build() {
    local name="$1" bins="$2" pkgs="$3" b missing=()
    shift 3
    for b in $bins; do
        [ -x "$bin/$b" ] || missing+=("$b")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "ok      $bins (cached)"
        return
    fi
    log "build   $bins from tests/env/go/$name (first build takes minutes; go output follows)"
    local t0=$SECONDS tmp
    tmp="$(mktemp -d "$dir/.build-$name.XXXXXX")"
    # shellcheck disable=SC2086 # pkgs is a list
    (cd "$here/go/$name" && go build -p "$jobs" -o "$tmp/" "$@" $pkgs) ||
        die "building $bins failed (see go output above). Check the Go toolchain and network access to the Go module proxy, then rerun."
    for b in $bins; do
        [ -x "$tmp/$b" ] || die "go build produced no $b in $tmp"
        mv -f "$tmp/$b" "$bin/$b"
    done
    rm -rf "$tmp"
    log "built   $bins in $((SECONDS - t0))s"
}

build_go_tools() {
    check_go
    export GOTOOLCHAIN=local CGO_ENABLED=0
    export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
    # Two cores: let the go command run one compile per core; more only adds memory pressure.
    jobs="$(nproc)"

    local date kver
    date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

    check_pinned kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
    kver="${KUBERNETES_VERSION#v}"
    # Without these the binaries report v0.0.0-master, which breaks helm's kubeVersion checks.
    local kflags="-s -w" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        kflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=${kver%%.*}"
        kflags+=" -X $p.gitMinor=$(echo "$kver" | cut -d. -f2) -X $p.gitTreeState=clean -X $p.buildDate=$date"
    done
    go_build kubernetes "kube-apiserver kube-controller-manager" \
        "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager" \
        -ldflags="$kflags"

    check_pinned etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    # The server module's main package is named after the module directory (v3); build to a file.
    if [ -x "$bin/etcd" ]; then
        log "ok      etcd (cached)"
    else
        log "build   etcd from tests/env/go/etcd"
        local t0=$SECONDS
        (cd "$here/go/etcd" && go build -p "$jobs" -ldflags="-s -w" -o "$bin/.etcd.tmp" go.etcd.io/etcd/server/v3) ||
            die "building etcd failed (see go output above)."
        mv -f "$bin/.etcd.tmp" "$bin/etcd"
        log "built   etcd in $((SECONDS - t0))s"
    fi

    check_pinned helm helm.sh/helm/v3 "$HELM_VERSION"
    local cgo hflags
    # helm's Makefile: default capabilities = client-go minor (v0.X -> 1.X).
    cgo="$(cd "$here/go/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)"
    cgo="${cgo#v}"
    hflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        hflags+=" -X $p.k8sVersionMajor=$((${cgo%%.*} + 1)) -X $p.k8sVersionMinor=$(echo "$cgo" | cut -d. -f2)"
    done
    go_build helm helm helm.sh/helm/v3/cmd/helm -ldflags="$hflags"

    check_pinned prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION"
    local pver pflags
    # Go module v0.3XY.Z is Prometheus 3.XY.Z.
    pver="$(echo "${PROMETHEUS_VERSION#v0.}" | sed -E 's/^3([0-9]{2})\./3.\1./; s/^3\.0([0-9])\./3.\1./')"
    p=github.com/prometheus/common/version
    pflags="-s -w -X $p.Version=$pver -X $p.Revision=$PROMETHEUS_VERSION -X $p.Branch=release"
    pflags+=" -X $p.BuildUser=mailroom-testenv -X $p.BuildDate=$date"
    go_build prometheus "prometheus promtool" \
        "github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool" \
        -tags="$PROMETHEUS_BUILD_TAGS" -ldflags="$pflags"
}

# === python venv ===

build_venv() {
    local venv="$dir/venv" stamp="$dir/venv/.mailroom-requirements"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$PYTHON_REQUIREMENTS" ]; then
        log "ok      venv (cached)"
        return
    fi
    check_python
    log "build   venv: $PYTHON_REQUIREMENTS"
    local t0=$SECONDS
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)."
    # shellcheck disable=SC2086 # a list of requirement specifiers
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q $PYTHON_REQUIREMENTS ||
        die "pip install into $venv failed (see pip output above); check access to the Python package index."
    "$venv/bin/python" -c 'import aiosmtpd, dkim, cryptography, dns' ||
        die "venv at $venv cannot import its tools"
    echo "$PYTHON_REQUIREMENTS" >"$stamp"
    log "built   venv in $((SECONDS - t0))s"
}

log "cache   $dir"
build_go_tools
build_venv

cat >"$dir/env.sh" <<EOF
# Written by tests/env/prepare.sh; source it to point tests at this test environment.
export MAILROOM_TESTENV_DIR='$dir'
export MAILROOM_TESTENV_BIN='$bin'
export MAILROOM_TESTENV_PYTHON='$dir/venv/bin/python'
EOF
log "ready   in $((SECONDS - start_all))s; binaries in $bin (source $dir/env.sh to export MAILROOM_TESTENV_*)"
if $print_env; then
    grep '^export ' "$dir/env.sh"
fi
