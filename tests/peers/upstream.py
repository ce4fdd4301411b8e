"""Scripted upstream SMTP server for the sidecar's delivery tests (aiosmtpd, which we did not write).

Binds --address (127.0.0.1 by default; any 127.0.0.x works on Linux) and --port (0 by default) and prints the bound port on stdout, then serves until killed.
--reuse-port binds with SO_REUSEPORT: the test holds the port with a socket that never listens
(mailroom_test_support::ports::Reservation), so that it stays ours while no upstream runs.
Recipient behaviour by local part (a quoted one without its opening quote): temp-fail* -> 450 4.2.0, perm-fail* -> 550 5.1.1,
slow* -> sleeps --slow-seconds before 250. --hang-data N: the first N transactions get no reply
after the end of data (the upstream hangs mid-DATA and saves nothing); later ones are served. Each transaction is saved in --maildir as
<n>.eml (the bytes after dot-unstuffing) plus <n>.json (envelope, connection number, and the
MAIL and accepted RCPT command arguments exactly as they arrived: mail_raw, rcpt_raw);
--dsn advertises DSN (RFC 3461) and accepts its parameters (aiosmtpd itself refuses them);
--pipelining advertises PIPELINING (RFC 2920; aiosmtpd reads commands in order either way).
--offer-chunking advertises CHUNKING (RFC 3030) without implementing it: a BDAT gets aiosmtpd's
500, as from a server whose CHUNKING a client must not trust.
The JSON also says whether the transaction's DATA command had already arrived when its MAIL
was answered (pipelined) and how many RSETs the connection had seen (rsets).
--drop-second-mail closes a connection without a reply when a second MAIL arrives on it (a
server that gave up on an idle connection just as the client reused it).
<maildir>/connections holds the number of TCP connections accepted so far.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (a port the test holds)")
    p.add_argument("--tls", choices=["starttls", "implicit", "none"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--require-auth", metavar="USER:PASS")
    p.add_argument("--maildir", required=True)
    p.add_argument("--greeting-421", action="store_true", help="answer every connection with 421 and close")
    p.add_argument("--fail-data", type=int, help="reply code after DATA, e.g. 451 or 554")
    p.add_argument("--accept-all-recipients", action="store_true",
                   help="no temp-fail*/perm-fail*/slow* local-part rules (a backup that takes what the primary refused)")
    p.add_argument("--slow-seconds", type=float, default=5.0)
    p.add_argument("--hang-data", type=int, default=0, metavar="N", help="never answer the first N DATA")
    p.add_argument("--dsn", action="store_true", help="advertise DSN and accept RET, ENVID, NOTIFY, ORCPT")
    p.add_argument("--pipelining", action="store_true", help="advertise PIPELINING (RFC 2920)")
    p.add_argument("--offer-chunking", action="store_true", help="advertise CHUNKING, which aiosmtpd does not implement")
    p.add_argument("--drop-second-mail", action="store_true", help="close, unanswered, at a connection's second MAIL")
    return p.parse_args()


class State:
    def __init__(self, maildir):
        self.maildir = maildir
        self.connections = 0
        self.quits = 0
        self.transactions = 0
        self.hung = 0

    def connected(self):
        self.connections += 1
        write_atomic(os.path.join(self.maildir, "connections"), str(self.connections).encode())
        return self.connections

    def quit(self):
        self.quits += 1
        write_atomic(os.path.join(self.maildir, "quits"), str(self.quits).encode())


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Handler:
    def __init__(self, args, state):
        self.args = args
        self.state = state

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.args.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        if self.args.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        if self.args.offer_chunking:
            responses.insert(len(responses) - 1, "250-CHUNKING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lstrip('"').lower()
        if self.args.accept_all_recipients:
            local = ""
        if local.startswith("temp-fail"):
            return "450 4.2.0 <%s>: mailbox temporarily unavailable" % address
        if local.startswith("perm-fail"):
            return "550 5.1.1 <%s>: no such user" % address
        if local.startswith("slow"):
            await asyncio.sleep(self.args.slow_seconds)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.args.fail_data:
            code = self.args.fail_data
            enhanced = "4.3.0" if code < 500 else "5.3.0"
            return "%d %s transaction failed by request" % (code, enhanced)
        if self.state.hung < self.args.hang_data:
            # Took the data, never answers: the client's DATA timeout must fire (RFC 5321 4.5.3.2.6).
            self.state.hung += 1
            await asyncio.Event().wait()
        self.state.transactions += 1
        n = self.state.transactions
        base = os.path.join(self.args.maildir, "%04d" % n)
        write_atomic(base + ".eml", envelope.content)
        meta = {
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "connection": getattr(server, "connection_number", 0),
            "tls": session.ssl is not None or self.args.tls == "implicit",
            "authenticated": bool(session.authenticated),
            "mail_raw": getattr(envelope, "mail_raw", None),
            "rcpt_raw": getattr(envelope, "rcpt_raw", []),
            "pipelined": getattr(envelope, "pipelined", False),
            "rsets": getattr(server, "rsets", 0),
        }
        write_atomic(base + ".json", json.dumps(meta).encode())
        return "250 2.0.0 queued as %04d" % n

    async def auth_XOAUTH2(self, server, args):
        # RFC 7628-style token: base64("user=" user "\x01auth=Bearer " token "\x01\x01").
        import base64

        if len(args) < 2:
            return AuthResult(success=False, handled=False)
        raw = base64.b64decode(args[1])
        fields = dict(f.split("=", 1) for f in raw.decode().split("\x01") if "=" in f)
        token = fields.get("auth", "").removeprefix("Bearer ")
        user = fields.get("user", "")
        return authenticate(self.args, LoginPassword(user.encode(), token.encode()))


def authenticate(args, login_password):
    user, password = args.require_auth.split(":", 1)
    ok = login_password.login == user.encode() and login_password.password == password.encode()
    return AuthResult(success=ok, handled=False)


class CountingSMTP(SMTP):
    def __init__(self, state, *a, **kw):
        super().__init__(*a, **kw)
        self.state = state
        self.connection_number = 0
        self.rsets = 0
        self.mails = 0

    def without_dsn(self, arg, keywords):
        """The argument without the DSN parameters, which aiosmtpd would refuse with 555."""
        if not self.event_handler.args.dsn or arg is None or ">" not in arg:
            return arg
        end = arg.rindex(">") + 1
        kept = [p for p in arg[end:].split() if p.split("=", 1)[0].upper() not in keywords]
        return " ".join([arg[:end]] + kept)

    async def smtp_MAIL(self, arg):
        self.mails += 1
        if self.event_handler.args.drop_second_mail and self.mails == 2:
            self.transport.close()
            return
        # Read before answering: with pipelining the rest of the group is already buffered.
        pipelined = b"\r\nDATA\r\n" in b"\r\n" + bytes(self._reader._buffer)
        # aiosmtpd normalises the address it hands to the handler (quotes dropped where not
        # needed); the test needs the bytes the client sent.
        await super().smtp_MAIL(self.without_dsn(arg, ("RET", "ENVID")))
        if self.envelope.mail_from is not None and not hasattr(self.envelope, "mail_raw"):
            self.envelope.mail_raw = arg
            self.envelope.pipelined = pipelined

    async def smtp_QUIT(self, arg):
        self.state.quit()
        await super().smtp_QUIT(arg)

    async def smtp_RSET(self, arg):
        self.rsets += 1
        await super().smtp_RSET(arg)

    async def smtp_RCPT(self, arg):
        before = len(self.envelope.rcpt_tos)
        await super().smtp_RCPT(self.without_dsn(arg, ("NOTIFY", "ORCPT")))
        if len(self.envelope.rcpt_tos) > before:
            self.envelope.__dict__.setdefault("rcpt_raw", []).append(arg)

    def connection_made(self, transport):
        if self._original_transport is None:  # not the STARTTLS re-entry
            self.connection_number = self.state.connected()
        super().connection_made(transport)


def tls_context(args):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    return ctx


async def greeting_421(reader, writer):
    writer.write(b"421 4.3.2 service not available, closing transmission channel\r\n")
    await writer.drain()
    writer.close()


async def main():
    args = parse_args()
    os.makedirs(args.maildir, exist_ok=True)
    state = State(args.maildir)
    loop = asyncio.get_running_loop()
    if args.greeting_421:
        server = await asyncio.start_server(greeting_421, args.address, args.port, reuse_port=args.reuse_port)
    else:
        ctx = tls_context(args) if args.tls != "none" else None
        authenticator = None
        if args.require_auth:
            authenticator = lambda srv, sess, env, mech, data: authenticate(args, data)  # noqa: E731

        def factory():
            return CountingSMTP(
                state,
                Handler(args, state),
                hostname="upstream.test",
                enable_SMTPUTF8=True,
                tls_context=ctx if args.tls == "starttls" else None,
                require_starttls=args.tls == "starttls",
                authenticator=authenticator,
                auth_required=bool(args.require_auth),
                auth_require_tls=args.tls != "none",
                loop=loop,
            )

        server = await loop.create_server(
            factory,
            args.address,
            args.port,
            ssl=ctx if args.tls == "implicit" else None,
            reuse_port=args.reuse_port,
        )
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
