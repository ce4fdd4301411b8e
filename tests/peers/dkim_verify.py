"""Independent DKIM verifier for the sidecar's tests (dkimpy, which we did not write).

Usage: dkim_verify.py MESSAGE_FILE TXT_VALUE
Verifies the first DKIM-Signature of MESSAGE_FILE. DNS is not used: every TXT lookup answers
TXT_VALUE (e.g. "v=DKIM1; k=rsa; p=MIIB..."), and the queried names are printed on stderr.
Exits 0 when the signature verifies, 1 otherwise.
"""

import logging
import sys

import dkim


def main():
    path, txt = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        message = f.read()
    queried = []

    def dnsfunc(name, timeout=5):
        queried.append(name.decode() if isinstance(name, bytes) else name)
        return txt.encode()

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    ok = dkim.verify(message, logger=logging.getLogger("dkim"), dnsfunc=dnsfunc)
    print("queried: %s" % ", ".join(queried), file=sys.stderr)
    print("pass" if ok else "fail")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
