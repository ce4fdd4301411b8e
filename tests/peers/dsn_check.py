"""Parses a DSN with Python's email package (which we did not write) and prints a JSON summary.

Usage: dsn_check.py FILE
Summary: top-level content type and report-type, the part types, the headers of interest, the
per-message and per-recipient delivery-status fields (RFC 3464), and any parser defects.
"""

import email
import email.policy
import json
import sys


def main():
    with open(sys.argv[1], "rb") as f:
        msg = email.message_from_bytes(f.read(), policy=email.policy.default)
    parts = list(msg.iter_parts())
    status_blocks = []
    for part in parts:
        if part.get_content_type() == "message/delivery-status":
            status_blocks = [dict(block.items()) for block in part.get_payload()]
    defects = [type(d).__name__ for p in msg.walk() for d in p.defects]
    print(json.dumps({
        "content_type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "parts": [p.get_content_type() for p in parts],
        "from": str(msg["From"]),
        "to": str(msg["To"]),
        "auto_submitted": str(msg["Auto-Submitted"]),
        "status_blocks": status_blocks,
        "defects": defects,
    }))


if __name__ == "__main__":
    main()
