#!/usr/bin/env python3
"""`make soak`: the sidecar under faults, long enough to measure rates (docs/reliability.md).

Real parts only, loopback only: the mailroom-sidecar binary, tests/peers/upstream.py
(aiosmtpd) as the smarthost, tests/peers/load_client.py (smtplib) as the apps. Each client
keeps its own record of the `250` replies it got; that record is the truth the upstream's maildir
is checked against.

Runs, in order:
  crash    N clients send flat out; the sidecar is SIGKILLed at random moments and restarted
           (--kills times). Every acknowledged message must reach the upstream; duplicates counted.
  outage   the smarthost is down for --outage-seconds while paced clients keep sending, then
           comes back: nothing lost, queue depth stays under the spool limit, time to drain.
  421      the smarthost answers every connection with 421 for --short-seconds, then recovers.
  hang     the smarthost takes DATA and never answers for --short-seconds, then recovers.
  hostile  1,000 idle connections, 1 byte/s senders, over-long lines and bad-command floods for
           --short-seconds: latency of a well-behaved client before and during, memory.
Prints the results as JSON; a full run (no --only) also writes bench/results/soak.json and the
results section of docs/reliability.md. Exit status 1 if any acknowledged message was lost.

Usage: python3 bench/soak.py [--kills 20] [--outage-seconds 180] [--short-seconds 60] [--clients 4]
       [--sidecar target/release/mailroom-sidecar] [--python $MAILROOM_PYTHON]
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "tests", "peers")
DOC = os.path.join(ROOT, "docs", "reliability.md")
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
SPOOL_MAX_MESSAGES = 20000


def log(msg):
    print("soak: %s" % msg, file=sys.stderr, flush=True)


def reserve_port():
    """A loopback port held for the run: a socket bound with SO_REUSEPORT that never listens, so
    connections are refused while no upstream runs and no other process can take the port;
    upstream.py --reuse-port binds it again after every stop."""
    import socket

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    return s


class Upstream:
    """upstream.py on a port held for the run; start() and stop() model the smarthost going away."""

    def __init__(self, python, work):
        self.reservation = reserve_port()
        self.python, self.port = python, self.reservation.getsockname()[1]
        self.maildir = os.path.join(work, "maildir")
        self.proc = None
        self.n = 0

    def start(self, *extra):
        # Each start writes into its own maildir, so transaction numbers never collide.
        self.n += 1
        maildir = "%s-%d" % (self.maildir, self.n)
        args = [self.python, os.path.join(PEERS, "upstream.py"), "--port", str(self.port), "--reuse-port"]
        self.proc = subprocess.Popen(
            args + ["--tls", "none", "--maildir", maildir] + list(extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit("upstream.py did not start (is aiosmtpd in %s?)" % self.python)

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def subjects(self):
        """(Subject, sidecar spool id) of every message received, over every start."""
        out = []
        for d in sorted(os.listdir(os.path.dirname(self.maildir))):
            if not d.startswith(os.path.basename(self.maildir) + "-"):
                continue
            path = os.path.join(os.path.dirname(self.maildir), d)
            for name in os.listdir(path):
                if name.endswith(".eml"):
                    with open(os.path.join(path, name), "rb") as f:
                        head = f.read(4096)
                    m = re.search(rb"^Subject: (\S+)", head, re.M)
                    i = re.search(rb"with ESMTP id (\w+)", head)
                    if m:
                        out.append((m.group(1).decode(), i.group(1).decode() if i else ""))
        return out


class Sidecar:
    def __init__(self, binary, work, upstream_port, command_timeout):
        self.binary, self.work = binary, work
        # The first start binds port 0 and logs the ports it got; restarts bind them again.
        self.smtp, self.admin = 0, 0
        self.config = os.path.join(work, "sidecar.yaml")
        with open(self.config, "w") as f:
            f.write(
                "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\nhostname: soak.test\n"
                "domains:\n  - domain: example.com\n"
                "limits:\n  maxConnections: 1500\n  idleTimeoutSeconds: 600\n"
                "spool:\n  dir: %s/spool\n  maxMessages: %d\n"
                "delivery:\n  smarthost:\n    host: 127.0.0.1\n    port: %d\n    tls: none\n"
                "    connectTimeoutSeconds: 5\n    commandTimeoutSeconds: %d\n"
                "retry:\n  initialSeconds: 1\n  multiplier: 1.5\n  maxSeconds: 5\n"
                % (work, SPOOL_MAX_MESSAGES, upstream_port, command_timeout)
            )
        self.proc = None
        self.log_path = os.path.join(work, "sidecar.log")
        self.log = open(self.log_path, "ab")

    def start(self):
        # Warnings, and the `listening smtp=… admin=…` line with the ports.
        env = dict(os.environ, SIDECAR_LISTEN_ADDR="127.0.0.1:%d" % self.smtp,
                   SIDECAR_ADMIN_ADDR="127.0.0.1:%d" % self.admin, SIDECAR_LOG_FORMAT="plain",
                   SIDECAR_QUEUE_API_ADDR="127.0.0.1:0",
                   RUST_LOG="warn,mailroom_sidecar=info")
        self.log.flush()
        offset = os.path.getsize(self.log_path)
        self.proc = subprocess.Popen([self.binary, "--config", self.config], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 30
        while not self.admin and time.time() < deadline and self.proc.poll() is None:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                m = re.search(rb" listening smtp=\S+:(\d+) admin=\S+:(\d+)", f.read())
            if m:
                self.smtp, self.admin = int(m.group(1)), int(m.group(2))
            else:
                time.sleep(0.02)
        while time.time() < deadline:
            if self.metrics() is not None:
                return
            time.sleep(0.02)
        raise SystemExit("sidecar did not become ready; see %s/sidecar.log" % self.work)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def metrics(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % self.admin, timeout=2) as r:
                if r.status != 200:
                    return None
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.admin, timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None

    def metric(self, name):
        text = self.metrics() or ""
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith(name) and l[len(name)] in " {")

    def queue(self):
        return int(self.metric("mailroom_sidecar_queue_messages"))

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            return int(next(l for l in f if l.startswith("VmRSS:")).split()[1])


def clients(sidecar, work, n, pause, tag):
    acked = os.path.join(work, "acked-%s" % tag)
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(PEERS, "load_client.py"), "127.0.0.1", str(sidecar.smtp),
             "app@example.com", "user@example.net", acked, "10000000", "%s%d" % (tag, w),
             str(pause), "100000"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for w in range(n)
    ]
    return acked, procs


def stop_clients(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def settle(sidecar, upstream, acked_path, deadline_s):
    """Waits until the queue is empty and every acknowledged subject arrived; returns counts."""
    with open(acked_path) as f:
        acked = [l.strip() for l in f if l.strip()]
    want = set(acked)
    start = time.time()
    while True:
        got = upstream.subjects()
        seen = {subject for subject, _ in got}
        missing = want - seen
        if (not missing and sidecar.queue() == 0) or time.time() - start > deadline_s:
            break
        time.sleep(1)
    mine = [g for g in got if g[0] in want]
    copies = len(mine) - len({subject for subject, _ in mine})
    # The same spool id twice: delivered again after a crash before its Done record was written.
    # Two spool ids: the client sent it again (the crash came between our fsync and its reading
    # of the 250). Both are duplicates RFC 5321 6.1 accepts; they have different fixes.
    redelivered = len(mine) - len(set(mine))
    return {
        "acknowledged": len(acked),
        "lost": len(missing),
        "duplicates": copies,
        "redelivered": redelivered,
        "resent_by_client": copies - redelivered,
        "lost_examples": sorted(missing)[:5],
    }


def crash(args, work):
    up = Upstream(args.python, work)
    up.start()
    sc = Sidecar(args.sidecar, work, up.port, 10)
    sc.start()
    acked, procs = clients(sc, work, args.clients, 0, "c")
    rng = random.Random(args.seed)
    time.sleep(2)
    for i in range(args.kills):
        time.sleep(rng.uniform(0.3, 3.0))
        sc.kill9()
        sc.start()
        log("crash: kill -9 %d/%d" % (i + 1, args.kills))
    time.sleep(2)
    stop_clients(procs)
    r = settle(sc, up, acked, 300)
    r["kills"] = args.kills
    r["duplicate_percent"] = round(100.0 * r["duplicates"] / max(r["acknowledged"], 1), 3)
    sc.stop()
    up.stop()
    return r


def outage(args, work, name, seconds, *upstream_args):
    """Upstream healthy, then faulty (down, 421 or hanging) for `seconds`, then healthy again."""
    up = Upstream(args.python, work)
    up.start()
    sc = Sidecar(args.sidecar, work, up.port, 10)
    sc.start()
    # Paced: about 20 messages/s per client, a rate a real app might keep up through an outage.
    acked, procs = clients(sc, work, 2, 0.05, name[0])
    time.sleep(5)
    up.stop()
    if upstream_args:
        up.start(*upstream_args)
    log("%s: upstream faulty for %d s" % (name, seconds))
    max_queue, max_rss, end = 0, 0, time.time() + seconds
    while time.time() < end:
        max_queue = max(max_queue, sc.queue())
        max_rss = max(max_rss, sc.rss_kib())
        time.sleep(1)
    stop_clients(procs)
    max_queue = max(max_queue, sc.queue())
    up.stop()
    up.start()
    back = time.time()
    log("%s: upstream back, %d queued" % (name, sc.queue()))
    r = settle(sc, up, acked, 900)
    r["drain_seconds"] = round(time.time() - back, 1)
    r["fault_seconds"] = seconds
    r["max_queue"] = max_queue
    r["max_rss_mib"] = round(max_rss / 1024, 1)
    r["parked_probes"] = int(sc.metric("mailroom_sidecar_route_probes_total"))
    sc.stop()
    up.stop()
    return r


def probe_latencies(sidecar, acked_path, seconds, tag):
    """A well-behaved client on one connection: a message every 0.1 s; latency of each."""
    import smtplib

    out, n, end = [], 0, time.time() + seconds
    with smtplib.SMTP("127.0.0.1", sidecar.smtp, timeout=30) as s, open(acked_path, "a") as acked:
        while time.time() < end:
            subject = "probe-%s-%d" % (tag, n)
            body = "From: app@example.com\r\nSubject: %s\r\n\r\nprobe\r\n" % subject
            t0 = time.perf_counter()
            s.sendmail("app@example.com", ["user@example.net"], body.encode())
            out.append(time.perf_counter() - t0)
            acked.write(subject + "\n")
            n += 1
            time.sleep(0.1)
    return out


def hostile(args, work):
    """1,000 idle connections, 1 byte/s senders, over-long lines and bad-command floods, while a
    well-behaved client sends: its latency before and during, and the sidecar's memory."""
    import resource
    import socket
    import threading

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    up = Upstream(args.python, work)
    up.start()
    sc = Sidecar(args.sidecar, work, up.port, 10)
    sc.start()
    acked = os.path.join(work, "acked-probe")
    calm = probe_latencies(sc, acked, 10, "calm")
    rss_before = sc.rss_kib()
    idle = [socket.create_connection(("127.0.0.1", sc.smtp)) for _ in range(1000)]
    stop = threading.Event()
    counts = {"long_500": 0, "flood_421": 0}

    def slow():
        with socket.create_connection(("127.0.0.1", sc.smtp)) as c:
            while not stop.is_set():
                for b in b"NOOP\r\n":
                    c.sendall(bytes([b]))
                    time.sleep(1)

    def abuse():
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", sc.smtp)) as c:
                f = c.makefile("rb")
                f.readline()
                c.sendall(b"EHLO " + b"a" * 10000 + b"\r\n")
                counts["long_500"] += f.readline().startswith(b"500 5.5.2")
                c.sendall(b"XYZZY\r\n" * 12)
                lines = [f.readline() for _ in range(12)]
                counts["flood_421"] += any(l.startswith(b"421 4.7.0") for l in lines)

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(10)]
    threads += [threading.Thread(target=abuse, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(2)
    log("hostile: 1000 idle connections, 10 slow senders, 2 abusive clients")
    attacked = probe_latencies(sc, acked, args.short_seconds, "attacked")
    active = int(sc.metric("mailroom_sidecar_sessions_active"))
    rss_during = sc.rss_kib()
    stop.set()
    for c in idle:
        c.close()
    r = settle(sc, up, acked, 120)

    def pct(xs, q):
        xs = sorted(xs)
        return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1)

    r.update({
        "calm_p50_ms": pct(calm, 0.5), "calm_p99_ms": pct(calm, 0.99),
        "attacked_p50_ms": pct(attacked, 0.5), "attacked_p99_ms": pct(attacked, 0.99),
        "sessions_active": active, "rss_before_mib": round(rss_before / 1024, 1),
        "rss_during_mib": round(rss_during / 1024, 1), **counts,
    })
    sc.stop()
    up.stop()
    return r


def args_short(results):
    return results.get("short_seconds", 60)


def markdown(results, argv):
    c = results["crash"]
    lines = [
        BEGIN,
        "",
        "Measured by `make soak` (`python3 bench/soak.py%s`) on %s; %s, release build." % (
            "".join(" " + a for a in argv), time.strftime("%Y-%m-%d"), results["machine"]),
        "",
        "| run | acknowledged | lost | duplicates | notes |",
        "|---|---|---|---|---|",
        "| crash: %d × kill -9 under %d clients | %d | %d | %d (%.3f %%) | %d delivered again "
        "after a crash, %d sent again by a client |" % (
            c["kills"], results["clients"], c["acknowledged"], c["lost"], c["duplicates"],
            c["duplicate_percent"], c["redelivered"], c["resent_by_client"]),
    ]
    for name, label in [("outage", "smarthost down"), ("421", "smarthost answers 421"),
                        ("hang", "smarthost hangs after DATA")]:
        r = results[name]
        lines.append(
            "| %s for %d s | %d | %d | %d | max queue %d (limit %d), peak RSS %.1f MiB, %d probe(s), "
            "drained %.1f s after the smarthost returned |" % (
                label, r["fault_seconds"], r["acknowledged"], r["lost"], r["duplicates"],
                r["max_queue"], SPOOL_MAX_MESSAGES, r["max_rss_mib"], r["parked_probes"],
                r["drain_seconds"]))
    h = results.get("hostile")
    if h:
        lines.append(
            "| hostile clients for %d s: 1,000 idle connections, 10 senders at 1 byte/s, over-long "
            "lines and bad-command floods (%d × `500 5.5.2`, %d × `421 4.7.0`) | %d | %d | %d | "
            "well-behaved client p50/p99 %.1f/%.1f ms (%.1f/%.1f ms before), %d sessions open, "
            "RSS %.1f MiB (%.1f MiB before) |" % (
                args_short(results), h["long_500"], h["flood_421"], h["acknowledged"], h["lost"],
                h["duplicates"], h["attacked_p50_ms"], h["attacked_p99_ms"], h["calm_p50_ms"],
                h["calm_p99_ms"], h["sessions_active"], h["rss_during_mib"], h["rss_before_mib"]))
    lines += ["", END]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--outage-seconds", type=int, default=180)
    p.add_argument("--short-seconds", type=int, default=60)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--sidecar", default=os.path.join(ROOT, "target", "release", "mailroom-sidecar"))
    p.add_argument("--python", default=os.environ.get("MAILROOM_PYTHON") or os.environ.get(
        "MAILROOM_TESTENV_PYTHON"), help="interpreter with aiosmtpd (make testenv prepares it)")
    p.add_argument("--only", choices=["crash", "outage", "421", "hang", "hostile"], action="append")
    args = p.parse_args()
    if not args.python:
        raise SystemExit("set MAILROOM_PYTHON to the test env's python (make testenv; see Makefile)")
    if not os.access(args.sidecar, os.X_OK):
        raise SystemExit("%s missing: cargo build --release --bin mailroom-sidecar" % args.sidecar)
    work = tempfile.mkdtemp(prefix="mailroom-soak-")
    results = {"clients": args.clients, "seed": args.seed, "short_seconds": args.short_seconds,
               "machine": "%d cores, %s" % (os.cpu_count(), os.uname().release)}
    runs = {
        "crash": lambda d: crash(args, d),
        "outage": lambda d: outage(args, d, "outage", args.outage_seconds),
        "421": lambda d: outage(args, d, "421", args.short_seconds, "--greeting-421"),
        "hang": lambda d: outage(args, d, "hang", args.short_seconds, "--hang-data", "1000000"),
        "hostile": lambda d: hostile(args, d),
    }
    for name, run in runs.items():
        if args.only and name not in args.only:
            continue
        d = os.path.join(work, name)
        os.makedirs(d)
        log("%s: starting" % name)
        results[name] = run(d)
        log("%s: %s" % (name, json.dumps(results[name])))
    print(json.dumps(results, indent=2))
    if not args.only:
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "results", "soak.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(DOC) as f:
            doc = f.read()
        section = markdown(results, sys.argv[1:])
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, doc, flags=re.S)
        with open(DOC, "w") as f:
            f.write(doc)
    lost = sum(r["lost"] for r in results.values() if isinstance(r, dict))
    shutil.rmtree(work, ignore_errors=True)
    if lost:
        raise SystemExit("soak: %d acknowledged messages lost" % lost)


if __name__ == "__main__":
    main()
