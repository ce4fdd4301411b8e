"""Strict check of a JSON-lines log (Python's json module, which we did not write).

Usage: json_lines.py FILE
Every non-empty line must be one JSON object, and no object at any depth may repeat a key (log
pipelines keep only one of two equal keys, so a repeated key is a lost field). Prints one JSON
summary: {"lines": n, "events": [{"level", "message", "keys"}...], "bad": [{"line", "error", "text"}...]}.
"""

import json
import sys


def no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError("duplicate key %r" % key)
        seen[key] = value
    return seen


def main():
    lines, events, bad = 0, [], []
    with open(sys.argv[1], encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            text = text.rstrip("\n")
            if not text.strip():
                continue
            lines += 1
            try:
                obj = json.loads(text, object_pairs_hook=no_duplicates)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                bad.append({"line": n, "error": str(e), "text": text[:300]})
                continue
            fields = obj.get("fields", {})
            events.append({"level": obj.get("level"), "message": fields.get("message"), "keys": sorted(fields)})
    json.dump({"lines": lines, "events": events, "bad": bad}, sys.stdout)


if __name__ == "__main__":
    main()
