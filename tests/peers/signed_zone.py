"""DNSSEC for dnsserver.py --dnssec: the zone file becomes a signed root zone (dnspython signs it).

The key (ECDSAP256SHA256, RFC 6605) is generated when the server starts and never written
anywhere but as a public DNSKEY trust anchor, so no private key lives in the repository. A
private root is the honest design for a loopback server: the resolver under test validates every
answer up to this root key exactly as it would up to the IANA root (RFC 4035 5).

Zone file directives (comment lines, so the file stays master-file syntax):
  ; SERVFAIL <name>   every query for <name> fails with SERVFAIL
  ; INSECURE <name>   <name> and everything below it is an unsigned zone, delegated from the
                      root with an NSEC proof that it has no DS (RFC 4035 5.2: insecure)
  ; BOGUS <name>      the signatures of the RRsets at <name> are corrupted (RFC 4035 5.5: bogus)

Answers follow RFC 4035 3.1: RRSIGs with each signed RRset, and for NODATA and NXDOMAIN the SOA
with the NSEC records that prove the denial (3.1.3). Every response carries them, DO bit or not.
"""

import base64
import time

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = dns.name.root
IN = dns.rdataclass.IN
# One second, so that a resolver's cache never hides a change a test publishes (RFC 2308 5: the
# SOA minimum bounds negative caching too).
TTL = 1
SOA = "ns.invalid. hostmaster.invalid. 1 3600 600 86400 1"


class SignedZones:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.dnskey = dns.dnssec.make_dnskey(
            self.key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257
        )
        self.root = None
        self.children = {}
        self.servfail = set()

    def anchor(self):
        """The trust anchor line for the resolver (hickory reads DNSKEY records)."""
        key = base64.b64encode(self.dnskey.key).decode()
        return f". {TTL} IN DNSKEY {self.dnskey.flags} {self.dnskey.protocol} {self.dnskey.algorithm} {key}\n"

    def load(self, text):
        directives = {}
        for line in text.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == ";":
                directives.setdefault(words[1], set()).add(dns.name.from_text(words[2]))
        self.servfail = directives.get("SERVFAIL", set())
        insecure = directives.get("INSECURE", set())
        bogus = directives.get("BOGUS", set())

        parsed = dns.zone.from_text(text, origin=ROOT, relativize=False, check_origin=False)
        root = dns.zone.Zone(ROOT, relativize=False)
        children = {cut: dns.zone.Zone(cut, relativize=False) for cut in insecure}
        for zone in [root, *children.values()]:
            with zone.writer() as txn:
                txn.add(zone.origin, TTL, dns.rdata.from_text(IN, dns.rdatatype.SOA, SOA))
                txn.add(zone.origin, TTL, dns.rdata.from_text(IN, dns.rdatatype.NS, "ns.invalid."))
        with root.writer() as txn:
            for cut in insecure:
                # The delegation: NS without DS, so the signed NSEC at the cut proves it insecure.
                txn.add(cut, TTL, dns.rdata.from_text(IN, dns.rdatatype.NS, "ns.invalid."))
        for name, ttl, rdata in parsed.iterate_rdatas():
            cut = next((c for c in insecure if name.is_subdomain(c)), None)
            target = children[cut] if cut else root
            with target.writer() as txn:
                txn.add(name, ttl, rdata)

        now = int(time.time())
        # Inception an hour back tolerates clock skew between the test and the resolver.
        dns.dnssec.sign_zone(
            root,
            keys=[(self.key, self.dnskey)],
            dnskey_ttl=TTL,
            inception=now - 3600,
            expiration=now + 86400,
        )
        if bogus:
            with root.writer() as txn:
                for name in bogus:
                    for rdataset in list(txn.get_node(name) or []):
                        if rdataset.rdtype != dns.rdatatype.RRSIG:
                            continue
                        broken = [
                            rd.replace(signature=bytes([rd.signature[0] ^ 0xFF]) + rd.signature[1:])
                            for rd in rdataset
                        ]
                        txn.replace(name, dns.rrset.from_rdata_list(name, rdataset.ttl, broken))
        self.root, self.children = root, children

    def reply(self, wire, max_udp):
        """The response to one query, as wire bytes (`max_udp` None: TCP)."""
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if qname in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            cut = next((c for c in self.children if qname.is_subdomain(c)), None)
            # The DS of a cut is the parent's data (RFC 4035 3.1.4.1).
            if cut is not None and not (qtype == dns.rdatatype.DS and qname == cut):
                answer(self.children[cut], response, qname, qtype, signed=False)
            else:
                answer(self.root, response, qname, qtype, signed=True)
        try:
            return response.to_wire(max_size=max_udp or 65535)
        except dns.exception.TooBig:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            return response.to_wire()


def rrset(zone, name, rdtype, covers=dns.rdatatype.NONE):
    node = zone.get_node(name)
    rdataset = node and node.get_rdataset(IN, rdtype, covers)
    if not rdataset:
        return None
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


def add_signed(section, zone, name, rdtype, signed):
    found = rrset(zone, name, rdtype)
    if found is None:
        return False
    section.append(found)
    sig = signed and rrset(zone, name, dns.rdatatype.RRSIG, rdtype)
    if sig:
        section.append(sig)
    return True


def covering(zone, name):
    """The NSEC owner that covers `name`: the last owner before it in canonical order (wrapping)."""
    owners = sorted(n for n, node in zone.items() if node.get_rdataset(IN, dns.rdatatype.NSEC))
    before = [o for o in owners if o < name]
    return before[-1] if before else owners[-1]


def answer(zone, response, qname, qtype, signed):
    node = zone.get_node(qname)
    if node is not None and qtype != dns.rdatatype.RRSIG:
        if add_signed(response.answer, zone, qname, qtype, signed):
            return
        # NODATA (RFC 4035 3.1.3.1): the NSEC at the name shows the type is absent.
        add_signed(response.authority, zone, zone.origin, dns.rdatatype.SOA, signed)
        if signed:
            add_signed(response.authority, zone, qname, dns.rdatatype.NSEC, signed)
        return
    names = [n for n, _ in zone.items()]
    add_signed(response.authority, zone, zone.origin, dns.rdatatype.SOA, signed)
    if any(n.is_subdomain(qname) and n != qname for n in names):
        # Empty non-terminal: NODATA, proven by the NSEC that covers it (RFC 4035 3.1.3.2).
        if signed:
            add_signed(response.authority, zone, covering(zone, qname), dns.rdatatype.NSEC, signed)
        return
    response.set_rcode(dns.rcode.NXDOMAIN)
    if not signed:
        return
    # NXDOMAIN (RFC 4035 3.1.3.2): one NSEC covers the name, one the wildcard at its closest
    # encloser.
    encloser = qname.parent()
    while encloser != ROOT and not any(n.is_subdomain(encloser) for n in names):
        encloser = encloser.parent()
    for owner in {covering(zone, qname), covering(zone, dns.name.from_text("*", encloser))}:
        add_signed(response.authority, zone, owner, dns.rdatatype.NSEC, signed)
