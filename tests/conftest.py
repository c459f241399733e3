"""Shared fixtures. Tiny, fast settings; every run writes under a tmp directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def quick(tmp_path: Path) -> dict[str, Any]:
    """Run settings for a short run writing into ``tmp_path/runs``."""
    return {
        "num-server-rounds": 3,
        "local-epochs": 1,
        "output-dir": str(tmp_path / "runs"),
        "quiet": True,
    }
