"""notebooks/tradeoffs.ipynb executes (nbclient) on a tiny sweep made here and a complete synthetic run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedshrink.sweep import SweepSpec, run_sweep

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow  # a Jupyter kernel: a process of its own
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "tradeoffs.ipynb"


@pytest.fixture
def tiny_sweep(tmp_path: Path) -> Path:
    """Two configurations x two seeds of 2 rounds on 2 clients, made in this process (one worker)."""
    spec = SweepSpec.from_mapping({
        "name": "nb", "seeds": [1, 2], "num-clients": 2, "workers": 1, "targets": [0.2],
        "base": {"num-server-rounds": 2, "local-epochs": 1, "model": "mlp", "distill": False},
        "grid": {"learning-rate": [0.01, 0.05]},
    })
    return run_sweep(spec, tmp_path / "sweep", say=lambda _: None).path


def test_notebook_reads_the_sweep(tiny_sweep: Path, synthetic_run: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "nb-out"
    monkeypatch.setenv("FEDSHRINK_SWEEP", str(tiny_sweep))
    monkeypatch.setenv("FEDSHRINK_RUNS", str(synthetic_run))
    monkeypatch.setenv("FEDSHRINK_NOTEBOOK_OUT", str(out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    pngs = {p.name for p in out.glob("*.png")}
    assert {"final_accuracy.png", "accuracy_vs_round.png", "accuracy_vs_bytes.png",
            "learning-rate_0.01-client_costs.png", "synthetic-client_costs.png", "synthetic-pareto.png"} <= pngs
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "image/png" in o.get("data", {})]
    assert len(shown) >= 6
    table = next(o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "text/markdown" in o.get("data", {}))
    configs = json.loads((tiny_sweep / "summary.json").read_text())["configs"]
    first = configs[0]["accuracy"]
    assert f"| learning-rate=0.01 | 2/2 | {100 * first['mean']:.2f} ± {100 * first['sd']:.2f} |" in table
