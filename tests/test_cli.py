"""The fedshrink command line: runs, and one-line errors for bad settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedshrink.cli import main


@pytest.mark.slow
def test_run_inprocess_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    rc = main(["run", "--num-clients", "3",
               "-c", f"num-server-rounds=2 local-epochs=1 distill=false output-dir='{out}'",
               "-c", "run-name=cli report=false checkpoint=false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "round   2/2" in text and "fedshrink run summary" in text and "fedshrink: completed, accuracy" in text
    assert str(out / "cli") in text
    assert json.loads((out / "cli" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    ("arg", "key"),
    [("num-server-rounds=0", "num-server-rounds"), ("dirichlet-alpha=-1", "dirichlet-alpha"),
     ("model=bert", "model"), ("foo=1", "foo")],
)
def test_bad_setting_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arg: str, key: str
) -> None:
    rc = main(["run", "-c", f"{arg} output-dir='{tmp_path / 'runs'}'"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and f"invalid setting {key}=" in err and "allowed" in err
    assert not (tmp_path / "runs").exists()


def test_too_many_clients(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--num-clients", "100000", "-c", f"output-dir='{tmp_path / 'runs'}'"])
    assert rc == 2 and "num-clients" in capsys.readouterr().err


def _rounds(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _reach(rounds: list[dict[str, Any]], target: float) -> tuple[int, int, int] | None:
    """(round, bytes up, bytes up + down) at the first round with accuracy >= target, from metrics.jsonl."""
    up = down = 0
    for r in rounds:
        up += r["bytes-up-received"]
        down += r["bytes-down"]
        if r["accuracy"] >= target:
            return r["round"], up, up + down
    return None


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\0", "|") for c in line.replace("\\|", "\0").strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FedAvg (every client trains the full model), a device mix, and FedAvg with a 4-bit uplink: tiny runs."""
    out = tmp_path_factory.mktemp("cli") / "runs"
    # the report is drawn only where a test reads it
    settings = {"fedavg": "profile-mix='' report=false", "mix": "profile-mix=phone:0.5,laptop:0.5",
                "q4": "profile-mix='' uplink-chain='q4|zlib' report=false"}
    for name, extra in settings.items():
        assert main(["run", "--num-clients", "4", "-c",
                     f"num-server-rounds=2 local-epochs=1 quiet=true distill=false checkpoint=false "
                     f"output-dir='{out}' run-name={name} {extra}"]) == 0
    return {name: out / name for name in settings}


@pytest.mark.slow
def test_report_command(three_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run, base = three_runs["mix"], three_runs["fedavg"]
    report = run / "report.md"
    assert report.is_file() and (run / "plots" / "accuracy_vs_round.png").is_file()  # built at the end of the run
    report.unlink()
    assert main(["report", str(run), "--targets", "0.2", "--baseline", str(base)]) == 0 and report.is_file()
    assert "accuracy_vs_bytes.png" in report.read_text()  # bytes are recorded, so the plot is drawn
    summary = json.loads((run / "summary.json").read_text())
    levels = {round(x["target"], 6): x for x in summary["targets"]["levels"]}
    base_final = json.loads((base / "summary.json").read_text())["accuracy"]
    assert set(levels) == {0.2, round(base_final - 0.01, 6)} and summary["targets"]["baseline"] == str(base)
    for level, entry in levels.items():
        mine, theirs = _reach(_rounds(run), level), _reach(_rounds(base), level)
        assert entry["reached"] is (mine is not None)
        if mine is not None:
            assert (entry["round"], entry["bytes-up"], entry["bytes-up-down"]) == mine
        if mine is not None and theirs is not None:
            assert entry["bytes-up-saving"] == pytest.approx(theirs[1] / mine[1])
    assert "target 0.2000 (given): " in capsys.readouterr().out
    assert main(["report", str(run), "--targets", "95"]) == 2
    assert "invalid setting --targets=95" in capsys.readouterr().err
    assert main(["report", str(run.parent / "nothing-here")]) == 2
    assert "run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_against_a_fedavg_baseline(three_runs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    base = three_runs["fedavg"]
    out = tmp_path / "cmp"
    assert main(["compare", str(three_runs["mix"]), str(three_runs["q4"]), "--baseline", str(base),
                 "--targets", "0.2", "--out", str(out)]) == 0
    assert "baseline fedavg; settings that differ: profile-mix, uplink-chain" in capsys.readouterr().out
    text = (out / "compare.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = _cells(lines[0])
    assert head[:4] == ["run", "dataset", "profile-mix", "uplink-chain"]
    rows = {c[0]: c for c in map(_cells, lines[2:5])}
    assert list(rows) == ["fedavg", "mix", "q4"]  # the baseline first
    assert rows["fedavg"][2:4] == ["''", "raw"] and rows["mix"][2:4] == ["phone:0.5,laptop:0.5", "raw"]
    assert rows["q4"][2:4] == ["''", "q4|zlib"] and rows["q4"][1] == "digits (10 classes, input 1x8x8)"
    data = json.loads((out / "compare.json").read_text())
    assert data["runs"]["mix"]["label"] == "profile-mix=phone:0.5,laptop:0.5, uplink-chain=raw"  # legend label
    base_rounds = _rounds(base)
    base_final = json.loads((base / "summary.json").read_text())["accuracy"]
    for name in ("fedavg", "mix", "q4"):
        levels = data["runs"][name]["targets"]["levels"]
        assert [x["target"] for x in levels] == pytest.approx(sorted([0.2, base_final - 0.01]))
        for entry in levels:
            mine, theirs = _reach(_rounds(three_runs[name]), entry["target"]), _reach(base_rounds, entry["target"])
            assert entry["reached"] is (mine is not None)
            if mine is None or theirs is None:
                assert entry["bytes-up-saving"] is None
                continue
            assert (entry["round"], entry["bytes-up"], entry["bytes-up-down"]) == mine
            assert (entry["baseline-round"], entry["baseline-bytes-up"]) == theirs[:2]
            assert entry["bytes-up-saving"] == pytest.approx(theirs[1] / mine[1])
            assert entry["bytes-up-down-saving"] == pytest.approx(theirs[2] / mine[2])
            section = text.split(f"### Target {entry['target']:.4f}")[1].split("###")[0]
            assert f"| {name} |" in section and f"{theirs[1] / mine[1]:.2f}x" in section
    q4 = data["runs"]["q4"]["targets"]["levels"][0]  # the 0.2 level: a 4-bit uplink needs fewer bytes up
    if q4["reached"] and q4["baseline-round"] == q4["round"]:
        assert q4["bytes-up-saving"] > 2
