#!/usr/bin/env python3
"""What a queued message costs in memory (`make bench`, docs/benchmarks.md "Memory per queued
message").

The release sidecar relays to an upstream that takes connections and never answers, so every
message it accepts stays queued. smtp-source sends MESSAGES 2 KiB messages over 10 reused
sessions; the sidecar's PSS before, at its peak and once the burst is in, divided by the
messages queued, is what a backlog costs per message (a slow or down upstream, or sessions that
accept faster than delivery sends on). Writes bench/results/backlog.json.
Usage: backlog.py [--messages N] [--sidecar PATH]"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from run import pss_kib, relay_config, relay_env, scrape, wait_port  # noqa: E402

TARPIT_PORT = 26025
LISTEN_PORT = 26026
ADMIN_PORT = 26027


def tarpit():
    """An upstream that accepts every connection and never says anything."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", TARPIT_PORT))
    s.listen(1024)
    held = []

    def accept():
        while True:
            conn, _ = s.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return s


def queued(admin):
    """The sidecar's own count of queued messages (`queue_messages`, all states)."""
    total = 0
    for line in scrape(admin).splitlines():
        if line.startswith("mailroom_sidecar_queue_messages{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sidecar", default=os.path.join(ROOT, "target", "release", "mailroom-sidecar"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "backlog.json"))
    args = ap.parse_args()
    if not shutil.which("smtp-source"):
        raise SystemExit("backlog.py: smtp-source missing: run make bench once (installs Postfix)")
    pit = tarpit()
    base = tempfile.mkdtemp(prefix="mailroom-backlog-")
    config = os.path.join(base, "sidecar.yaml")
    open(config, "w").write(relay_config(LISTEN_PORT, ADMIN_PORT, "  - domain: example.com\n", base, TARPIT_PORT))
    proc = subprocess.Popen([args.sidecar, "--config", config], stderr=open(os.path.join(base, "log"), "w"),
                            env=relay_env("backlog-0"))
    try:
        wait_port(LISTEN_PORT)
        wait_port(ADMIN_PORT)
        time.sleep(1)
        before = pss_kib(proc.pid)
        peak = [before]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.1):
                peak[0] = max(peak[0], pss_kib(proc.pid))

        threading.Thread(target=sample, daemon=True).start()
        subprocess.run(["smtp-source", "-s", "10", "-m", str(args.messages), "-l", "2048", "-d",
                        "-f", "bench@example.com", "-t", "user@example.net",
                        "127.0.0.1:%d" % LISTEN_PORT], check=True, stdout=subprocess.DEVNULL)
        deadline = time.time() + 60
        while queued(ADMIN_PORT) < args.messages:
            if time.time() > deadline:
                raise SystemExit("backlog.py: only %d of %d messages queued after 60 s" % (
                    queued(ADMIN_PORT), args.messages))
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        after = pss_kib(proc.pid)
        anon = pss_kib(proc.pid, "Anonymous:")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pit.close()
        shutil.rmtree(base, ignore_errors=True)
    n = args.messages
    result = {
        "messages": n,
        "pss_before_kib": before,
        "pss_peak_kib": peak[0],
        "pss_queued_kib": after,
        "anon_queued_kib": anon,
        "bytes_per_message": (after - before) * 1024 / n,
        "peak_bytes_per_message": (peak[0] - before) * 1024 / n,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    json.dump(result, open(args.out, "w"), indent=1)
    print("backlog: %d messages queued: PSS %.1f -> %.1f MiB (peak %.1f): %.0f bytes per message" % (
        n, before / 1024, after / 1024, peak[0] / 1024, result["bytes_per_message"]))


if __name__ == "__main__":
    main()
