"""notebooks/tradeoffs.ipynb executes (nbclient) on a real in-process run and a complete synthetic one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow  # a Jupyter kernel: a process of its own
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "tradeoffs.ipynb"


def test_notebook_reproduces_the_plots(real_run: Path, synthetic_run: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "nb-out"
    monkeypatch.setenv("FEDSHRINK_RUNS", os.pathsep.join([str(real_run), str(synthetic_run)]))
    monkeypatch.setenv("FEDSHRINK_NOTEBOOK_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    pngs = {p.name for p in out.glob("*.png")}
    assert {"accuracy_vs_round.png", "accuracy_vs_bytes.png", "synthetic-client_costs.png",
            "synthetic-pareto.png"} <= pngs
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "image/png" in o.get("data", {})]
    assert len(shown) >= 4
