"""An MTA-STS policy host for the sidecar's tests: Python's http.server over TLS (ssl module).

Usage: policy_server.py --address 127.0.0.4 --cert chain.pem --key key.pem --dir DIR
Serves DIR/<Host header>.txt at /.well-known/mta-sts.txt (RFC 8461 3.3), 404 for anything else,
and prints the port it bound once listening. Files are read on every request, so a test can
change a policy while the server runs.
"""

import argparse
import http.server
import os
import ssl
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--dir", required=True)
    args = p.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            path = os.path.join(args.dir, f"{host}.txt")
            if self.path != "/.well-known/mta-sts.txt" or "/" in host or not os.path.exists(path):
                self.send_error(404)
                return
            with open(path, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *a):
            sys.stderr.write(f"{self.address_string()} {fmt % a}\n")

    server = http.server.ThreadingHTTPServer((args.address, args.port), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
