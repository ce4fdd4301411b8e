#!/usr/bin/env bash
# mailroom in one command, no cluster: run the sidecar with capture delivery, send it a message
# with curl, and show the captured, DKIM-signed message and the metrics it produced.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/debug/mailroom-sidecar"
[ -x "$bin" ] || (cd "$root" && cargo build --bin mailroom-sidecar)
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; wait 2>/dev/null || true; echo; echo "demo files kept in $work"' EXIT
cd "$work"
cp "$root/examples/sidecar.yaml" .
openssl genpkey -algorithm ED25519 -out dkim-example.com.pem 2>/dev/null

echo "== starting mailroom-sidecar (smtp 127.0.0.1:2525, admin 127.0.0.1:9465)"
"$bin" --check-config sidecar.yaml
"$bin" --config sidecar.yaml 2>sidecar.log &
pid=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:9465/readyz >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs http://127.0.0.1:9465/readyz >/dev/null || { cat sidecar.log; exit 1; }

printf 'From: Demo App <app@example.com>\r\nTo: you@example.net\r\nSubject: Hello from mailroom\r\nMessage-ID: <demo-1@example.com>\r\nDate: %s\r\n\r\nIt works: spooled, signed and captured.\r\n' "$(date -R)" > message.txt
echo "== sending with curl"
curl -sS smtp://127.0.0.1:2525 --mail-from app@example.com --mail-rcpt you@example.net --upload-file message.txt

for _ in $(seq 50); do ls capture/*.eml >/dev/null 2>&1 && break; sleep 0.1; done
echo "== captured message ($(ls capture/*.eml))"
cat capture/*.eml
echo "== DNS record to publish for it"
printf 'demo._domainkey.example.com. TXT "v=DKIM1; k=ed25519; p=%s"\n' \
  "$(openssl pkey -in dkim-example.com.pem -pubout -outform DER | tail -c 32 | base64)"
echo "== metrics"
curl -fs http://127.0.0.1:9465/metrics | grep -E '^mailroom_sidecar_(messages_(received|delivered)_total|dkim_signatures_total)'
