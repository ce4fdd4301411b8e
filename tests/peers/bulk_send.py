"""Sends numbered messages over one SMTP connection (Python smtplib, a client we did not write).

Usage: bulk_send.py HOST PORT COUNT SENDER RCPT [CONNECTIONS]
Message n has Subject `bulk-<n>` and a body that bulk_check.py can rebuild from n. With
CONNECTIONS > 1, that many connections send at once (message n on connection n % CONNECTIONS).
Prints the number of messages acknowledged with 250; exits 1 on the first refusal.
"""

import smtplib
import sys
import threading


def body(n):
    line = ("%06d " % n) + "abcdefghijklmnopqrstuvwxyz0123456789" * 2
    return "".join("%s-%03d\r\n" % (line, i) for i in range(24))


def message(n, sender, rcpt):
    return (
        "From: %s\r\nTo: %s\r\nSubject: bulk-%d\r\nMessage-ID: <bulk-%d@example.com>\r\n\r\n%s"
        % (sender, rcpt, n, n, body(n))
    ).encode()


def send(host, port, numbers, sender, rcpt, acked, errors):
    try:
        conn = smtplib.SMTP(host, int(port), timeout=30)
        for n in numbers:
            conn.sendmail(sender, [rcpt], message(n, sender, rcpt))
            acked.append(n)
        conn.quit()
    except Exception as e:  # reported by main, which exits 1
        errors.append(repr(e))


def main():
    host, port, count, sender, rcpt = sys.argv[1:6]
    connections = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    acked, errors = [], []
    threads = [
        threading.Thread(
            target=send,
            args=(host, port, range(i, int(count), connections), sender, rcpt, acked, errors),
        )
        for i in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print("refused after %d: %s" % (len(acked), errors[0]), file=sys.stderr)
        sys.exit(1)
    print(len(acked))


if __name__ == "__main__":
    main()
