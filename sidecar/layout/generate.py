#!/usr/bin/env python3
"""Writes sidecar/layout/hot.ld: the functions the sidecar runs, placed together in its binary.

A sidecar keeps resident every page of code it has run. The kernel maps code 64 KiB at a time
(fault-around), and with functions in the linker's default order the code that a relay runs is
spread over most of the binary. Placing the functions it runs together (a linker script inserted
before `.text`, which the release build passes to the linker: sidecar/build.rs) keeps that
memory small. Measured in docs/benchmarks.md ("Memory after a burst").

This script runs the release binary under callgrind (valgrind), which records every function that
runs, through what a sidecar does in a pod: start, readiness and metrics scrapes, DKIM-signed
bursts over reused and one-shot connections at 50 sessions, a large message, and the idle time
after. Functions are named without their hash (one pattern matches every instance of a generic
function), so the list stays valid across builds until the code itself is renamed;
sidecar/tests/layout.rs fails when too much of it no longer matches.

Usage: `make layout`, which builds the binary to profile in the default layout
(MAILROOM_LAYOUT=default, in target/layout) and runs
python3 sidecar/layout/generate.py target/layout/release/mailroom-sidecar
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import run  # noqa: E402  (the benchmark's sink, ports and helpers)

OUT = os.path.join(ROOT, "sidecar", "layout", "hot.ld")
WORK = "/var/tmp/mailroom-layout"
# A Rust legacy-mangled name ends in its hash: `17h` + 16 hex digits + `E`.
RUST_HASH = re.compile(r"17h[0-9a-f]{16}E")


def config(base):
    keys = []
    for name, algo in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ed", ["-algorithm", "ED25519"])):
        key = os.path.join(base, name + ".pem")
        subprocess.run(["openssl", "genpkey", *algo, "-out", key], check=True, capture_output=True)
        keys.append(key)
    path = os.path.join(base, "sidecar.yaml")
    open(path, "w").write(
        "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\nhostname: layout.local\n"
        "listen:\n  address: 127.0.0.1:%d\nadmin:\n  address: 127.0.0.1:%d\n"
        "limits:\n  maxConnections: 1024\n"
        "domains:\n"
        "  - domain: example.com\n    dkim:\n      selector: s1\n      algorithm: rsa-sha256\n      keyFile: %s\n"
        "  - domain: ed.example.com\n    dkim:\n      selector: s2\n      algorithm: ed25519-sha256\n      keyFile: %s\n"
        "spool:\n  dir: %s/spool\n"
        "delivery:\n  smarthost:\n    host: 127.0.0.1\n    port: %d\n    tls: none\n    maxConnections: 20\n"
        % (run.MAILROOM_PORT, run.ADMIN_PORT, keys[0], keys[1], base, run.SINK_PORT))
    return path


def scrape():
    """What the kubelet's probes and Prometheus ask, as in a pod (a 503 from /readyz counts too)."""
    for path in ("/livez", "/readyz", "/metrics"):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (run.ADMIN_PORT, path), timeout=60) as r:
                r.read()
        except urllib.error.HTTPError as e:
            e.read()


def load(sender, count, sessions, size, reuse=True):
    args = ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
            "-f", sender, "-t", "rcpt@example.net", "127.0.0.1:%d" % run.MAILROOM_PORT]
    if reuse:
        args.insert(1, "-d")
    subprocess.run(args, check=True, capture_output=True, timeout=900)


def executed_functions(profile, binary):
    """Names of the functions of `binary` that ran, from a callgrind profile (names mangled).

    The format compresses names: `fn=(id) name` or `cfn=(id) name` defines an id the first time,
    and later lines give the id alone; objects (`ob=`, `cob=`) likewise.
    """
    objects, names, ran, current = {}, {}, set(), None
    target = os.path.realpath(binary)
    for line in open(profile, errors="replace"):
        m = re.match(r"^(c?ob|c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        kind, ident, name = m.groups()
        if kind.endswith("ob"):
            if name:
                objects[ident] = os.path.realpath(name)
            if kind == "ob":
                current = objects.get(ident)
            continue
        if name:
            names[ident] = re.sub(r"'\d+$", "", name)
        if kind == "fn" and current == target:
            ran.add(ident)
    return {names[i] for i in ran if i in names}


def pattern(name):
    """The input-section name for a function: Rust names lose their hash, C names stay."""
    if name.startswith("0x") or not re.fullmatch(r"[A-Za-z0-9_$.]+", name):
        return None
    m = RUST_HASH.search(name)
    if name.startswith("_ZN") and m:
        return "%s17h*" % name[:m.start()]
    # LTO numbers the local functions whose names collide (`write_str.1614`), differently in
    # each build: the pattern takes any number.
    return re.sub(r"\.\d+$", "", name)


def input_sections(pattern):
    """The input sections a pattern names. LLVM puts a function marked cold (`#[cold]`, as
    `RawVec::grow_one` is) in `.text.unlikely.<name>`, the rest in `.text.<name>`."""
    names = [pattern] if pattern.endswith("*") else [pattern, pattern + ".*"]
    return " ".join(prefix + n for prefix in (".text.", ".text.unlikely.") for n in names)


def by_spread(patterns, binary):
    """Patterns in the order to place them: a generic function's pattern matches all its instances
    (701 of `<&T as Debug>::fmt`, say), of which few run, so the widest go last, where the
    instances that do run sit past the code that always runs. Ordered by the bytes each
    pattern matches, smallest first."""
    out = subprocess.run(["nm", "-S", "--defined-only", binary], check=True, capture_output=True, text=True)
    size = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            key = pattern(parts[3])
            size[key] = size.get(key, 0) + int(parts[1], 16)
    return sorted(patterns, key=lambda p: (size.get(p, 0), p))


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else run.SIDECAR)
    for tool, package in (("valgrind", "valgrind"), ("callgrind_control", "valgrind"),
                          ("smtp-source", "postfix"), ("openssl", "openssl")):
        if not shutil.which(tool):
            sys.exit("layout: %s not found: apt-get install %s (make layout installs it)" % (tool, package))
    sections = subprocess.run(["readelf", "-SW", binary], check=True, capture_output=True, text=True).stdout
    if ".text.hot" in sections:
        # valgrind names only the functions in `.text`: profile a build in the default layout.
        sys.exit("layout: %s has the hot layout; build with MAILROOM_LAYOUT=default (make layout)" % binary)
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    sink = run.start_sink()[0]
    profile = os.path.join(WORK, "callgrind.out")
    env = dict(os.environ, RUST_LOG="info", SIDECAR_POD_NAME="layout-0", SIDECAR_QUEUE_API_ADDR="127.0.0.1:0",
               SIDECAR_POD_UID="00000000-0000-4000-8000-000000000000")
    relay = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no", "--dump-line=no",
         "--callgrind-out-file=" + profile + ".%p", binary, "--config", config(WORK)],
        stderr=open(os.path.join(WORK, "log"), "w"), env=env)
    try:
        run.wait_port(run.MAILROOM_PORT, timeout=300)
        scrape()
        load("app@example.com", 2000, 50, 2048)
        load("news@ed.example.com", 500, 10, 2048)
        load("app@example.com", 300, 10, 2048, reuse=False)
        load("app@example.com", 20, 2, 100 * 1024)
        scrape()
        time.sleep(5)
        scrape()
        # The dump is taken before shutdown: only what runs while the pod lives counts.
        subprocess.run(["callgrind_control", "--dump=layout", str(relay.pid)], check=True,
                       capture_output=True, timeout=300)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=300)
        sink.kill()
    dumps = sorted(f for f in os.listdir(WORK) if f.startswith("callgrind.out.") and f.endswith(".1"))
    if not dumps:
        sys.exit("layout: callgrind wrote no dump in %s (see %s/log)" % (WORK, WORK))
    names = executed_functions(os.path.join(WORK, dumps[0]), binary)
    patterns = by_spread({p for p in map(pattern, names) if p}, binary)
    if len(patterns) < 1000:
        sys.exit("layout: only %d functions ran; the run failed (see %s/log)" % (len(patterns), WORK))
    with open(OUT, "w") as out:
        out.write("/* The functions the sidecar runs, placed together: generated by sidecar/layout/generate.py\n"
                  " * (make layout); do not edit. Passed to the linker by sidecar/build.rs in release builds. */\n")
        out.write("SECTIONS\n{\n  .text.hot :\n  {\n")
        for p in patterns:
            out.write("    *(%s)\n" % input_sections(p))
        out.write("  }\n}\nINSERT BEFORE .text;\n")
    print("layout: %d functions -> %s" % (len(patterns), os.path.relpath(OUT, ROOT)))


if __name__ == "__main__":
    main()
