"""Knocks on a hub's door the ways an intruder would (Python smtplib and ssl, which we did not
write).

Usage: hub_probe.py HOST PORT CA_FILE MODE [USER PASSWORD]
MODE is one of:
  plain      connect without TLS and send EHLO (the hub speaks TLS from the first byte)
  noauth     TLS, EHLO, then MAIL and RCPT and DATA without AUTH
  handoff    TLS, EHLO, then MAIL with an XHANDOFF parameter without AUTH
  login      TLS, AUTH PLAIN as USER/PASSWORD, then a whole message handed off (XHANDOFF)
  relay      TLS, AUTH PLAIN as USER/PASSWORD, then a whole message without XHANDOFF
Prints one JSON object: the replies (code and text) in order, or the error that ended the try.
"""

import json
import smtplib
import socket
import ssl
import sys

MESSAGE = b"From: app@example.com\r\nTo: rcpt@example.net\r\nSubject: probe\r\n\r\nprobe\r\n"


def main():
    host, port, ca, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    replies = []
    try:
        if mode == "plain":
            with socket.create_connection((host, port), timeout=10) as s:
                s.sendall(b"EHLO intruder\r\n")
                data = s.recv(4096)
                replies.append({"raw": data.decode("latin-1")})
            print(json.dumps({"replies": replies}))
            return
        context = ssl.create_default_context(cafile=ca)
        conn = smtplib.SMTP_SSL(host, port, context=context, timeout=10)
        replies.append(list(conn.ehlo("intruder")))
        if mode in ("login", "relay"):
            user, password = sys.argv[5], sys.argv[6]
            try:
                conn.login(user, password)
                replies.append([235, "logged in"])
            except smtplib.SMTPAuthenticationError as e:
                replies.append([e.smtp_code, e.smtp_error.decode()])
        options = ["XHANDOFF=probe.1,1700000000"] if mode in ("handoff", "login") else []
        code, text = conn.mail("app@example.com", options)
        replies.append([code, text.decode()])
        code, text = conn.rcpt("rcpt@example.net")
        replies.append([code, text.decode()])
        code, text = conn.data(MESSAGE)
        replies.append([code, text.decode()])
        conn.close()
    except (OSError, smtplib.SMTPException) as e:
        replies.append({"error": "%s: %s" % (type(e).__name__, e)})
    print(json.dumps({"replies": [r if isinstance(r, dict) else [r[0], r[1] if isinstance(r[1], str) else r[1].decode()] for r in replies]}))


if __name__ == "__main__":
    main()
