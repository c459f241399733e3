"""docs/data.md's worked example ("Adding a data source in code") runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedshrink.data import SOURCES, make_splits

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def _example() -> str:
    section = DOC.read_text().split("## Adding a data source in code", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the section has no python example"
    return blocks[0]


def test_worked_example_registers_and_splits_a_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert "stripes" not in SOURCES
    try:
        exec(compile(_example(), str(DOC), "exec"), {"__name__": "docs_example"})
        assert "stripes" in SOURCES
        out = capsys.readouterr().out
        assert "stripes: " in out and "client 0 of 10 holds" in out
    finally:
        SOURCES.pop("stripes", None)
        make_splits.cache_clear()
