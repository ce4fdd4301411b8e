#!/usr/bin/env python3
"""A slow SMTP sink that defers a share of recipients, for the retry benchmark.

smtp-sink's fault injection (-r) defers every instance of a command, not a share, so this sink
does what the benchmark needs: RCPT gets `450 4.2.0` with probability --defer (default 10 %), and
the reply to the end of DATA waits --delay-ms (a slow upstream). Recipients whose local part
starts with `probe` are never deferred: they time fresh mail through a relay that is busy
retrying. Prints `n <accepted messages>` as the count grows and `probe <seconds>` for each probe
message (arrival minus the `X-Probe-Sent:` time the probe put in it).

Usage: flaky_sink.py --port P [--defer 0.1] [--delay-ms 20]
"""

import argparse
import asyncio
import random
import sys
import time


class Stats:
    def __init__(self):
        self.accepted = 0
        self.reported = 0

    def report(self):
        if self.accepted != self.reported:
            self.reported = self.accepted
            print("n %d" % self.accepted, flush=True)


async def session(reader, writer, args, stats):
    try:
        await converse(reader, writer, args, stats)
    except ConnectionError:
        pass  # relays stopped mid-session at the end of a run


async def converse(reader, writer, args, stats):
    def reply(line):
        writer.write(line.encode() + b"\r\n")

    reply("220 flaky-sink ESMTP")
    rcpts, in_mail = 0, False
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            reply("250-flaky-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE 104857600")
        elif verb == b"MAIL":
            rcpts, in_mail = 0, True
            reply("250 2.1.0 Ok")
        elif verb == b"RCPT":
            probe = line[8:].lstrip(b" <").lower().startswith(b"probe")
            if not in_mail:
                reply("503 5.5.1 Error: need MAIL command")
            elif not probe and random.random() < args.defer:
                reply("450 4.2.0 Try again later (flaky-sink)")
            else:
                rcpts += 1
                reply("250 2.1.5 Ok")
        elif verb == b"DATA":
            if not rcpts:
                reply("554 5.5.1 Error: no valid recipients")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            await writer.drain()
            sent = None
            while True:
                body = await reader.readline()
                if not body or body == b".\r\n":
                    break
                if sent is None and body.startswith(b"X-Probe-Sent:"):
                    sent = float(body.split(b":", 1)[1])
            if not body:
                break
            if args.delay_ms:
                await writer.drain()
                await asyncio.sleep(args.delay_ms / 1000)
            stats.accepted += 1
            if sent is not None:
                print("probe %.6f" % (time.time() - sent), flush=True)
            reply("250 2.0.0 Ok: queued")
            in_mail = False
        elif verb == b"RSET":
            rcpts, in_mail = 0, False
            reply("250 2.0.0 Ok")
        elif verb == b"NOOP":
            reply("250 2.0.0 Ok")
        elif verb == b"QUIT":
            reply("221 2.0.0 Bye")
            break
        else:
            reply("502 5.5.2 Error: command not recognized")
        # Replies to pipelined commands go out together (RFC 2920 section 3.2).
        if not reader._buffer:  # noqa: SLF001 - asyncio exposes no public "more is buffered"
            await writer.drain()
    try:
        await writer.drain()
        writer.close()
    except ConnectionError:
        pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--defer", type=float, default=0.1)
    ap.add_argument("--delay-ms", type=float, default=20)
    args = ap.parse_args()
    stats = Stats()
    server = await asyncio.start_server(
        lambda r, w: session(r, w, args, stats), "127.0.0.1", args.port, limit=1 << 20, backlog=1024)

    async def reporter():
        while True:
            await asyncio.sleep(0.02)
            stats.report()

    asyncio.get_running_loop().create_task(reporter())
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
