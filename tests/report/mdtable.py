"""Reading back the markdown tables the report writes (cells split on unescaped ``|``)."""

from __future__ import annotations

import re


def cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|").replace("\\|", "\0"))
    return [p.strip().replace("\0", "|") for p in parts]


def row(text: str, first: str) -> list[str]:
    """The cells of the first markdown table row whose first cell is ``first``."""
    for line in text.splitlines():
        if line.startswith("|") and cells(line)[0] == first:
            return cells(line)
    raise AssertionError(f"no row {first!r} in:\n{text}")


def table_after(text: str, heading: str) -> list[dict[str, str]]:
    """The first table after the line ``heading``, as dicts by column."""
    lines = text.splitlines()
    start = lines.index(heading)
    body = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            body.append(line)
        elif body:
            break
    cols = cells(body[0])
    return [dict(zip(cols, cells(line), strict=True)) for line in body[2:]]
