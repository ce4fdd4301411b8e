"""A real authoritative DNS server on loopback for mailroom's tests (dnslib, which we did not write).

Usage: dnsserver.py ZONE_FILE [--address 127.0.0.1] [--port 0]
Serves UDP and TCP on the same port and prints that port on stdout once listening. The zone file
is master-file syntax (`example.com. 300 IN MX 10 mx.example.com.`); it is re-read whenever it
changes, so a test can publish or withdraw records while the server runs. Names absent from the
file get NXDOMAIN; a name that exists without the asked type gets NOERROR with no answer (NODATA).
A comment line `; SERVFAIL <name>` makes every query for <name> fail with SERVFAIL.

With `--dnssec ANCHOR_FILE` the zone is served as a DNSSEC-signed root zone (signed_zone.py, with
dnspython): a fresh key per run, its DNSKEY written to ANCHOR_FILE as the resolver's trust anchor,
and `; INSECURE <name>` / `; BOGUS <name>` lines for unsigned subzones and broken signatures.
"""

import argparse
import errno
import os
import sys
import time

from dnslib import QTYPE, RCODE, RR, DNSLabel
from dnslib.server import BaseResolver, DNSHandler, DNSServer


def changed_text(path, mtime):
    """The zone file's text if it changed since `mtime` (else None), and its current mtime."""
    try:
        now = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None, mtime
    if now == mtime:
        return None, mtime
    with open(path) as f:
        return f.read(), now


class ZoneResolver(BaseResolver):
    def __init__(self, path):
        self.path = path
        self.mtime = None
        self.records = []
        self.servfail = set()
        self.load()

    def load(self):
        text, self.mtime = changed_text(self.path, self.mtime)
        if text is None:
            return
        self.servfail = {
            DNSLabel(line.split()[2]) for line in text.splitlines() if line.startswith("; SERVFAIL ")
        }
        self.records = RR.fromZone(text)

    def resolve(self, request, handler):
        self.load()
        reply = request.reply()
        qname, qtype = request.q.qname, request.q.qtype
        if qname in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        matches = [rr for rr in self.records if rr.rname == qname]
        if not matches:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rr in matches:
            if qtype == QTYPE.ANY or rr.rtype == qtype:
                reply.add_answer(rr)
            elif rr.rtype == QTYPE.CNAME:
                reply.add_answer(rr)
        return reply


class SignedResolver:
    """Re-signs the zone file whenever it changes; answers are built by signed_zone.py."""

    def __init__(self, path, anchor_path):
        from signed_zone import SignedZones

        self.path = path
        self.mtime = None
        self.zones = SignedZones()
        with open(anchor_path, "w") as f:
            f.write(self.zones.anchor())
        self.load()

    def load(self):
        text, self.mtime = changed_text(self.path, self.mtime)
        if text is not None:
            self.zones.load(text)


class SignedHandler(DNSHandler):
    """dnslib's socket handling (UDP, length-prefixed TCP) with dnspython building the reply."""

    def get_reply(self, data):
        resolver = self.server.resolver
        resolver.load()
        return resolver.zones.reply(data, None if self.protocol == "tcp" else 1232)


def start_servers(resolver, handler, address, port):
    """UDP and TCP servers on one port: `port`, or for 0 the port the UDP bind got, when TCP can
    bind it too (else both again, with another). Nothing is released and rebound in between."""
    for _ in range(50):
        udp = DNSServer(resolver, port=port, address=address, tcp=False, logger=QuietLogger(), handler=handler)
        bound = udp.server.server_address[1]
        try:
            tcp = DNSServer(resolver, port=bound, address=address, tcp=True, logger=QuietLogger(), handler=handler)
        except OSError as e:
            udp.server.server_close()
            if port or e.errno != errno.EADDRINUSE:
                raise
            continue
        return [udp, tcp], bound
    raise SystemExit("no port free for both UDP and TCP")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("zone")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dnssec", metavar="ANCHOR_FILE")
    args = p.parse_args()
    if args.dnssec:
        resolver, handler = SignedResolver(args.zone, args.dnssec), SignedHandler
    else:
        resolver, handler = ZoneResolver(args.zone), DNSHandler
    servers, port = start_servers(resolver, handler, args.address, args.port)
    for s in servers:
        s.start_thread()
    print(port, flush=True)
    while all(s.isAlive() for s in servers):
        time.sleep(0.5)
    sys.exit(1)


class QuietLogger:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


if __name__ == "__main__":
    main()
