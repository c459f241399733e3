#!/usr/bin/env python
"""List fedshrink's longest functions (lines from ``def`` to the last line of the body).

Usage: ``python scripts/longest_functions.py [--top N]``
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def functions(root: Path) -> list[tuple[int, str]]:
    out = []
    for path in sorted((root / "fedshrink").rglob("*.py")):
        if "v1" in path.parts:  # generated protobuf code
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                out.append((node.end_lineno - start + 1, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    for lines, where in functions(ROOT)[: args.top]:
        print(f"{lines:4d}  {where}")


if __name__ == "__main__":
    main()
