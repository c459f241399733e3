#!/usr/bin/env python
"""Regenerate the settings that are written down twice: pyproject's table and docs/settings.md.

Usage: ``python scripts/gen_settings.py [--check]``

Both are rendered from the packages' own declarations
(:func:`fedshrink.config.render_toml`, :func:`fedshrink.config.render_markdown`).
``--check`` writes nothing and exits 1 when either file differs (the test
``tests/test_settings_docs.py`` does the same).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
SETTINGS_MD = ROOT / "docs" / "settings.md"
TABLE = "[tool.flwr.app.config]\n"


def pyproject_text(current: str, body: str) -> str:
    """``current`` with the body of ``[tool.flwr.app.config]`` (up to the next table) replaced by ``body``."""
    start = current.index(TABLE) + len(TABLE)
    nxt = re.search(r"^\[", current[start:], flags=re.M)
    end = start + nxt.start() if nxt else len(current)
    return current[:start] + body + "\n" + current[end:]


def expected() -> dict[Path, str]:
    sys.path.insert(0, str(ROOT))
    from fedshrink.config import render_markdown, render_toml

    return {PYPROJECT: pyproject_text(PYPROJECT.read_text(), render_toml()), SETTINGS_MD: render_markdown()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a file is out of date; write nothing")
    args = ap.parse_args(argv)
    stale = []
    for path, text in expected().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
