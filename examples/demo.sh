#!/usr/bin/env bash
# mailroom in one command, no cluster: render the example MailDomain and Relays offline with
# `mailroom-operator render`, run the sidecar of the staging Relay (capture delivery), send it a
# message with curl, and show the captured, DKIM-signed message, the DNS records to publish and
# the metrics it produced. SIDECAR_LISTEN_ADDR / SIDECAR_ADMIN_ADDR move its ports (port 0: any
# free port; the script reads the ones it got from the sidecar's log).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${MAILROOM_BIN:-$root/target/debug}"
[ -x "$bin/mailroom-sidecar" ] && [ -x "$bin/mailroom-operator" ] || (cd "$root" && cargo build --bins)
smtp="${SIDECAR_LISTEN_ADDR:-127.0.0.1:2525}"
admin="${SIDECAR_ADMIN_ADDR:-127.0.0.1:9465}"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; wait 2>/dev/null || true; echo; echo "demo files kept in $work"' EXIT
cd "$work"

echo "== mailroom-operator render -f examples (what the operator would do in a cluster)"
"$bin/mailroom-operator" render -f "$root/examples" -o rendered
config=rendered/shop-staging/sidecar.yaml

echo "== starting mailroom-sidecar for Relay shop/staging"
"$bin/mailroom-sidecar" --check-config "$config"
SIDECAR_LISTEN_ADDR="$smtp" SIDECAR_ADMIN_ADDR="$admin" SIDECAR_LOG_FORMAT=plain \
    "$bin/mailroom-sidecar" --config "$config" 2>sidecar.log &
pid=$!
# The line it logs once both ports are bound: "... listening smtp=127.0.0.1:2525 admin=127.0.0.1:9465".
for _ in $(seq 100); do grep -q ' listening smtp=' sidecar.log && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
listening="$(grep -m1 ' listening smtp=' sidecar.log)" || { cat sidecar.log; exit 1; }
smtp="$(sed 's/.* smtp=\([^ ]*\).*/\1/' <<<"$listening")"
admin="$(sed 's/.* admin=\([^ ]*\).*/\1/' <<<"$listening")"
echo "listening: smtp $smtp, admin $admin"
for _ in $(seq 100); do curl -fs "http://$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://$admin/readyz" >/dev/null || { cat sidecar.log; exit 1; }

printf 'From: Demo App <app@example.com>\r\nTo: you@example.net\r\nSubject: Hello from mailroom\r\nMessage-ID: <demo-1@example.com>\r\nDate: %s\r\n\r\nIt works: spooled, signed and captured.\r\n' "$(date -R)" > message.txt
echo "== sending with curl"
curl -sS "smtp://$smtp" --mail-from app@example.com --mail-rcpt you@example.net --upload-file message.txt

capture=rendered/shop-staging/capture
for _ in $(seq 50); do ls "$capture"/*.eml >/dev/null 2>&1 && break; sleep 0.1; done
echo "== captured message ($(ls "$work/$capture"/*.eml))"
cat "$capture"/*.eml
echo "== DNS records to publish for example.com"
cat rendered/example-com.dns.txt
echo "== metrics"
curl -fs "http://$admin/metrics" | grep -E '^mailroom_sidecar_(messages_(received|delivered)_total|dkim_signatures_total)'
