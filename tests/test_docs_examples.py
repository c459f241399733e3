"""Every worked example of docs/extending.md runs, as written, and does what the page says."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def examples() -> dict[str, str]:
    """``## heading`` -> the page's python code blocks under it, joined."""
    out: dict[str, str] = {}
    heading = ""
    for part in re.split(r"^(## .+)$", PAGE.read_text(), flags=re.M):
        if part.startswith("## "):
            heading = part[3:].strip()
            continue
        blocks = re.findall(r"```python\n(.*?)```", part, flags=re.S)
        if heading and blocks:
            out[heading] = "\n".join(blocks)
    return out


@pytest.fixture
def registries() -> Iterator[None]:
    """Registries as they were, afterwards: an example's registration must not leak into other tests."""
    from fedshrink.compression.codecs import REGISTRY
    from fedshrink.data.sources import SOURCES
    from fedshrink.fragments.policies import POLICIES
    from fedshrink.models.registry import MODELS
    from fedshrink.robust.defences import DEFENCES

    tables: list[dict[str, Any]] = [REGISTRY, SOURCES, POLICIES, MODELS, DEFENCES]  # type: ignore[list-item]
    saved = [dict(t) for t in tables]
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)


def test_the_page_has_an_example_for_every_extension_point() -> None:
    assert {"A codec", "A fragment policy", "A model", "A defence", "A data source"} <= set(examples())


@pytest.mark.slow
@pytest.mark.parametrize("heading", sorted(examples()))
def test_example_runs(heading: str, registries: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs write under ./runs
    module = types.ModuleType("docs_example")  # dataclasses look their module up in sys.modules
    monkeypatch.setitem(sys.modules, module.__name__, module)
    code = compile(examples()[heading], f"docs/extending.md ({heading})", "exec", dont_inherit=True)
    exec(code, module.__dict__)
    assert module.__dict__.get("checked") is True, "each example ends with checked = True after its own asserts"
