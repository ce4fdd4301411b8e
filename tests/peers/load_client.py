"""Load client for the crash test (Python smtplib, a client we did not write).

Usage: load_client.py HOST PORT SENDER RCPT ACKED_FILE COUNT WORKER [PAUSE_SECONDS [DEADLINE_SECONDS]]
Sends COUNT messages, each with a unique Subject `load-<WORKER>-<n>`. After every 250 reply to
DATA it appends the subject to ACKED_FILE and flushes: that file is the client's own record of
what the relay acknowledged. Connection failures (the relay being killed) are retried until the
message is acknowledged or DEADLINE_SECONDS (default 60) pass. PAUSE_SECONDS (default 0) paces the
sender: it waits that long after each acknowledged message.
"""

import os
import smtplib
import sys
import time


def main():
    host, port, sender, rcpt, acked_path, count, worker = sys.argv[1:8]
    port, count = int(port), int(count)
    pause = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
    patience = float(sys.argv[9]) if len(sys.argv) > 9 else 60.0
    acked = open(acked_path, "a", buffering=1)
    conn = None
    for n in range(count):
        subject = "load-%s-%d" % (worker, n)
        body = ("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\n" % (sender, rcpt, subject)) + ("x" * 76 + "\r\n") * 20
        deadline = time.time() + patience
        while True:
            try:
                if conn is None:
                    conn = smtplib.SMTP(host, port, timeout=10)
                conn.sendmail(sender, [rcpt], body.encode())
                acked.write(subject + "\n")
                acked.flush()
                os.fsync(acked.fileno())
                break
            except (OSError, smtplib.SMTPException):
                # Not acknowledged: the relay owes us nothing for this one; try again.
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
                if time.time() > deadline:
                    print("gave up on %s" % subject, file=sys.stderr)
                    sys.exit(1)
                time.sleep(0.05)
        if pause:
            time.sleep(pause)
    if conn is not None:
        try:
            conn.quit()
        except Exception:
            pass


if __name__ == "__main__":
    main()
