"""Independent DKIM verifier that looks keys up in real DNS (dkimpy + dnspython, which we did not write).

Usage: dkim_verify_dns.py MESSAGE_FILE DNS_PORT [DNS_HOST]
Verifies the first DKIM-Signature of MESSAGE_FILE; the key record is queried from the DNS server on
DNS_HOST:DNS_PORT (default host 127.0.0.1; tests/peers/dnsserver.py serving what the MailDomain
says to publish).
Prints "d=<domain> s=<selector>" and exits 0 when the signature verifies; prints the reason and
exits 1 otherwise.
"""

import logging
import re
import sys

import dkim
import dns.resolver


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    with open(path, "rb") as f:
        message = f.read()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        answer = resolver.resolve(name, "TXT", lifetime=timeout)
        return b"".join(b"".join(rr.strings) for rr in answer)

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    ok = dkim.verify(message, logger=logging.getLogger("dkim"), dnsfunc=dnsfunc)
    header = re.search(rb"^DKIM-Signature:(.*?)\r?\n(?![ \t])", message, re.S | re.M | re.I)
    # RFC 6376 3.2: tag=value pairs separated by ";", folding whitespace allowed around them.
    pairs = (t.split("=", 1) for t in header.group(1).decode().split(";") if "=" in t) if header else []
    tags = {k.strip(): re.sub(r"\s+", "", v) for k, v in pairs}
    if not ok:
        print("fail: %s" % tags)
        sys.exit(1)
    print("d=%s s=%s" % (tags.get("d"), tags.get("s")))


if __name__ == "__main__":
    main()
