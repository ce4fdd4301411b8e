#!/usr/bin/env bash
# Builds the fuzz targets with cargo-fuzz (from the test env cache) and runs each for SECONDS.
#
# Usage: bash fuzz/run.sh SECONDS [TARGET...]     (default: every target, one after the other)
#   FUZZ_CORPUS=fresh   start from the seeds in a temp corpus (make test); default: the local
#                       corpus fuzz/corpus/<target>, which grows from run to run (gitignored)
#
# Stable rustc rejects the -Z flags cargo-fuzz passes (-Zsanitizer=address and friends) unless
# RUSTC_BOOTSTRAP=1 is set; with it, the stable toolchain builds libFuzzer targets with
# AddressSanitizer (its runtime ships with rust-std). One process, one core: the machines are shared.
# A crash, a broken invariant (panic), a timeout or a leak ends the run with an error and leaves
# the input in fuzz/artifacts/<target>/; turn it into a test in sidecar/tests/fuzz_regressions.rs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(smtp_session config spool_replay)

eval "$(bash "$root/tests/env/prepare.sh" --print-env)"
export PATH="$MAILROOM_TESTENV_BIN:$PATH" RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0
cd "$root"
# Outside the checkout, so a fresh clone (CI) reuses the instrumented build of earlier runs.
target_dir="${MAILROOM_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/fuzz-target}"
cargo fuzz build -O --target-dir "$target_dir"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for t in "${targets[@]}"; do
    case "$t" in
    config) seeds=tests/fixtures/sidecar-config ;;
    *) seeds="fuzz/seeds/$t" ;;
    esac
    if [ "${FUZZ_CORPUS:-}" = fresh ]; then corpus="$tmp/$t"; else corpus="fuzz/corpus/$t"; fi
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    log="$tmp/$t.log"
    extra=()
    # Spool::open starts a sync thread that ends on its own once the spool is dropped; when
    # LeakSanitizer scans while it is still exiting, its thread-local destructor list looks leaked
    # (168 bytes from __cxa_thread_atexit_impl; does not reproduce when the input is rerun).
    [ "$t" = spool_replay ] && extra=(-detect_leaks=0)
    echo "fuzz: $t for ${seconds}s (corpus $corpus, seeds $seeds)" >&2
    # -timeout: one input taking 30 s is a hang; -rss_limit_mb: libFuzzer's default 2 GiB.
    if ! cargo fuzz run -O --target-dir "$target_dir" "$t" "$corpus" "$seeds" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        tail -60 "$log" >&2
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/ (see above)" >&2
        exit 1
    fi
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
    echo "fuzz: $t ok: $execs executions ($rate/s) in ${seconds}s; ${done_line#*DONE   }" >&2
done
