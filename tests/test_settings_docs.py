"""pyproject's run-config table and docs/settings.md are generated from the packages' declarations."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gen() -> object:
    spec = importlib.util.spec_from_file_location("gen_settings", ROOT / "scripts" / "gen_settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_settings"] = module
    spec.loader.exec_module(module)
    return module


def test_pyproject_and_settings_page_are_current() -> None:
    gen = _gen()
    stale = [str(p.relative_to(ROOT)) for p, text in gen.expected().items()  # type: ignore[attr-defined]
             if not p.exists() or p.read_text() != text]
    assert not stale, f"out of date (run python scripts/gen_settings.py): {stale}"


def test_the_page_lists_every_setting() -> None:
    from fedshrink.config import RunConfig

    page = (ROOT / "docs" / "settings.md").read_text()
    missing = [k for k in RunConfig().to_mapping() if f"| `{k}` |" not in page]
    assert not missing
