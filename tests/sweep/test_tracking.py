"""TensorBoard and MLflow receive a run's metrics, client rows, settings and artefacts (read back by their readers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from fedshrink.errors import ConfigError
from fedshrink.report import RunDirectory
from fedshrink.report.tracking import MLRUNS_DIR, TENSORBOARD_DIR, client_scalars, parse_tracking, scalars
from fedshrink.runner import run_inprocess

TINY = {"num-server-rounds": 2, "local-epochs": 1, "distill": False, "model": "mlp", "quiet": True,
        "checkpoint": False}
INSTALL = "not installed (pip install 'fedshrink[tracking]')"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run sent to every tracker installed (the tests of one not installed skip: importorskip)."""
    names = [n for n in ("tensorboard", "mlflow") if importlib.util.find_spec(n) is not None]
    if not names:
        pytest.skip(f"tensorboard and mlflow {INSTALL}")
    out = tmp_path_factory.mktemp("tracked")
    return run_inprocess({**TINY, "output-dir": str(out), "run-name": "t", "tracking": "+".join(names)},
                         num_clients=3).run_dir


def test_values_parse() -> None:
    assert parse_tracking("") == () and parse_tracking("mlflow+tensorboard") == ("mlflow", "tensorboard")
    with pytest.raises(ConfigError, match=r"invalid setting tracking='mlflow\+mlflow'"):
        parse_tracking("mlflow+mlflow")
    assert scalars({"a": 1, "b": {"c": 2.5, "d": "x"}, "e": [1], "f": True, "g": float("nan")}) == \
        {"a": 1.0, "b/c": 2.5, "f": 1.0}
    assert client_scalars([{"round": 1, "partition-id": 3, "bytes-up": 10, "profile": "phone"}]) == \
        {"client/3/bytes-up": 10.0}


def test_tensorboard_reads_back_the_rounds(tracked: Path) -> None:
    events = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                 reason=f"tensorboard {INSTALL}")
    acc = events.EventAccumulator(str(tracked / TENSORBOARD_DIR))
    acc.Reload()
    rounds = RunDirectory(tracked).read_rounds()
    got = {e.step: e.value for e in acc.Scalars("accuracy")}
    assert got == pytest.approx({r["round"]: r["accuracy"] for r in rounds}, rel=1e-6)  # float32 in event files
    assert [e.value for e in acc.Scalars("bytes-up")] == [float(r["bytes-up"]) for r in rounds]
    assert {e.step for e in acc.Scalars("train/train-loss")} == {1, 2}
    clients = [t for t in acc.Tags()["scalars"] if t.startswith("client/")]
    assert {t.split("/")[1] for t in clients} == {"0", "1", "2"}
    assert "client/1/host-wall-s" in clients
    (settings,) = acc.Tensors("settings/text_summary")  # add_text: a string tensor
    assert "| num-server-rounds | 2 |" in settings.tensor_proto.string_val[0].decode()
    assert "report/text_summary" in acc.Tags()["tensors"]
    assert acc.Scalars("summary/accuracy")[0].value == pytest.approx(rounds[-1]["accuracy"], rel=1e-6)


def test_mlflow_reads_back_metrics_params_and_artefacts(tracked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracking = pytest.importorskip("mlflow.tracking", reason=f"mlflow {INSTALL}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = tracking.MlflowClient(tracking_uri=(tracked / MLRUNS_DIR).as_uri())
    exp = client.get_experiment_by_name("fedshrink")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    rounds = RunDirectory(tracked).read_rounds()
    history = sorted(client.get_metric_history(run.info.run_id, "accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(r["round"], r["accuracy"]) for r in rounds]
    assert len(client.get_metric_history(run.info.run_id, "client/2/bytes-up")) == 2
    config = json.loads((tracked / "config.json").read_text())
    assert run.data.params["num-server-rounds"] == "2" and run.data.params["model"] == "mlp"
    assert set(run.data.params) == set(config)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.json", "report.md", "plots"} <= names


def test_tracker_not_installed_fails_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "mlflow" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        run_inprocess({**TINY, "output-dir": str(out), "tracking": "mlflow"}, num_clients=2)
    assert "tracking='mlflow'" in str(err.value) and "pip install 'fedshrink[tracking]'" in str(err.value)
    assert not out.exists()  # failed before the run directory was made


def test_tracking_off_writes_nothing_extra(tmp_path: Path) -> None:
    run = run_inprocess({**TINY, "output-dir": str(tmp_path), "run-name": "plain"}, num_clients=2).run_dir
    assert not (run / TENSORBOARD_DIR).exists() and not (run / MLRUNS_DIR).exists()
