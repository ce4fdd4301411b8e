#!/usr/bin/env python3
"""Generates the chart's derived files; `--check` fails when a committed one is stale.

  values.schema.json             from the `# --` and `# @schema` comments in values.yaml
  files/crds.yaml                copy of crds/crds.yaml (Helm reads only files inside the chart)
  files/rbac-rules.yaml          copy of operator/rbac/rules.yaml
  files/rbac-namespace-rules.yaml
                                 copy of operator/rbac/namespace-rules.yaml
  files/mutatingwebhookconfiguration.yaml
                                 copy of operator/webhook/mutatingwebhookconfiguration.yaml

Run from anywhere: `python3 charts/mailroom/hack/generate.py [--check]`. Standard library only, so
values.yaml is read line by line; the format it accepts is described in values.yaml's header:
every key has a `# --` comment; a key with a `# @schema {json}` line (written above the `# --`
line, where helm-docs does not read it) is a leaf whose schema is that JSON (its nested lines, if
any, are its default); a key without one is a strict nested object. Other `# @` lines are
helm-docs annotations and ignored here.
"""

import json
import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent
REPO = CHART.parent.parent
COPIES = {
    "files/crds.yaml": "crds/crds.yaml",
    "files/rbac-rules.yaml": "operator/rbac/rules.yaml",
    "files/rbac-namespace-rules.yaml": "operator/rbac/namespace-rules.yaml",
    "files/mutatingwebhookconfiguration.yaml": "operator/webhook/mutatingwebhookconfiguration.yaml",
}
KEY = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(?: +(.*))?$")


class ValuesError(Exception):
    pass


def schema_from_values(text):
    root = {"type": "object", "additionalProperties": False, "properties": {}}
    stack = [(-1, root)]  # (indent, object schema)
    doc, hint, skip_below = [], None, None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_below is not None and (not stripped or indent > skip_below):
            continue
        skip_below = None
        if not stripped:
            doc, hint = [], None
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith("@schema"):
                try:
                    hint = json.loads(body[len("@schema"):])
                except json.JSONDecodeError as e:
                    raise ValuesError(f"values.yaml:{n}: bad @schema JSON: {e}")
            elif body.startswith("--"):
                # A leading `(int)` is helm-docs' type for the README (a null default has none).
                doc = [re.sub(r"^\(\w+\)\s*", "", body[2:].strip())]
            elif body.startswith("@"):
                # helm-docs annotations (`@default -- ...`): for the chart README, not the schema.
                pass
            elif doc:
                doc.append(body)
            continue
        m = KEY.match(line)
        if not m:
            raise ValuesError(f"values.yaml:{n}: expected `key:` or `key: value`, got {line!r}")
        key, inline = m.group(2), (m.group(3) or "").strip()
        if not doc:
            raise ValuesError(f"values.yaml:{n}: {key} has no `# --` comment")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if key in parent["properties"]:
            raise ValuesError(f"values.yaml:{n}: duplicate key {key}")
        if hint is not None:
            node = dict(hint)
            node["description"] = " ".join(doc)
            parent["properties"][key] = node
            skip_below = indent
        elif inline:
            raise ValuesError(f"values.yaml:{n}: {key} has a value but no `# @schema` hint")
        else:
            node = {
                "type": "object",
                "description": " ".join(doc),
                "additionalProperties": False,
                "properties": {},
            }
            parent["properties"][key] = node
            stack.append((indent, node))
        doc, hint = [], None
    return root


def generated():
    schema = schema_from_values((CHART / "values.yaml").read_text())
    # What a parent chart passes to a dependency: Helm's `global` values, and the `enabled` flag a
    # `condition: mailroom.enabled` reads. Neither is in values.yaml, and the strict schema would
    # otherwise refuse them.
    schema["properties"]["global"] = {
        "type": "object",
        "description": "Values a parent chart shares with all its subcharts (Helm sets it). This chart reads `imageRegistry`; other keys are allowed and ignored.",
        "properties": {
            "imageRegistry": {
                "type": "string",
                "description": "Registry of every image of this chart, replacing each image's `registry` (e.g. a mirror).",
            },
        },
    }
    schema["properties"]["enabled"] = {
        "type": "boolean",
        "description": "Read by a parent chart's `condition: mailroom.enabled`; not by this chart.",
    }
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "title": "mailroom chart values", **schema}
    out = {"values.schema.json": json.dumps(schema, indent=2) + "\n"}
    for dst, src in COPIES.items():
        if (REPO / src).exists():
            out[dst] = (REPO / src).read_text()
    return out


def main():
    check = "--check" in sys.argv[1:]
    try:
        files = generated()
    except ValuesError as e:
        print(f"generate.py: {e}", file=sys.stderr)
        return 1
    stale = []
    for rel, text in files.items():
        path = CHART / rel
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote charts/mailroom/{rel}")
    if stale:
        print(
            "generate.py: stale: " + ", ".join(f"charts/mailroom/{s}" for s in stale)
            + "; run `python3 charts/mailroom/hack/generate.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
