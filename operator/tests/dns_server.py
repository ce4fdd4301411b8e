"""A tiny authoritative DNS server for tests, built on dnspython (already in the test venv).

Usage: python dns_server.py ZONE_FILE
Serves TXT records over UDP and TCP on 127.0.0.1 (one ephemeral port for both) and prints the port
on stdout. ZONE_FILE is re-read on every query, one record per line:
    name. 300 IN TXT "string one" "string two"
so a test can add or remove records while the server runs. Unknown names get NXDOMAIN.
"""

import shlex
import socket
import socketserver
import sys
import threading

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

ZONE = sys.argv[1]


def records():
    out = {}
    try:
        with open(ZONE, encoding="ascii") as f:
            for line in f:
                parts = shlex.split(line)
                if len(parts) < 5 or parts[3] != "TXT":
                    continue
                name = parts[0].rstrip(".").lower() + "."
                rdata = " ".join('"' + s.replace('"', '\\"') + '"' for s in parts[4:])
                out.setdefault(name, []).append(rdata)
    except FileNotFoundError:
        pass
    return out


def answer(wire):
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= 0x0400  # AA
    question = query.question[0]
    name = question.name.to_text().lower()
    zone = records()
    if name not in zone:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype == dns.rdatatype.TXT:
        response.answer.append(dns.rrset.from_text_list(name, 300, "IN", "TXT", zone[name]))
    return response.to_wire()


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(answer(data), self.client_address)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        size = int.from_bytes(self.request.recv(2), "big")
        data = b""
        while len(data) < size:
            chunk = self.request.recv(size - len(data))
            if not chunk:
                return
            data += chunk
        wire = answer(data)
        self.request.sendall(len(wire).to_bytes(2, "big") + wire)


def main():
    udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
    port = udp.server_address[1]
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), Tcp)
    for server in (udp, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(port, flush=True)
    # Exit when the test closes our stdin (or dies).
    sys.stdin.read()


if __name__ == "__main__":
    main()
