"""Shared fixtures. Tiny, fast settings; every run writes under a tmp directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import shrink_distillation

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# The test models are tiny: one intra-op thread is fastest, and several threads
# oversubscribe a 2-core machine badly (measured: 6 s vs 157 s for one test under load).
torch.set_num_threads(1)


@pytest.fixture
def quick(tmp_path: Path) -> dict[str, Any]:
    """Run settings for a short run writing into ``tmp_path/runs``."""
    return {
        "num-server-rounds": 3,
        "local-epochs": 1,
        "output-dir": str(tmp_path / "runs"),
        "quiet": True,
        "distill": False,  # distillation has its own tests (tests/distill, test_distill_in_run)
        "device-availability": False,  # every sampled client takes part (tests about availability turn it on)
        "profile-mix": "",  # full-width clients (tests about fragments set a mix)
        "report": False,  # drawing the report's plots takes longer than the run; tests about the report turn it on
        "checkpoint": False,  # checkpoints have their own tests (tests/robust/test_robust_checkpoint.py)
        # a mix's final fusion (50 Adam steps, seconds a run) has its own tests, which turn it on
        # (tests/fragments/test_fusion.py, tests/test_inprocess.py)
        "fusion-steps": 0,
    }



@pytest.fixture
def small_distill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server-side distillation at test size in this process's runs (:func:`helpers.shrink_distillation`)."""
    shrink_distillation(monkeypatch)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which the dev extra installs
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadfile`` (``make test``) each file is one work unit, except that the end-to-end files
    (``tests/*_e2e.py``: Flower's CLI, Ray, a deployment, processes of their own) are one unit together: one
    worker runs them one after the other while the other runs the rest. Side by side on the two workers they
    slowed each other (the TLS deployment test: 98 s alone here, 180 s beside the Ray run), and nothing else
    ran meanwhile."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class EndToEndTogether(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = str(super()._split_scope(nodeid))
            return "end-to-end files" if path.endswith("_e2e.py") else path

    return EndToEndTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with end-to-end or slow tests first, each file kept whole: the long ones start first and the short
    ones fill in, so the two workers finish together."""
    rank: dict[str, int] = {}
    for item in items:
        r = 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2
        rank[item.nodeid.split("::")[0]] = min(r, rank.get(item.nodeid.split("::")[0], 2))
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda it: (rank[it.nodeid.split("::")[0]], order[id(it)]))
