#!/usr/bin/env python3
"""mailroom-sidecar vs Postfix vs the no-relay ceiling, side by side on this machine.

Every scenario runs each system in turn (order alternating between repetitions) against the same
load from Postfix's own `smtp-source`, relaying to the same `smtp-sink`:
  ceiling   smtp-source -> smtp-sink (no relay: the machine's limit)
  postfix   smtp-source -> Postfix null client (fsync on, as shipped) -> smtp-sink
  mailroom  smtp-source -> mailroom-sidecar (spool on the same filesystem) -> smtp-sink
  mailroom-hub         the same, with a hub configured (durability: handoff; the hub is idle)
  mailroom-replicated  the same, each message also copied to the hub before 250
                       (durability: replicated; docs/hub.md)
Measured: accepted msg/s (until smtp-source has its last 250), end-to-end msg/s (until the sink
has every message), accept latency p50/p99 from a probe client sending alongside the load, CPU
seconds of the relay's processes, and PSS of all its processes idle and at peak.
Writes bench/results/latest.json; bench/report.py turns it into docs/benchmarks.md and plots.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import cpu_profile as relay_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDECAR = os.path.join(ROOT, "target", "release", "mailroom-sidecar")
SINK_PORT, POSTFIX_PORT, MAILROOM_PORT, ADMIN_PORT = 30025, 30026, 30027, 30028
HUB_PORT, HUB_ADMIN_PORT = 30029, 30030
WORK = os.environ.get("BENCH_WORK", "/var/tmp/mailroom-bench")
CLK = os.sysconf("SC_CLK_TCK")


# === processes and measurements ===

def pss_kib(pid, field="Pss:"):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid, children=False):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK


def machine_ticks():
    """(busy, steal) clock ticks of all CPUs since boot, from /proc/stat."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def descendants(root):
    """root and every process below it."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return out


class Relay:
    """A relay under test: its root pid, how to stop it, and its measurements."""

    def __init__(self, name, port, root_pid, stop, extra_pids=()):
        self.name, self.port, self.root_pid, self.stop = name, port, root_pid, stop
        self.extra_pids = list(extra_pids)

    def pids(self):
        return (descendants(self.root_pid) if self.root_pid else []) + self.extra_pids

    def pss(self, field="Pss:"):
        return sum(pss_kib(p, field) for p in self.pids())

    def cpu(self):
        # Live processes plus the root's reaped children (Postfix daemons come and go).
        return sum(cpu_seconds(p, children=(p == self.root_pid)) for p in self.pids())


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nothing listens on port %d" % port)


def start_sink():
    # smtp-sink's running counter (-c) is written for a terminal; through a pipe it would sit in
    # its output buffer, so it gets a pty.
    master, slave = os.openpty()
    proc = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "-c", "127.0.0.1:%d" % SINK_PORT, "1024"],
        stdout=slave, stderr=slave,
    )
    os.close(slave)
    state = {"mesg": 0}

    def read():
        buf = b""
        while True:
            try:
                b = os.read(master, 256)
            except OSError:
                return
            if not b:
                return
            buf = (buf + b)[-512:]
            m = re.findall(rb"mesg=(\d+)", buf)
            if m:
                state["mesg"] = int(m[-1])

    threading.Thread(target=read, daemon=True).start()
    wait_port(SINK_PORT)
    return proc, state


def start_flaky_sink():
    """bench/flaky_sink.py: defers 10 % of recipients and answers DATA slowly."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "bench", "flaky_sink.py"), "--port", str(SINK_PORT)],
        stdout=subprocess.PIPE,
    )
    state = {"mesg": 0, "probes": []}
    if proc.stdout.readline().strip() != b"ready":
        raise SystemExit("flaky_sink.py did not start")

    def read():
        for line in proc.stdout:
            kind, value = line.split()
            if kind == b"n":
                state["mesg"] = int(value)
            else:
                state["probes"].append((time.time(), float(value)))

    threading.Thread(target=read, daemon=True).start()
    wait_port(SINK_PORT)
    return proc, state


# Both relays retry on the same schedule against the flaky sink: first after 5 s, at most 40 s.
RETRY_FIRST_S, RETRY_MAX_S = 5, 40


def start_postfix(flaky=False):
    conf, queue, data = (os.path.join(WORK, "postfix", d) for d in ("conf", "queue", "data"))
    shutil.rmtree(os.path.join(WORK, "postfix"), ignore_errors=True)
    for d in (conf, queue, data):
        os.makedirs(d)
    shutil.copy("/etc/postfix/master.cf", conf)
    master = open(os.path.join(conf, "master.cf")).read()
    master = re.sub(r"^smtp\s+inet.*smtpd$", "127.0.0.1:%d inet n - n - - smtpd" % POSTFIX_PORT, master, flags=re.M)
    open(os.path.join(conf, "master.cf"), "w").write(master)
    open(os.path.join(conf, "main.cf"), "w").write(
        "\n".join([
            "compatibility_level = 3.6",
            "queue_directory = " + queue,
            "data_directory = " + data,
            "myhostname = bench.local",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "relayhost = [127.0.0.1]:%d" % SINK_PORT,
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "maillog_file = " + os.path.join(WORK, "postfix", "maillog"),
            "maillog_file_prefixes = " + WORK,
            *([
                "queue_run_delay = %ds" % RETRY_FIRST_S,
                "minimal_backoff_time = %ds" % RETRY_FIRST_S,
                "maximal_backoff_time = %ds" % RETRY_MAX_S,
            ] if flaky else []),
            "",
        ])
    )
    subprocess.run(["chown", "postfix", data], check=True)
    subprocess.run(["postfix", "-c", conf, "set-permissions"], check=True, capture_output=True)
    subprocess.run(["postfix", "-c", conf, "start"], check=True, capture_output=True)
    wait_port(POSTFIX_PORT)
    pid = int(open(os.path.join(data, "master.lock")).read().split()[0])
    return Relay("postfix", POSTFIX_PORT, pid, lambda: subprocess.run(["postfix", "-c", conf, "stop"], capture_output=True))


def hub_material(base):
    """A CA, the hub's certificate for localhost, and the Relay's credential, as files."""
    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=base)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench-ca")
    ssl("req", *ec, "-keyout", "hub.key", "-out", "hub.csr", "-subj", "/CN=localhost")
    open(os.path.join(base, "ext"), "w").write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    ssl("x509", "-req", "-in", "hub.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "hub.crt", "-days", "2", "-extfile", "ext")
    open(os.path.join(base, "user"), "w").write("bench")
    open(os.path.join(base, "password"), "w").write("bench-password")


def start_hub(base, cpus=None):
    """The Relay's hub: TLS and AUTH on HUB_PORT, holding shadow copies (owner checks fail
    without an apiserver here, which only means no copy is ever promoted). With `cpus`, the hub
    and every thread it starts run on those CPUs only."""
    hub_material(base)
    config = os.path.join(base, "hub.yaml")
    open(config, "w").write(
        "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\nhostname: hub.bench.local\n"
        "listen:\n  address: 127.0.0.1:%d\n  tls:\n    certFile: %s/hub.crt\n    keyFile: %s/hub.key\n"
        "  auth:\n    usernameFile: %s/user\n    passwordFile: %s/password\n"
        "admin:\n  address: 127.0.0.1:%d\nlimits:\n  maxConnections: 1024\n"
        "domains:\n  - domain: example.com\nspool:\n  dir: %s/hub-spool\n"
        "delivery:\n  smarthost:\n    host: 127.0.0.1\n    port: %d\n    tls: none\n"
        "shadows:\n  namespace: bench\n  podSelector: app=bench\n  checkSeconds: 3600\n"
        % (HUB_PORT, base, base, base, base, HUB_ADMIN_PORT, base, SINK_PORT)
    )
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen([SIDECAR, "--config", config], stderr=open(os.path.join(base, "hub.log"), "w"),
                            preexec_fn=pin,
                            env=dict(os.environ, RUST_LOG="warn", KUBECONFIG="/nonexistent"))
    wait_port(HUB_PORT)
    return proc


def relay_config(listen, admin, domains, base, upstream):
    """A standalone sidecar's config: `domains` (YAML list items), its spool in `base`, relaying to
    `upstream` on loopback with Postfix's default destination concurrency."""
    return (
        "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\nhostname: bench.local\n"
        "listen:\n  address: 127.0.0.1:%d\nadmin:\n  address: 127.0.0.1:%d\n"
        "limits:\n  maxConnections: 1024\ndomains:\n%s"
        "spool:\n  dir: %s/spool\n"
        "delivery:\n  smarthost:\n    host: 127.0.0.1\n    port: %d\n    tls: none\n    maxConnections: 20\n"
        % (listen, admin, domains, base, upstream))


def relay_env(pod):
    """The sidecar's environment: a pod name and uid for the hand-off keys, and a free loopback
    port for its queue API (a hub may run beside it)."""
    return dict(os.environ, RUST_LOG="warn", SIDECAR_POD_NAME=pod, SIDECAR_QUEUE_API_ADDR="127.0.0.1:0",
                SIDECAR_POD_UID="00000000-0000-4000-8000-000000000000")


def start_mailroom(dkim, flaky=False, hub=None, hub_cpus=None):
    base = os.path.join(WORK, "mailroom")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    hub_proc = start_hub(base, hub_cpus) if hub else None
    domain = "  - domain: example.com\n"
    if dkim:
        key = os.path.join(base, "dkim.pem")
        algo = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if dkim == "rsa" else ["-algorithm", "ED25519"]
        subprocess.run(["openssl", "genpkey", *algo, "-out", key], check=True, capture_output=True)
        name = "rsa-sha256" if dkim == "rsa" else "ed25519-sha256"
        domain += "    dkim:\n      selector: bench\n      algorithm: %s\n      keyFile: %s\n" % (name, key)
    config = os.path.join(base, "sidecar.yaml")
    open(config, "w").write(
        relay_config(MAILROOM_PORT, ADMIN_PORT, domain, base, SINK_PORT)
        + ("retry:\n  initialSeconds: %d\n  maxSeconds: %d\n" % (RETRY_FIRST_S, RETRY_MAX_S) if flaky else "")
        + ("handoff:\n  host: localhost\n  port: %d\n  caFile: %s/ca.crt\n  usernameFile: %s/user\n"
           "  passwordFile: %s/password\n" % (HUB_PORT, base, base, base) if hub else "")
        + ("  shadows:\n    hosts: [localhost]\n" if hub == "replicated" else "")
    )
    proc = subprocess.Popen([SIDECAR, "--config", config], stderr=open(os.path.join(base, "log"), "w"),
                            env=relay_env("bench-0"))
    wait_port(MAILROOM_PORT)

    def stop():
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        if hub_proc:
            hub_proc.send_signal(signal.SIGTERM)
            hub_proc.wait()

    name = "mailroom" + ("-" + hub if hub else "")
    # With a hub, the relay is both processes: the hub's CPU and memory count too.
    return Relay(name, MAILROOM_PORT, proc.pid, stop, [hub_proc.pid] if hub_proc else [])


class Probe(threading.Thread):
    """One client session sending messages back to back; records DATA-end -> 250 latency."""

    def __init__(self, port, size):
        super().__init__(daemon=True)
        self.port, self.size, self.latencies, self.sent, self.stopped = port, size, [], 0, False

    def run(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        # Without it the lone ".\r\n" after the body waits for the delayed ACK (~40 ms).
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if line[3:4] != b"-":
                    return line

        reply()
        s.sendall(b"EHLO probe\r\n")
        reply()
        head = b"From: <bench@example.com>\r\nTo: <probe@example.net>\r\nSubject: probe\r\n"
        body = b"\r\n" + (b"z" * 70 + b"\r\n") * max(1, self.size // 72)
        while not self.stopped:
            s.sendall(b"MAIL FROM:<bench@example.com>\r\nRCPT TO:<probe@example.net>\r\nDATA\r\n")
            reply(), reply(), reply()
            # The flaky sink times fresh mail end to end from this stamp (same clock, same host).
            s.sendall(head + b"X-Probe-Sent: %.6f\r\n" % time.time() + body)
            t = time.perf_counter()
            s.sendall(b".\r\n")
            line = reply()
            if line.startswith(b"250"):
                self.latencies.append(time.perf_counter() - t)
                self.sent += 1
            time.sleep(0.01)
        s.sendall(b"QUIT\r\n")
        reply()
        s.close()


def histogram_quantile(q, buckets):
    """Prometheus's `histogram_quantile`: linear within the bucket that holds quantile `q`.
    `buckets` are (upper bound, cumulative count) in order, +Inf last."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def scrape(port):
    """A sidecar's /metrics text, from its admin port on loopback."""
    import urllib.request
    return urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()


def relay_histograms():
    """The sidecar's own timing of every accept in the run, load and probe alike: the share it
    timed at 2 ms or less from the end of DATA to its `250`, its p99 (estimated from the buckets),
    and the p50 and p99 of one spool fsync. The probe's p99 adds the wait for a CPU before the
    session reads the client's final dot and after it writes the reply."""
    try:
        text = scrape(ADMIN_PORT)
    except OSError:
        return {}
    hist = {}
    for line in text.splitlines():
        m = re.match(r'mailroom_sidecar_(accept_duration|spool_fsync_duration)_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            hist.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
    accept, fsync = hist.get("accept_duration", []), hist.get("spool_fsync_duration", [])
    within = next((c for b, c in accept if abs(b - 0.002) < 1e-9), None)
    ms = lambda v: None if v is None else v * 1000
    return {
        "relay_accepts_within_2ms": within / accept[-1][1] if within is not None and accept[-1][1] else None,
        "relay_accept_p99_ms": ms(histogram_quantile(0.99, accept)),
        "relay_fsync_p50_ms": ms(histogram_quantile(0.5, fsync)),
        "relay_fsync_p99_ms": ms(histogram_quantile(0.99, fsync)),
    }


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_one(system, sc):
    flaky = sc.get("flaky", False)
    # "The hub on another node": the hub gets CPU 1 to itself and everything else (load, probe,
    # sink, sidecar) shares CPU 0, in every system of the scenario, so that the comparison stays
    # fair. The disk is still shared: both spools fsync on it.
    # "The relay on its own CPU": the relay (every process and thread of it) gets CPU 1, the load,
    # the probe and the sink CPU 0; with no relay (ceiling) that is the probe's own floor.
    hub_cpus = relay_cpus = None
    if sc.get("hub_own_cpu") or sc.get("relay_own_cpu"):
        if len(os.sched_getaffinity(0)) < 2:
            raise SystemExit("%s needs 2 CPUs" % sc["name"])
        everything = os.sched_getaffinity(0)
        app_cpu, own_cpu = sorted(everything)[:2]
        if sc.get("hub_own_cpu"):
            hub_cpus = {own_cpu}
        else:
            relay_cpus = {own_cpu}
        os.sched_setaffinity(0, {app_cpu})
    try:
        return measure(system, sc, flaky, hub_cpus, relay_cpus)
    finally:
        if hub_cpus or relay_cpus:
            os.sched_setaffinity(0, everything)


def pin(pids, cpus):
    """Every thread of `pids` on `cpus`; what they start later inherits it."""
    for pid in pids:
        try:
            for task in os.listdir("/proc/%d/task" % pid):
                os.sched_setaffinity(int(task), cpus)
        except OSError:
            pass


def measure(system, sc, flaky, hub_cpus, relay_cpus=None):
    sink, state = start_flaky_sink() if flaky else start_sink()
    relay = None
    try:
        if system == "postfix":
            relay = start_postfix(flaky)
        elif system == "mailroom":
            relay = start_mailroom(sc.get("dkim"), flaky)
        elif system in ("mailroom-hub", "mailroom-replicated"):
            relay = start_mailroom(sc.get("dkim"), flaky, hub=system.split("-", 1)[1], hub_cpus=hub_cpus)
        if relay and relay_cpus:
            pin(relay.pids(), relay_cpus)
        port = relay.port if relay else SINK_PORT
        time.sleep(1)
        idle = relay.pss() if relay else None
        cpu0 = relay.cpu() if relay else None
        peak = [idle or 0]
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                peak[0] = max(peak[0], relay.pss())

        if relay:
            threading.Thread(target=sample, daemon=True).start()
        prof = None
        if sc.get("profile") and relay:
            missing = relay_profile.available()
            if missing:
                raise SystemExit("%s: %s" % (sc["name"], missing))
            prof = relay_profile.Profile(relay.pids())
        probe = Probe(port, sc["size"])
        probe.start()
        t0 = time.perf_counter()
        busy0, steal0 = machine_ticks()
        load0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sink0 = cpu_seconds(sink.pid)
        relay_cpu0 = relay.cpu() if relay else None
        # -d: one connection per session for all its messages; without it, one per message (as
        # PHP's mail(), cron jobs and many framework defaults do).
        reuse = ["-d"] if sc.get("reuse", True) else []
        if sc["sessions"]:
            src = subprocess.run(
                ["smtp-source", *reuse, "-s", str(sc["sessions"]), "-m", str(sc["count"]), "-l", str(sc["size"]),
                 "-f", "bench@example.com", "-t", "rcpt@example.net", "127.0.0.1:%d" % port],
                capture_output=True,
            )
            if src.returncode != 0:
                raise SystemExit("smtp-source failed against %s: %s" % (system, src.stderr.decode()))
        else:
            # No load: the probe alone, for the cost of the accept path itself.
            deadline = time.time() + 120
            while probe.sent < sc["probes"] and probe.is_alive():
                if time.time() > deadline:
                    raise SystemExit("%s: the probe sent %d of %d" % (system, probe.sent, sc["probes"]))
                time.sleep(0.05)
        t_accept = time.perf_counter() - t0
        profiled = prof.stop() if prof and sc["profile"] == "accept" else None
        # Where the CPU went while the load ran: the machine's busy time (all CPUs), and that of
        # the load generator, the sink and the relay, so that a rate can be read against what
        # the machine had left to give.
        busy1, steal1 = machine_ticks()
        load1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        accept_cpu = {
            "accept_busy_cores": (busy1 - busy0) / CLK / t_accept,
            "accept_steal_cores": (steal1 - steal0) / CLK / t_accept,
            "accept_load_cpu_s": (load1.ru_utime + load1.ru_stime) - (load0.ru_utime + load0.ru_stime),
            "accept_sink_cpu_s": cpu_seconds(sink.pid) - sink0,
            "accept_relay_cpu_s": (relay.cpu() - relay_cpu0) if relay else None,
        }
        deadline = time.time() + 600
        if flaky:
            # The probe goes on while the relay works off its retries: fresh mail must not
            # wait behind them. The retry tail starts when the first pass is in (all but the
            # deferred tenth); the probe stops once every load message is in.
            tail_from = None
            while state["mesg"] - len(state["probes"]) < sc["count"]:
                if tail_from is None and state["mesg"] - len(state["probes"]) >= 0.88 * sc["count"]:
                    tail_from = time.time()
                if time.time() > deadline:
                    raise SystemExit("%s: sink got %d of %d" % (system, state["mesg"], sc["count"]))
                time.sleep(0.02)
        probe.stopped = True
        probe.join()
        want = sc["count"] + probe.sent
        while state["mesg"] < want:
            if time.time() > deadline:
                raise SystemExit("%s: sink got %d of %d" % (system, state["mesg"], want))
            time.sleep(0.02)
        t_e2e = time.perf_counter() - t0
        if prof and sc["profile"] == "e2e":
            profiled = prof.stop()
        done.set()
        cpu = (relay.cpu() - cpu0) if relay else None
        # What the relay keeps once the burst is over: a sidecar's idle memory counts once per pod.
        after = after_anon = None
        if relay and sc.get("settle"):
            time.sleep(sc["settle"])
            after = relay.pss()
            # The part no other process shares: the binary's pages count once per node for every
            # pod that runs the same image, its anonymous memory once per pod.
            after_anon = relay.pss("Pss_Anon:")
        fresh = [lat for at, lat in state.get("probes", []) if flaky and tail_from and at >= tail_from]
        own = relay_histograms() if system == "mailroom" else {}
        return {
            **own,
            "fresh_during_retries": len(fresh) if flaky else None,
            "fresh_e2e_p50_ms": (percentile(fresh, 50) or 0) * 1000 if flaky else None,
            "fresh_e2e_p99_ms": (percentile(fresh, 99) or 0) * 1000 if flaky else None,
            "system": system,
            "accepted_per_s": sc["count"] / t_accept if sc["count"] else None,
            "e2e_per_s": sc["count"] / t_e2e if sc["count"] else None,
            "latency_p50_ms": (percentile(probe.latencies, 50) or 0) * 1000,
            "latency_p99_ms": (percentile(probe.latencies, 99) or 0) * 1000,
            "probe_messages": probe.sent,
            "cpu_seconds": cpu,
            "pss_idle_kib": idle,
            "pss_peak_kib": peak[0] if relay else None,
            "pss_after_burst_kib": after,
            "pss_anon_after_burst_kib": after_anon,
            "settle_s": sc.get("settle"),
            "profile": profiled,
            **accept_cpu,
        }
    finally:
        if relay:
            relay.stop()
        sink.kill()
        sink.wait()


SCENARIOS = [
    {"name": "2 KiB, 10 sessions", "size": 2048, "sessions": 10},
    {"name": "2 KiB, 50 sessions", "size": 2048, "sessions": 50, "settle": 60},
    {"name": "2 KiB, 10 sessions, one connection per message", "size": 2048, "sessions": 10, "reuse": False,
     "scale": 0.5},
    {"name": "2 KiB, 50 sessions, one connection per message", "size": 2048, "sessions": 50, "reuse": False,
     "scale": 0.5},
    # Accept latency when the relay does not wait for a CPU behind the load generator and the
    # sink: the relay on one CPU, everything else on the other (the ceiling row is the probe's
    # floor on that shared CPU). Not a throughput comparison: its own section in the report.
    {"name": "2 KiB, 10 sessions, relay on its own CPU", "size": 2048, "sessions": 10, "scale": 0.5,
     "relay_own_cpu": True},
    # The same load as "2 KiB, 10 sessions" under `perf record` (bench/cpu_profile.py), in a run of
    # its own so that sampling does not slow the runs that are compared.
    # "accept": while smtp-source runs; "e2e": until the sink has every message (signing happens
    # on delivery).
    {"name": "2 KiB, 10 sessions, relay profiled", "size": 2048, "sessions": 10, "scale": 0.5, "profile": "accept",
     "systems": ["mailroom"]},
    {"name": "100 KiB, 10 sessions", "size": 100 * 1024, "sessions": 10, "scale": 0.1},
    {"name": "2 KiB, 50 sessions, DKIM RSA-2048", "size": 2048, "sessions": 50, "dkim": "rsa", "systems": ["mailroom"]},
    {"name": "2 KiB, 50 sessions, DKIM Ed25519", "size": 2048, "sessions": 50, "dkim": "ed25519", "systems": ["mailroom"]},
    {"name": "2 KiB, 50 sessions, DKIM RSA-2048, relay profiled", "size": 2048, "sessions": 50, "dkim": "rsa",
     "scale": 0.25, "profile": "e2e", "systems": ["mailroom"]},
    # The accept path's cost of a hub (docs/hub.md): none with durability: handoff (the hub only
    # works when a pod drains), one round trip and the hub's fsync per message when replicated.
    # The p99s need about 1,000 probe messages each (the probe sends one every 10 ms or so).
    {"name": "2 KiB, no load, Relay with a hub", "size": 2048, "sessions": 0, "probes": 1500,
     "systems": ["mailroom", "mailroom-hub", "mailroom-replicated"]},
    {"name": "2 KiB, 1 session, Relay with a hub", "size": 2048, "sessions": 1, "scale": 0.75,
     "systems": ["mailroom", "mailroom-hub", "mailroom-replicated"]},
    {"name": "2 KiB, 1 session, hub on its own CPU, Relay with a hub", "size": 2048, "sessions": 1,
     "scale": 0.75, "hub_own_cpu": True, "systems": ["mailroom", "mailroom-replicated"]},
    {"name": "2 KiB, 10 sessions, Relay with a hub", "size": 2048, "sessions": 10, "scale": 1.5,
     "systems": ["mailroom", "mailroom-hub", "mailroom-replicated"]},
    {"name": "2 KiB, 10 sessions, hub on its own CPU, Relay with a hub", "size": 2048, "sessions": 10,
     "scale": 1.5, "hub_own_cpu": True, "systems": ["mailroom", "mailroom-replicated"]},
    {"name": "2 KiB, 50 sessions, Relay with a hub", "size": 2048, "sessions": 50, "scale": 0.5,
     "systems": ["mailroom", "mailroom-hub", "mailroom-replicated"]},
    # Upstream defers 10 % of recipients and takes 20 ms per message; retries must not stall
    # new mail. No ceiling: smtp-source would count the deferrals as failures.
    {"name": "2 KiB, 20 sessions, upstream defers 10 % and is slow", "size": 2048, "sessions": 20,
     "flaky": True, "scale": 0.25, "systems": ["postfix", "mailroom"]},
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latest.json"))
    ap.add_argument("--only", help="run only the scenario of this name, or else those whose name contains"
                    " it; with an existing --out, their rows replace the old ones and the other scenarios'"
                    " rows are kept")
    args = ap.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix", "openssl"):
        if not shutil.which(tool):
            raise SystemExit("%s is missing: run `make bench` (bench/run.sh installs Postfix)" % tool)
    if not os.path.exists(SIDECAR):
        raise SystemExit("build it first: cargo build --release --bin mailroom-sidecar")
    os.makedirs(WORK, exist_ok=True)
    results = []
    for rep in range(args.repeat):
        for sc in SCENARIOS:
            exact = any(s["name"] == args.only for s in SCENARIOS)
            if args.only and (sc["name"] != args.only if exact else args.only not in sc["name"]):
                continue
            sc = dict(sc, count=max(100, int(args.messages * sc.get("scale", 1))) if sc["sessions"] else 0)
            systems = sc.get("systems", ["ceiling", "postfix", "mailroom"])
            if rep % 2:
                systems = list(reversed(systems))
            for system in systems:
                print("%-38s %-9s ..." % (sc["name"], system), end=" ", flush=True)
                r = run_one(system, sc)
                r.update(scenario=sc["name"], repetition=rep, messages=sc["count"])
                own = r.get("relay_accepts_within_2ms")
                print("accepted %7.0f/s  e2e %7.0f/s  p99 %6.1f ms%s" % (
                    r["accepted_per_s"] or 0, r["e2e_per_s"] or 0, r["latency_p99_ms"],
                    "  (relay's own: %.2f %% within 2 ms, p99 %.1f ms, fsync p50/p99 %.2f/%.2f ms)" % (
                        100 * own, r["relay_accept_p99_ms"], r["relay_fsync_p50_ms"] or 0,
                        r["relay_fsync_p99_ms"] or 0) if own is not None else ""))
                results.append(r)
    machine = {
        "cpus": os.cpu_count(),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "filesystem": subprocess.run(["df", "-T", WORK], capture_output=True, text=True).stdout.splitlines()[-1].split()[1],
        "postfix": subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    messages = args.messages
    if args.only and os.path.exists(args.out):
        old = json.load(open(args.out))
        rerun = {r["scenario"] for r in results}
        results = [r for r in old["results"] if r["scenario"] not in rerun] + results
        machine, messages = dict(old["machine"], partial_rerun=machine["date"]), old["messages"]
    json.dump({"machine": machine, "messages": messages, "results": results}, open(args.out, "w"), indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
