"""Where a relay's CPU goes while the load runs: `perf record` on its processes, each sample
charged to the system call it was in (from its kernel call chain) or to user space.

Used by bench/run.py for the scenarios marked "profile": the report turns the summary into the
table "Where the relay's CPU goes" in docs/benchmarks.md, which is the measured reason for the
goals at 10 sessions. Samples are of the `cpu-clock` software event, which works in a virtual
machine without a hardware PMU; `perf` must run as root (no kernel setting is changed).
"""

import collections
import os
import shutil
import signal
import subprocess
import tempfile
import time

FREQUENCY = 1999

# System calls, by what a relay does with them. A sample under none of them is user space (no
# kernel frame), or kernel work outside a system call of this process (interrupts, softirqs run
# on its time, page faults).
GROUPS = [
    # On loopback a send also runs the receiving side's TCP input and wakes the reader.
    ("network: sendto", ("sendto", "sendmsg", "sendmmsg", "writev")),
    ("network: recvfrom", ("recvfrom", "recvmsg", "readv")),
    ("spool: fdatasync", ("fdatasync", "fsync", "sync_file_range")),
    ("spool: pwrite, pread, open, rename, unlink", ("pwrite64", "pread64", "openat", "open", "close", "renameat",
                                                   "renameat2", "rename", "unlinkat", "unlink", "ftruncate",
                                                   "fallocate", "newfstatat", "statx", "fstat", "getdents64",
                                                   "mkdirat")),
    ("waiting and waking: futex, epoll_wait", ("epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "futex",
                                               "nanosleep", "clock_nanosleep", "sched_yield")),
    ("connections: accept, connect, socket", ("accept", "accept4", "connect", "socket", "setsockopt",
                                              "getsockopt", "shutdown", "getsockname", "getpeername")),
]
SYSCALL_GROUP = {name: group for group, names in GROUPS for name in names}


def available():
    """None when perf can record here, else what is missing."""
    if not shutil.which("perf"):
        return "perf is missing: apt-get install linux-perf"
    if os.geteuid() != 0:
        return "perf needs root to record another process"
    return None


class Profile:
    """`perf record` on `pids` from start() until stop(); stop() returns the summary."""

    def __init__(self, pids):
        self.dir = tempfile.mkdtemp(prefix="mailroom-perf-")
        self.data = os.path.join(self.dir, "perf.data")
        self.proc = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQUENCY), "-g", "-o", self.data,
             "-p", ",".join(str(p) for p in pids)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # perf writes its file's header once it has attached to the processes.
        deadline = time.time() + 20
        while not (os.path.exists(self.data) and os.path.getsize(self.data) > 0):
            if self.proc.poll() is not None:
                raise SystemExit("perf record exited: %s" % self.proc.stderr.read().decode(errors="replace"))
            if time.time() > deadline:
                self.proc.kill()
                raise SystemExit("perf record did not start within 20 s")
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=120)
        try:
            if not os.path.exists(self.data):
                raise SystemExit("perf record wrote nothing: %s" % err.decode(errors="replace"))
            script = subprocess.run(["perf", "script", "-i", self.data, "-F", "comm,ip,sym"],
                                    capture_output=True, text=True, timeout=600)
            if script.returncode != 0:
                raise SystemExit("perf script failed: %s" % script.stderr)
            return summarize(script.stdout)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def syscall_of(frame):
    """The system call a kernel frame is the entry of (`__x64_sys_sendto` -> sendto), or None."""
    for prefix in ("__x64_sys_", "__do_sys_", "__se_sys_", "ksys_"):
        if frame.startswith(prefix):
            return frame[len(prefix):]
    return None


def summarize(script):
    """Samples by group, plus the top user-space and kernel functions, from `perf script` text:
    one header line per sample, then its frames innermost first (`address symbol`), then a blank
    line. Kernel frames have kernel addresses (0xffff...)."""
    groups = collections.Counter()
    calls = collections.Counter()
    user_top = collections.Counter()
    kernel_top = collections.Counter()
    total = 0
    for block in script.split("\n\n"):
        lines = [l.strip() for l in block.strip().splitlines()]
        frames = [l.split(None, 1) for l in lines[1:]]
        frames = [(addr, sym.split("+0x")[0]) for addr, sym in (f for f in frames if len(f) == 2)]
        if not frames:
            continue
        total += 1
        kernel = [sym for addr, sym in frames if addr.startswith("ffff")]
        call = next((c for c in map(syscall_of, kernel) if c), None)
        if call:
            calls[call] += 1
            groups[SYSCALL_GROUP.get(call, "other system calls")] += 1
            kernel_top[kernel[0]] += 1
        elif kernel:
            groups["kernel outside a system call (interrupts, faults)"] += 1
            kernel_top[kernel[0]] += 1
        else:
            groups["user space"] += 1
            user_top[frames[0][1]] += 1
    return {
        "samples": total,
        "frequency_hz": FREQUENCY,
        "groups": dict(groups),
        "syscalls": dict(calls.most_common(12)),
        "top_user": dict(user_top.most_common(8)),
        "top_kernel": dict(kernel_top.most_common(8)),
    }
