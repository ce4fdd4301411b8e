#!/usr/bin/env python3
"""Turns bench/results/latest.json into docs/benchmarks.md and its plots (docs/img/bench-*.png).
The hand-written analysis lives in bench/notes.md and is included as is."""

import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEMS = ["ceiling", "postfix", "mailroom"]
HUB_SYSTEMS = ["mailroom", "mailroom-hub", "mailroom-replicated"]
COLORS = {"ceiling": "#999999", "postfix": "#d95f02", "mailroom": "#1b9e77"}


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(results):
    scenarios = []
    for r in results:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    table = {}
    for sc in scenarios:
        for system in SYSTEMS + HUB_SYSTEMS[1:]:
            rows = [r for r in results if r["scenario"] == sc and r["system"] == system]
            if rows:
                table[sc, system] = {k: median(rows, k) for k in rows[0] if isinstance(rows[0][k], (int, float))}
    return scenarios, table


def section(title, prose, columns):
    """A report section: its title, its prose, and the head of its table (`columns` as
    (name, right-aligned) pairs)."""
    return ["## " + title, "", *prose, "",
            "| " + " | ".join(name for name, _ in columns) + " |",
            "|" + "|".join("---:" if right else "---" for _, right in columns) + "|"]


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def mib(kib):
    return None if kib is None else kib / 1024


def ratio(a, b):
    return None if not a or not b else a / b


def plot(scenarios, table, key, title, path):
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.27
    for i, system in enumerate(SYSTEMS):
        xs = [j + (i - 1) * width for j in range(len(scenarios))]
        ys = [table.get((sc, system), {}).get(key) or 0 for sc in scenarios]
        ax.bar(xs, ys, width, label=system, color=COLORS[system])
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([s.replace(", ", "\n") for s in scenarios], fontsize=8)
    ax.set_ylabel("messages / second")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(scenarios, table, path):
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.2
    bars = [("postfix", "pss_idle_kib", "Postfix idle"), ("postfix", "pss_peak_kib", "Postfix peak"),
            ("mailroom", "pss_idle_kib", "mailroom idle"), ("mailroom", "pss_peak_kib", "mailroom peak")]
    for i, (system, key, label) in enumerate(bars):
        xs = [j + (i - 1.5) * width for j in range(len(scenarios))]
        ys = [mib(table.get((sc, system), {}).get(key)) or 0 for sc in scenarios]
        ax.bar(xs, ys, width, label=label, color=COLORS[system], alpha=0.5 if "idle" in label else 1.0)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([s.replace(", ", "\n") for s in scenarios], fontsize=8)
    ax.set_ylabel("PSS of all the relay's processes (MiB)")
    ax.set_title("Memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile_section(results, table):
    """Where the relay's CPU goes, from each profiled run (bench/cpu_profile.py)."""
    out = []
    profiled = {}
    for r in results:
        if r.get("profile"):
            profiled[r["scenario"]] = r
    for name, r in profiled.items():
        p = r["profile"]
        load = name.replace(", relay profiled", "")
        base = table.get((load, "mailroom")) or {}
        e2e = "DKIM" in load
        cpu = "cpu_seconds" if e2e else "accept_relay_cpu_s"
        per_msg = None
        if base.get(cpu) and base.get("messages"):
            per_msg = base[cpu] / (base["messages"] + (base.get("probe_messages") or 0 if e2e else 0)) * 1e6
        out += section("Where the relay's CPU goes: %s" % load, [
            "`perf record` (`cpu-clock`, %d Hz, call chains) on the relay's processes %s, with the load of" % (
                p["frequency_hz"], "until the sink had every message" if e2e else "while `smtp-source` ran"),
            "*%s* (%s messages, in a run of its own: sampling slows the relay)." % (load, "{:,}".format(r["messages"])),
            "Each sample is charged to the system call its kernel call chain is in, or to user space (no",
            "kernel frame). *µs per message* applies each share to the relay's CPU per message in the",
            "unprofiled run of the same load (%s µs). %s samples. On loopback, `sendto` also runs the" % (
                fmt(per_msg), "{:,}".format(p["samples"])),
            "receiving side's TCP input and wakes the reader; `finish_task_switch` is the cost of switching",
            "to another thread or process, which in this virtual machine includes its exits."],
            [("where", False), ("share of the relay's CPU", True), ("µs per message", True)])
        total = max(1, p["samples"])
        for group, n in sorted(p["groups"].items(), key=lambda kv: -kv[1]):
            share = n / total
            out.append("| %s | %.1f %% | %s |" % (group, 100 * share, fmt(per_msg and share * per_msg)))
        listing = lambda d: ", ".join("`%s` %.1f %%" % (k, 100 * v / total) for k, v in d.items())
        out += ["", "By system call: %s." % listing(p["syscalls"]), "",
                "Functions the samples were in (innermost frame), kernel: %s." % listing(p["top_kernel"]), "",
                "User space: %s." % listing(p["top_user"]), ""]
    return out


def requests_section(o):
    """The apiserver requests of the operator's cold start and warm restart, by verb and resource."""
    cold, warm = o.get("cold_start_apiserver_requests"), o.get("warm_restart_apiserver_requests")
    if not cold or not warm:
        return []
    out = ["Requests the apiserver served during the cold start and the warm restart (its own",
           "`apiserver_request_total`, by verb and resource; the test's watches add one LIST and one WATCH",
           "each), and the operator's reconciles (`mailroom_operator_reconcile_runs_total`):", "",
           "| request | cold start | warm restart |", "|---|---:|---:|"]
    keys = sorted(set(cold) | set(warm), key=lambda k: (k == "all", -(cold.get(k, 0) + warm.get(k, 0)), k))
    for k in keys:
        label = "**all**" if k == "all" else "`%s`" % k
        out.append("| %s | %s | %s |" % (label, cold.get(k, 0), warm.get(k, 0)))
    for kind in sorted(set(o.get("cold_start_reconciles", {})) | set(o.get("warm_restart_reconciles", {}))):
        out.append("| reconciles of %s | %.0f | %.0f |" % (
            kind, o.get("cold_start_reconciles", {}).get(kind, 0), o.get("warm_restart_reconciles", {}).get(kind, 0)))
    return out + [""]


def main():
    data = json.load(open(sys.argv[1]))
    every, table = summarize(data["results"])
    # The hub's scenarios compare mailroom with itself, and pinned ones measure latency alone;
    # they have their own sections.
    scenarios = [sc for sc in every if "Relay with a hub" not in sc and "own CPU" not in sc and "profiled" not in sc]
    img = os.path.join(ROOT, "docs", "img")
    os.makedirs(img, exist_ok=True)
    plot(scenarios, table, "accepted_per_s", "Accepted (until the last 250)", os.path.join(img, "bench-accepted.png"))
    plot(scenarios, table, "e2e_per_s", "End to end (until the sink has every message)", os.path.join(img, "bench-e2e.png"))
    plot_memory(scenarios, table, os.path.join(img, "bench-memory.png"))
    m = data["machine"]
    out = [
        "# Benchmarks: mailroom-sidecar vs Postfix",
        "",
        "<!-- Generated by bench/report.py from bench/results/latest.json; edit bench/notes.md instead. -->",
        "",
        "Reproduce with `make bench` (installs Postfix and perf from Debian's packages, builds the sidecar in",
        "release mode, runs `bench/run.py`, then this report). Every scenario sends the same load with",
        "Postfix's own `smtp-source` (`-d`: sessions stay open, except in the one-connection-per-message scenarios) to three systems in turn, all relaying to",
        "one `smtp-sink`:",
        "",
        "- **ceiling**: `smtp-source` straight into `smtp-sink`: what this machine can do with no relay.",
        "- **postfix**: Postfix %s as a null client (`relayhost` = the sink), shipped defaults, fsync on." % m["postfix"],
        "- **mailroom**: `mailroom-sidecar` relaying to the sink (`maxConnections: 20`, Postfix's default",
        "  destination concurrency), its spool on the same filesystem as Postfix's queue.",
        "",
        "Machine: %s CPUs (%s), %s GiB RAM, Linux %s, %s filesystem; %s; %d messages per run (a tenth for "
        "100 KiB), %d repetition(s), medians shown." % (
            m["cpus"], m["cpu_model"], m["memory_gib"], m["kernel"], m["filesystem"], m["date"], data["messages"],
            1 + max(r["repetition"] for r in data["results"])),
        *(["Some scenarios were rerun alone on %s (`bench/run.py --only`); their rows are from that run." % m["partial_rerun"]]
          if m.get("partial_rerun") else []),
        "",
        "Accept latency is measured by a separate probe session sending messages one at a time during",
        "the load (end of DATA → `250`). CPU is the relay's processes only; memory is the sum of PSS of",
        "all the relay's processes (Postfix: master and every daemon), idle before the load, at peak, and",
        "(where a scenario measures it) idle again a minute after the burst; *anon after* is the part of",
        "that no other process shares (anonymous memory; the rest is mostly the binary's pages, which",
        "every pod running the same image shares on a node).",
        "",
        "| scenario | system | accepted/s | end-to-end/s | p50 ms | p99 ms | CPU s | PSS idle MiB | PSS peak MiB | PSS after MiB | anon after MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in scenarios:
        for system in SYSTEMS:
            r = table.get((sc, system))
            if not r:
                continue
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                sc, system, fmt(r["accepted_per_s"]), fmt(r["e2e_per_s"]), fmt(r["latency_p50_ms"], "{:.1f}"),
                fmt(r["latency_p99_ms"], "{:.1f}"), fmt(r.get("cpu_seconds"), "{:.1f}"),
                fmt(mib(r.get("pss_idle_kib")), "{:.1f}"), fmt(mib(r.get("pss_peak_kib")), "{:.1f}"),
                fmt(mib(r.get("pss_after_burst_kib")), "{:.1f}"), fmt(mib(r.get("pss_anon_after_burst_kib")), "{:.1f}")))
    out += ["", "## Ratios (same run)", "",
            "| scenario | accepted mailroom/Postfix | end-to-end mailroom/Postfix | accepted mailroom/ceiling | end-to-end mailroom/ceiling | peak memory mailroom/Postfix |",
            "|---|---:|---:|---:|---:|---:|"]
    postfix_by_load = {sc.split(", DKIM")[0]: table.get((sc, "postfix")) for sc in scenarios if (sc, "postfix") in table}
    for sc in scenarios:
        mr = table.get((sc, "mailroom"))
        pf = table.get((sc, "postfix")) or postfix_by_load.get(sc.split(", DKIM")[0])
        ce = table.get((sc, "ceiling")) or table.get((sc.split(", DKIM")[0], "ceiling"))
        if not mr:
            continue
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            sc, fmt(ratio(mr["accepted_per_s"], pf and pf["accepted_per_s"]), "{:.1f}×"),
            fmt(ratio(mr["e2e_per_s"], pf and pf["e2e_per_s"]), "{:.1f}×"),
            fmt(ratio(mr["accepted_per_s"], ce and ce["accepted_per_s"]), "{:.2f}"),
            fmt(ratio(mr["e2e_per_s"], ce and ce["e2e_per_s"]), "{:.2f}"),
            fmt(ratio(mr.get("pss_peak_kib"), pf and pf.get("pss_peak_kib")), "{:.2f}")))
    out += ["", "DKIM rows are compared with the unsigned Postfix run of the same load (Postfix does not sign).", "",
            "![accepted](img/bench-accepted.png)", "", "![end to end](img/bench-e2e.png)", "",
            "![memory](img/bench-memory.png)", ""]
    budget = [sc for sc in scenarios if any((table.get((sc, s)) or {}).get("accept_busy_cores") for s in SYSTEMS)
              and (sc, "ceiling") in table]
    if budget:
        out += section("Where the CPU goes while the load runs", [
            "CPU time per message while `smtp-source` runs (until its last `250`), of the load generator",
            "(`smtp-source`), the sink (`smtp-sink`) and the relay, and how many of the machine's CPUs were",
            "busy in that time (all processes). A relay receives each message as the sink does and sends",
            "it on as `smtp-source` does, and stores it durably first; when the machine's CPUs are all",
            "busy, its accepted/s against the ceiling is about *(load + sink) / (load + sink + relay)*",
            "of the ceiling's CPU per message."],
            [("scenario", False), ("system", False), ("accepted/s", True), ("CPUs busy", True),
             ("load µs/msg", True), ("sink µs/msg", True), ("relay µs/msg", True), ("total µs/msg", True)])
        for sc in budget:
            for system in SYSTEMS:
                r = table.get((sc, system))
                if not r or r.get("accept_busy_cores") is None:
                    continue
                per = lambda k: None if r.get(k) is None else r[k] / r["messages"] * 1e6
                parts = [per("accept_load_cpu_s"), per("accept_sink_cpu_s"), per("accept_relay_cpu_s")]
                out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    sc, system, fmt(r["accepted_per_s"]), fmt(r["accept_busy_cores"], "{:.2f}"),
                    *(fmt(v, "{:.0f}") for v in parts), fmt(sum(v for v in parts if v is not None), "{:.0f}")))
        out.append("")
    out += profile_section(data["results"], table)
    pinned = [sc for sc in every if "relay on its own CPU" in sc]
    if pinned:
        out += section("Accept latency with the relay on its own CPU", [
            "The same load as *2 KiB, 10 sessions*, with the relay (every process and thread) on one CPU",
            "and the load generator, the probe and the sink on the other, so that the relay never waits",
            "for a CPU behind them. The ceiling row has no relay: its latency is the probe's own floor on",
            "the shared CPU. This is not a throughput comparison (the relay has a CPU the ceiling does",
            "not use)."],
            [("scenario", False), ("system", False), ("accepted/s", True), ("p50 ms", True), ("p99 ms", True),
             ("p99 above the ceiling's ms", True)])
        for sc in pinned:
            floor = (table.get((sc, "ceiling")) or {}).get("latency_p99_ms")
            for system in SYSTEMS:
                r = table.get((sc, system))
                if r:
                    out.append("| %s | %s | %s | %s | %s | %s |" % (
                        sc, system, fmt(r["accepted_per_s"]), fmt(r["latency_p50_ms"], "{:.2f}"),
                        fmt(r["latency_p99_ms"], "{:.2f}"),
                        fmt(None if system == "ceiling" or floor is None else r["latency_p99_ms"] - floor, "{:+.2f}")))
        out.append("")
    timed = [sc for sc in every if (table.get((sc, "mailroom")) or {}).get("relay_accept_p99_ms") is not None
             and "Relay with a hub" not in sc and "profiled" not in sc]
    if timed:
        out += section("Accept latency as the relay times it", [
            "The probe's p99 (the tables above) is taken from a few hundred messages and includes the wait",
            "for a CPU before the relay reads the probe's final dot and after it writes the `250`, on two",
            "CPUs that the load generator and the sink keep busy. The sidecar times every accept itself",
            "(`mailroom_sidecar_accept_duration_seconds`: end of DATA to `250`, every message of the run,",
            "the load's and the probe's) and every group commit's fsync",
            "(`mailroom_sidecar_spool_fsync_duration_seconds`); percentiles are estimated from the",
            "histograms' buckets (powers of two) as Prometheus's `histogram_quantile` does. A message that",
            "arrives while an fsync runs waits for it and for the next one, so the disk alone puts an",
            "accept's p99 near twice the fsync's."],
            [("scenario", False), ("probe p99 ms", True), ("relay's own p99 ms", True),
             ("accepts within 2 ms", True), ("fsync p50 ms", True), ("fsync p99 ms", True)])
        for sc in timed:
            r = table[sc, "mailroom"]
            within = r.get("relay_accepts_within_2ms")
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                sc, fmt(r["latency_p99_ms"], "{:.1f}"), fmt(r["relay_accept_p99_ms"], "{:.1f}"),
                fmt(None if within is None else 100 * within, "{:.1f} %"),
                fmt(r.get("relay_fsync_p50_ms"), "{:.2f}"), fmt(r.get("relay_fsync_p99_ms"), "{:.2f}")))
        out.append("")
    flaky = [sc for sc in scenarios if "defers" in sc]
    if flaky:
        out += ["## Retries do not stall new mail", "",
                "The upstream (`bench/flaky_sink.py`) answers `450 4.2.0` to 10 % of recipients at random and",
                "takes 20 ms to answer each message; both relays retry first after 5 s, at most every 40 s.",
                "A probe session keeps sending fresh mail (never deferred) while the relay works off its",
                "retries; *fresh mail end to end* is the time from the probe's end of DATA to the message",
                "arriving at the upstream, for probe messages arriving after the first pass (all but the",
                "deferred tenth delivered). Its p99 still includes probe messages queued behind the accept",
                "burst (mailroom accepts ~10× faster than the slow upstream takes); the p50 is the upstream's",
                "own 20 ms. End-to-end msg/s here is dominated by how many retry rounds the unluckiest",
                "message needs (random), not by throughput.", "",
                "| system | accepted/s | end-to-end/s | fresh mail e2e p50 ms | p99 ms | fresh messages | CPU s | PSS peak MiB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for sc in flaky:
            for system in ("postfix", "mailroom"):
                r = table.get((sc, system))
                if r:
                    out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                        system, fmt(r["accepted_per_s"]), fmt(r["e2e_per_s"]), fmt(r.get("fresh_e2e_p50_ms"), "{:.1f}"),
                        fmt(r.get("fresh_e2e_p99_ms"), "{:.1f}"), fmt(r.get("fresh_during_retries")),
                        fmt(r.get("cpu_seconds"), "{:.1f}"), fmt(mib(r.get("pss_peak_kib")), "{:.1f}")))
        out.append("")
    hub = [sc for sc in every if "Relay with a hub" in sc]
    if hub:
        out += ["## A Relay with a hub: the cost on the accept path", "",
                "The same load into one sidecar, three ways (docs/hub.md): **mailroom** without a hub;",
                "**mailroom-hub** with a hub configured (`durability: handoff`: the hub works only when a pod",
                "drains, so the accept path is unchanged); **mailroom-replicated** (`durability: replicated`:",
                "each message is also copied to the hub, over TLS with AUTH, and fsync'd there before `250`).",
                "The hub is a second `mailroom-sidecar` process on the same machine and the same disk; CPU",
                "and memory count both processes. *No load* is the probe alone (the cost of the path itself);",
                "*hub on its own CPU* gives the hub one CPU and everything else the other, in both systems, as",
                "when the hub runs on another node (the disk stays shared). *Added p50/p99* is against",
                "mailroom without a hub in the same scenario; *probes* is how many messages the p50 and p99",
                "are taken from.", "",
                "| scenario | system | accepted/s | p50 ms | p99 ms | added p50 ms | added p99 ms | probes | CPU s | PSS peak MiB |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for sc in hub:
            base = table.get((sc, "mailroom"), {})
            for system in HUB_SYSTEMS:
                r = table.get((sc, system))
                if not r:
                    continue
                added = lambda k: None if system == "mailroom" or base.get(k) is None else r[k] - base[k]
                out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    sc, system, fmt(r.get("accepted_per_s")), fmt(r["latency_p50_ms"], "{:.2f}"),
                    fmt(r["latency_p99_ms"], "{:.2f}"), fmt(added("latency_p50_ms"), "{:+.2f}"),
                    fmt(added("latency_p99_ms"), "{:+.2f}"), fmt(r.get("probe_messages")),
                    fmt(r.get("cpu_seconds"), "{:.1f}"),
                    fmt(mib(r.get("pss_peak_kib")), "{:.1f}")))
        out.append("")
    backlog = os.path.join(ROOT, "bench", "results", "backlog.json")
    if os.path.exists(backlog):
        b = json.load(open(backlog))
        out += ["## Memory per queued message", "",
                "`bench/backlog.py` (part of `make bench`): the release sidecar relays to an upstream that takes",
                "connections and never answers, so every message it accepts stays queued; `smtp-source` sends",
                "%d messages of 2 KiB over 10 sessions. This is what a backlog costs: a slow or unreachable" % b["messages"],
                "upstream, or sessions that accept faster than delivery sends on.", "",
                "| measure | result |", "|---|---:|",
                "| PSS before / with every message queued (peak) | %.1f / %.1f MiB (%.1f MiB) |" % (
                    b["pss_before_kib"] / 1024, b["pss_queued_kib"] / 1024, b["pss_peak_kib"] / 1024),
                "| per queued message (at the peak) | %.0f bytes (%.0f bytes) |" % (
                    b["bytes_per_message"], b["peak_bytes_per_message"]),
                ""]
    webhook = os.path.join(ROOT, "bench", "results", "webhook.txt")
    if os.path.exists(webhook):
        out += ["## Injection webhook", "",
                "`make bench-webhook`: 1,000 dry-run pod creations through the real apiserver, each injected",
                "by the operator's webhook (release build); goal p99 ≤ 10 ms:", "", "```",
                open(webhook).read().strip(), "```", ""]
    operator = os.path.join(ROOT, "bench", "results", "operator.json")
    if os.path.exists(operator):
        o = json.load(open(operator))
        out += ["## Operator at scale", "",
                "`make bench-operator` (operator/tests/scale.rs, release build): the real operator binary against",
                "the real apiserver with %d Relays in %d namespaces over %d MailDomains (RSA-2048 keys, the" % (
                    o["relays"], o["namespaces"], o["maildomains"]),
                "default); every Relay sends as its own MailDomain and half of them (%d) also as `md-0`." % o["fan_out_relays"],
                "The operator's DNS checks go to a real DNS server on loopback with an empty zone.", "",
                "| measure | result | goal |", "|---|---:|---:|",
                "| cold start (keys generated) to all Ready | %.1f s | ≤ 20 s |" % o["cold_start_to_all_ready_seconds"],
                "| operator RSS at that point (peak) | %.1f MiB (%.1f MiB) | ≤ 64 MiB |" % (
                    o["rss_after_cold_start_kib"] / 1024, o["peak_rss_cold_kib"] / 1024),
                "| `md-0` stops granting the namespaces: all %d dependent Relays `DomainNotAllowed` | %.2f s (%.0f Relays/s) | |" % (
                    o["fan_out_relays"], o["fan_out_revoke_seconds"], o["fan_out_revoke_relays_per_second"]),
                "| grant restored: all Ready again | %.2f s | |" % o["fan_out_restore_seconds"],
                "| warm restart (keys exist) to every object reconciled | %.1f s | |" % o["warm_restart_all_reconciled_seconds"],
                "| operator RSS after the warm restart (peak) | %.1f MiB (%.1f MiB) | ≤ 64 MiB |" % (
                    o["rss_after_warm_restart_kib"] / 1024, o["peak_rss_warm_kib"] / 1024),
                ""]
        out += requests_section(o)
    notes = os.path.join(ROOT, "bench", "notes.md")
    if os.path.exists(notes):
        out += [open(notes).read().rstrip(), ""]
    open(os.path.join(ROOT, "docs", "benchmarks.md"), "w").write("\n".join(out))
    print("wrote docs/benchmarks.md and docs/img/bench-*.png")


if __name__ == "__main__":
    main()
