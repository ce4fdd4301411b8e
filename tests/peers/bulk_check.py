"""Checks what an upstream received from bulk_send.py (dkimpy and the email package, which we did
not write).

Usage: bulk_check.py MAILDIR COUNT TXT_VALUE
Reads every *.eml in MAILDIR. For each, finds n from its Subject, checks that the body is
byte for byte the one bulk_send.py sent, counts its DKIM-Signature fields and verifies the first
with dkimpy (every TXT lookup answers TXT_VALUE). Prints one JSON object: total, distinct,
duplicates, missing (numbers below COUNT never received), bad_body, dkim_pass, dkim_fail,
max_signatures.
"""

import email
import email.policy
import glob
import json
import os
import sys

import dkim

sys.path.insert(0, os.path.dirname(__file__))
from bulk_send import body  # noqa: E402


def main():
    maildir, count, txt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seen = {}
    bad_body = dkim_pass = dkim_fail = max_sigs = 0

    def dnsfunc(name, timeout=5):
        return txt.encode()

    for path in sorted(glob.glob(os.path.join(maildir, "*.eml"))):
        with open(path, "rb") as f:
            raw = f.read()
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        subject = msg.get("Subject", "")
        n = int(subject.split("-", 1)[1]) if subject.startswith("bulk-") else -1
        seen[n] = seen.get(n, 0) + 1
        head, _, got = raw.partition(b"\r\n\r\n")
        if n < 0 or got != body(n).encode():
            bad_body += 1
        max_sigs = max(max_sigs, len(msg.get_all("DKIM-Signature") or []))
        if dkim.verify(raw, dnsfunc=dnsfunc):
            dkim_pass += 1
        else:
            dkim_fail += 1
    total = sum(seen.values())
    print(json.dumps({
        "total": total,
        "distinct": len([n for n in seen if n >= 0]),
        "duplicates": total - len(seen),
        "missing": len([n for n in range(count) if n not in seen]),
        "bad_body": bad_body,
        "dkim_pass": dkim_pass,
        "dkim_fail": dkim_fail,
        "max_signatures": max_sigs,
    }))


if __name__ == "__main__":
    main()
