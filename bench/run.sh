#!/usr/bin/env bash
# `make bench`: mailroom-sidecar vs Postfix vs the no-relay ceiling on this machine, then the
# report (docs/benchmarks.md and its plots). Installs what it needs: Postfix (Debian package, for
# postfix itself and its smtp-source / smtp-sink tools), perf (linux-perf) and a venv with matplotlib in the cache.
# Usage: bash bench/run.sh [--messages N] [--repeat N]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/bench"
log() { echo "bench: $*" >&2; }

if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
    [ "$(id -u)" = 0 ] || { log "Postfix is missing; run as root or: sudo apt-get install postfix"; exit 1; }
    log "installing Postfix (Debian package; not started as a system service)"
    apt-get update -qq
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
if ! command -v perf >/dev/null; then
    [ "$(id -u)" = 0 ] || { log "perf is missing (the profiled scenario); run as root or: sudo apt-get install linux-perf"; exit 1; }
    log "installing perf (Debian package linux-perf)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
command -v openssl >/dev/null || { log "openssl is missing: apt-get install openssl"; exit 1; }
if [ ! -x "$cache/venv/bin/python" ] || ! "$cache/venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    log "creating $cache/venv with matplotlib"
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install -q "matplotlib==3.9.2"
fi
log "building mailroom-sidecar (release)"
(cd "$root" && cargo build --release --bin mailroom-sidecar)
"$cache/venv/bin/python" "$root/bench/run.py" "$@"
"$cache/venv/bin/python" "$root/bench/backlog.py"
"$cache/venv/bin/python" "$root/bench/report.py" "$root/bench/results/latest.json"
