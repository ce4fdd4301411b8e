#!/usr/bin/env python3
"""Regenerates the fuzz seed corpora in fuzz/seeds/ from real clients and a real spool.

    python3 fuzz/seeds/generate.py target/debug/mailroom-sidecar

smtp_session/: what real SMTP clients send (Python's smtplib and curl, recorded by a scripted
server on loopback), plus a few hand-written hostile transcripts. Each seed starts with the
variant byte that `mailroom_sidecar::fuzzing::smtp_session` reads.
spool_replay/: segment files written by the real sidecar binary after accepting mail (capture
delivery, DKIM-signed), prefixed with the raw-mode byte; plus structured-mode op lists.
The config target's seeds are the golden files in tests/fixtures/sidecar-config/.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent


def record_client(send):
    """Runs `send(port)` against a scripted SMTP server; returns the bytes the client sent."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = bytearray()

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"220 relay.test ESMTP\r\n")
            buf, in_data = b"", False
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                got.extend(data)
                buf += data
                while True:
                    if in_data:
                        end = buf.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        buf, in_data = buf[end + 5 :], False
                        conn.sendall(b"250 2.0.0 Ok: queued\r\n")
                        continue
                    nl = buf.find(b"\r\n")
                    if nl < 0:
                        break
                    line, buf = buf[:nl].upper(), buf[nl + 2 :]
                    if line.startswith(b"EHLO"):
                        conn.sendall(b"250-relay.test\r\n250-PIPELINING\r\n250-SIZE 4096\r\n"
                                     b"250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n")
                    elif line.startswith(b"DATA"):
                        in_data = True
                        conn.sendall(b"354 go ahead\r\n")
                    elif line.startswith(b"QUIT"):
                        conn.sendall(b"221 2.0.0 Bye\r\n")
                        return
                    else:
                        conn.sendall(b"250 2.0.0 Ok\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    send(srv.getsockname()[1])
    t.join(10)
    srv.close()
    return bytes(got)


def message(rcpts, body="Hello.\n.leading dot\nEnd.\n", sender="app@example.com"):
    m = EmailMessage()
    m["From"] = f"App <{sender}>"
    m["To"] = ", ".join(rcpts)
    m["Subject"] = "fuzz seed"
    m["Message-ID"] = "<seed@example.com>"
    m.set_content(body)
    return m


def smtplib_send(port, msgs, utf8=False):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as s:
        for m in msgs:
            s.send_message(m, mail_options=["SMTPUTF8"] if utf8 else [])


def curl_send(port):
    with tempfile.NamedTemporaryFile("wb", suffix=".eml") as f:
        f.write(message(["you@example.net"]).as_bytes().replace(b"\n", b"\r\n"))
        f.flush()
        subprocess.run(["curl", "-sS", f"smtp://127.0.0.1:{port}", "--mail-from", "app@example.com",
                        "--mail-rcpt", "you@example.net", "--mail-rcpt", "them@example.org",
                        "--upload-file", f.name], check=True)


HOSTILE = {
    # SMTP smuggling: a bare-LF end of data (RFC 5321 2.3.8), then a second transaction.
    "smuggling": b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
                 b"From: a@example.com\r\n\r\nhi\n.\nMAIL FROM:<evil@example.org>\r\n.\r\nQUIT\r\n",
    "spoofed_from": b"HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
                    b"From: ceo@bank.example\r\n\r\npay\r\n.\r\n",
    "foreign_sender": b"EHLO x\r\nMAIL FROM:<a@elsewhere.example> SIZE=10 BODY=8BITMIME\r\n"
                      b"RCPT TO:<b@example.net> NOTIFY=NEVER\r\nDATA\r\nRSET\r\nNOOP\r\nVRFY a\r\n",
    "unsupported": b"EHLO x\r\nSTARTTLS\r\nAUTH PLAIN AGFAYg==\r\nBDAT 10 LAST\r\nEXPN a\r\nHELP\r\n"
                   + b"X" * 600 + b"\r\nQUIT\r\n",
    "too_big": b"EHLO x\r\nMAIL FROM:<a@example.com> SIZE=999999\r\nMAIL FROM:<a@example.com>\r\n"
               b"RCPT TO:<1@x.example>\r\nRCPT TO:<2@x.example>\r\nRCPT TO:<3@x.example>\r\n"
               b"RCPT TO:<4@x.example>\r\nDATA\r\nFrom: a@example.com\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\n",
    "utf8": "EHLO x\r\nMAIL FROM:<ü@example.com> SMTPUTF8\r\nRCPT TO:<é@example.net>\r\nDATA\r\n"
            "From: ü@example.com\r\nSubject: é\r\n\r\nü\r\n.\r\n".encode(),
    # RFC 5321 4.1.2 paths: quoted local parts (space, "@", escapes), an address literal, a
    # source route, <Postmaster>; then broken ones.
    "paths": b'EHLO x\r\nMAIL FROM:<"app team"@example.com>\r\nRCPT TO:<"a b"@example.net>\r\n'
             b'RCPT TO:<"a@b\\"c"@example.net>\r\nRCPT TO:<u@[192.0.2.1]>\r\nRCPT TO:<@r.example:v@example.org>\r\n'
             b'RCPT TO:<PostMaster>\r\nRCPT TO:<"open@example.net>\r\nRCPT TO:<a@[IPv6:::1]> X=1\r\n'
             b'DATA\r\nFrom: "app team"@example.com\r\n\r\nhi\r\n.\r\nQUIT\r\n',
    # RFC 3461 DSN parameters: valid ones, then bad xtext, NEVER with SUCCESS, a bare ORCPT, twice.
    "dsn": b"EHLO x\r\nMAIL FROM:<a@example.com> RET=FULL ENVID=QQ+2B1\r\n"
           b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40x\r\nRCPT TO:<postmaster> NOTIFY=NEVER\r\n"
           b"RCPT TO:<c@example.net> ORCPT=rfc822\r\nRCPT TO:<c@example.net> NOTIFY=NEVER,SUCCESS\r\n"
           b"RCPT TO:<c@example.net> NOTIFY=DELAY NOTIFY=DELAY\r\nMAIL FROM:<a@example.com> ENVID=+0d\r\n"
           b"DATA\r\nFrom: a@example.com\r\n\r\nhi\r\n.\r\nQUIT\r\n",
}


def smtp_seeds(out):
    out.mkdir(parents=True, exist_ok=True)
    seeds = {
        "smtplib": record_client(lambda p: smtplib_send(p, [message(["you@example.net"])])),
        "smtplib_two_messages": record_client(lambda p: smtplib_send(
            p, [message(["a@example.net", "b@example.org"]), message(["c@example.net"], body="x" * 300)])),
        "smtplib_smtputf8": record_client(lambda p: smtplib_send(
            p, [message(["ü@example.net"], body="grüße\n")], utf8=True)),
        "curl": record_client(curl_send),
        **HOSTILE,
    }
    for name, data in seeds.items():
        # Variant 0x00: whole input at once; 0x34: 4-byte reads with bare line endings normalized.
        (out / name).write_bytes(b"\x00" + data)
        (out / f"{name}.split").write_bytes(b"\x34" + data)


def spool_seeds(sidecar, out):
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", work / "key.pem"], check=True)
        # Port 0 for both: the sidecar logs the ports it got (see `listening`).
        (work / "sidecar.yaml").write_text(f"""apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
hostname: relay.test
listen: {{address: "127.0.0.1:0"}}
admin: {{address: "127.0.0.1:0"}}
domains:
  - domain: example.com
    dkim: {{selector: s1, algorithm: ed25519-sha256, keyFile: {work / "key.pem"}}}
spool: {{dir: {work / "spool"}}}
delivery: {{capture: {{dir: {work / "capture"}}}}}
""")
        log = work / "sidecar.log"
        with open(log, "wb") as stderr:
            env = dict(os.environ, SIDECAR_LOG_FORMAT="plain", RUST_LOG="info")
            proc = subprocess.Popen([sidecar, "--config", work / "sidecar.yaml"], stderr=stderr, env=env)
        try:
            smtp, admin = listening(log, proc)
            wait_ready(admin)
            with smtplib.SMTP("127.0.0.1", smtp) as s:
                s.send_message(message(["a@example.net", "b@example.org"]))
                s.send_message(message(["c@example.net"], body="line\n" * 2000))
            deadline = time.time() + 10
            while len(list((work / "capture").glob("*.eml"))) < 2 and time.time() < deadline:
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        for seg in sorted((work / "spool").glob("*.seg")):
            if seg.stat().st_size:
                (out / f"sidecar-{seg.stem}").write_bytes(b"\x00" + seg.read_bytes())
    # Structured mode (odd first byte): op, id, args... (see the fuzzing module).
    (out / "ops-commit").write_bytes(bytes([1, 0, 1, 5]) + b"hello" + bytes([1, 1, 0x10]))
    (out / "ops-two-segments").write_bytes(
        bytes([1, 0, 2, 3]) + b"abc" + bytes([5, 0, 0, 2, 2]) + b"de" + bytes([1, 2, 0, 4, 2, 4]) + b"sig:"
        + bytes([3, 2, 2, 0, 1, 2, 1])
    )


def listening(log, proc):
    """The SMTP and admin ports from the sidecar's `listening smtp=127.0.0.1:… admin=127.0.0.1:…`."""
    for _ in range(200):
        m = re.search(r" listening smtp=\S+:(\d+) admin=\S+:(\d+)", log.read_text(errors="replace"))
        if m:
            return int(m.group(1)), int(m.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit("sidecar did not start:\n" + log.read_text(errors="replace"))


def wait_ready(admin):
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("sidecar did not become ready")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for name in ("smtp_session", "spool_replay"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    smtp_seeds(HERE / "smtp_session")
    spool_seeds(os.path.abspath(sys.argv[1]), HERE / "spool_replay")


if __name__ == "__main__":
    main()
