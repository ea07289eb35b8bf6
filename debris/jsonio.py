"""JSON output that is fast to write and still readable: one line per item.

``json.dump(indent=...)`` falls back to CPython's pure-Python encoder, several times slower
than the C one on a plan with thousands of items; this keeps the C encoder and puts each
element of a top-level list on its own line, so a plan file still reads (and diffs) by item.
"""

from __future__ import annotations

import json
from typing import TextIO

_encode = json.JSONEncoder(separators=(", ", ": ")).encode


def dump(data: dict, out: TextIO) -> None:
    out.write("{\n")
    last = len(data) - 1
    for n, (key, value) in enumerate(data.items()):
        out.write(f"  {_encode(key)}: ")
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.write("[\n")
            out.write(",\n".join("    " + _encode(v) for v in value))
            out.write("\n  ]")
        else:
            out.write(_encode(value))
        out.write(",\n" if n < last else "\n")
    out.write("}\n")
