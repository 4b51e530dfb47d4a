"""Printing data as a table (kubectl/cilium style) or JSON (-o json)."""
from __future__ import annotations

import json
import sys


def table(rows: list[list[str]], headers: list[str], out=sys.stdout) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out.write("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def as_json(data, out=sys.stdout) -> None:
    json.dump(data, out, indent=2, sort_keys=True)
    out.write("\n")
