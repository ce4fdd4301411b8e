"""Sends numbered messages over one SMTP connection (Python smtplib, a client we did not write).

Usage: bulk_send.py HOST PORT COUNT SENDER RCPT
Message n has Subject `bulk-<n>` and a body that bulk_check.py can rebuild from n. Prints the
number of messages acknowledged with 250; exits 1 on the first refusal.
"""

import smtplib
import sys


def body(n):
    line = ("%06d " % n) + "abcdefghijklmnopqrstuvwxyz0123456789" * 2
    return "".join("%s-%03d\r\n" % (line, i) for i in range(24))


def message(n, sender, rcpt):
    return (
        "From: %s\r\nTo: %s\r\nSubject: bulk-%d\r\nMessage-ID: <bulk-%d@example.com>\r\n\r\n%s"
        % (sender, rcpt, n, n, body(n))
    ).encode()


def main():
    host, port, count, sender, rcpt = sys.argv[1:6]
    conn = smtplib.SMTP(host, int(port), timeout=30)
    acked = 0
    for n in range(int(count)):
        conn.sendmail(sender, [rcpt], message(n, sender, rcpt))
        acked += 1
    conn.quit()
    print(acked)


if __name__ == "__main__":
    main()
