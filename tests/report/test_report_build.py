"""report.md + PNGs from run directories: complete, degraded, real; compare; console."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from fedshrink.errors import ConfigError
from fedshrink.report.compare import compare_runs
from fedshrink.report.console import RunConsole, human_bytes
from fedshrink.report.plots import ParetoPoint, pareto_front
from fedshrink.report.report import build_report, load_run, run_totals

PNG = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"accuracy_vs_round", "accuracy_vs_bytes", "client_costs", "pareto", "accuracy_vs_device"}


def test_complete_run_has_every_plot_and_table(synthetic_run: Path) -> None:
    rep = build_report(synthetic_run)
    assert set(rep.plots) == ALL_PLOTS and not rep.skipped
    for png in rep.plots.values():
        assert png.read_bytes().startswith(PNG) and png.stat().st_size > 10_000
    text = rep.path.read_text()
    for name in ALL_PLOTS:
        assert f"](plots/{name}.png)" in text
    assert "| phone |" in text and "| laptop |" in text  # per-profile table
    assert "estimated:cpu-time x W/core" in text  # the energy is labelled as estimated
    assert "12,000 params" in text  # student size from the summary
    assert "**yes**" in text  # the chosen student
    assert "skipped" not in text
    totals = run_totals(load_run(synthetic_run))
    rounds = [json.loads(line) for line in (synthetic_run / "metrics.jsonl").read_text().splitlines()]
    assert totals["bytes-up"] == sum(r["bytes-up"] for r in rounds)
    assert totals["bytes-up-uncompressed"] > 3 * totals["bytes-up"]


def test_missing_files_and_keys_degrade_to_notes(synthetic_run: Path) -> None:
    (synthetic_run / "clients.csv").unlink()
    (synthetic_run / "pareto.json").unlink()
    (synthetic_run / "summary.json").unlink()
    lines = (synthetic_run / "metrics.jsonl").read_text().splitlines()
    stripped = []
    for line in lines:
        rec = json.loads(line)
        for key in ("bytes-up", "bytes-down", "bytes-up-uncompressed", "energy-j", "device-time-s"):
            rec.pop(key)
        stripped.append(json.dumps(rec))
    (synthetic_run / "metrics.jsonl").write_text("\n".join(stripped) + "\n")
    rep = build_report(synthetic_run)
    assert set(rep.plots) == {"accuracy_vs_round"}
    assert "bytes-up" in rep.skipped["accuracy_vs_bytes"]
    assert "clients.csv" in rep.skipped["client_costs"] and "pareto.json" in rep.skipped["pareto"]
    text = rep.path.read_text()
    assert text.count("*Plot skipped:") == 3 and "summary.json is absent" in text


def test_no_metrics_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.jsonl"):
        build_report(tmp_path)


@pytest.mark.slow
def test_real_run_report(real_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(real_run, run)
    rep = build_report(run)
    assert "accuracy_vs_round" in rep.plots
    assert rep.path.read_text().startswith("# fedshrink run `copy`")
    assert "| server step | 2 x the combined update (server-lr; 1 = FedAvg) |" in rep.path.read_text()  # the mix
    # today's runs lack the resource keys; whatever is absent is skipped with a reason
    for name, reason in rep.skipped.items():
        assert name in ALL_PLOTS and reason


@pytest.mark.slow
def test_compare(synthetic_run: Path, real_run: Path, tmp_path: Path) -> None:
    cmp = compare_runs([synthetic_run, real_run], tmp_path / "cmp")
    text = cmp.path.read_text()
    assert "| synthetic |" in text and "| real |" in text
    assert set(cmp.plots) == {"compare_accuracy_vs_round", "compare_accuracy_vs_bytes"}
    with pytest.raises(ConfigError):
        compare_runs([], tmp_path)


def test_console_progress_and_summary(synthetic_run: Path) -> None:
    buf = io.StringIO()
    con = RunConsole(console=Console(file=buf, width=120, force_terminal=False))
    run = load_run(synthetic_run)
    con.start(len(run.rounds), title="synthetic")
    for rec in run.rounds:
        con.round(rec)
    con.finish(run.summary)
    out = buf.getvalue()
    assert "fedshrink run summary" in out and "12,000 params" in out
    assert human_bytes(sum(r["bytes-up"] for r in run.rounds)) in out
    assert "estimated" in out
    quiet_buf = io.StringIO()
    quiet = RunConsole(quiet=True, console=Console(file=quiet_buf))
    quiet.start(3)
    quiet.round(run.rounds[0])
    quiet.finish(run.summary)
    assert quiet_buf.getvalue() == ""
    assert quiet.bytes_up == run.rounds[0]["bytes-up"]  # still keeps count


def test_human_bytes() -> None:
    assert human_bytes(999) == "999 B" and human_bytes(1234567) == "1.23 MB" and human_bytes(None) == "n/a"


points = st.lists(st.builds(ParetoPoint, params=st.integers(0, 10**6), score=st.floats(0, 1)),
                  min_size=1, max_size=30)


@given(points)
def test_pareto_front_is_exactly_the_non_dominated_set(pts: list[ParetoPoint]) -> None:
    front = pareto_front(pts)

    def dominated(p: ParetoPoint) -> bool:
        assert p.score is not None
        return any(q.params <= p.params and (q.score or 0) >= p.score
                   and (q.params < p.params or (q.score or 0) > p.score) for q in pts)

    assert all(not dominated(p) for p in front)
    keys = {(p.params, p.score) for p in front}
    assert all(dominated(p) or (p.params, p.score) in keys for p in pts)
    assert [p.params for p in front] == sorted(p.params for p in front)
