"""The report's figures say what they measure: distillation and fusion time, uplink references, the student
search's columns, the data set's name."""

from __future__ import annotations

import json
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mdtable import row

from fedshrink.report.compare import compare_runs
from fedshrink.report.console import human_bytes
from fedshrink.report.costs import server_time, uplink_references
from fedshrink.report.pareto import read_pareto
from fedshrink.report.report import build_report
from fedshrink.report.rundata import load_run


def header(text: str, first: str) -> list[str]:
    return row(text, first)


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_distillation_time_is_the_summarys(synthetic_run: Path) -> None:
    text = build_report(synthetic_run, draw=False).path.read_text()
    summary = json.loads((synthetic_run / "summary.json").read_text())
    assert row(text, "distillation at the end of the run")[1] == f"{summary['distillation-seconds']:.3f}"
    assert "distillation during the run" not in text  # no periodic distillation in this run
    recs = metrics(synthetic_run)
    recs[1]["distillation-s"] = 3.5  # a periodic distillation after round 2
    (synthetic_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = build_report(synthetic_run, draw=False).path.read_text()
    assert row(text, "distillation during the run")[1] == "3.500"
    assert row(text, "distillation in all")[1] == f"{summary['distillation-seconds'] + 3.5:.3f}"


@pytest.mark.slow
def test_distillation_time_of_a_real_run(distilled_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(distilled_run, run)
    text = build_report(run, draw=False).path.read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["distillation-seconds"] > 0
    assert row(text, "distillation at the end of the run")[1] == f"{summary['distillation-seconds']:.3f}"


def test_uplink_against_both_fp32_references(synthetic_run: Path) -> None:
    text = build_report(synthetic_run, draw=False).path.read_text()
    recs = metrics(synthetic_run)
    summary = json.loads((synthetic_run / "summary.json").read_text())
    sent = sum(r["bytes-up"] for r in recs)
    same = sum(r["bytes-up-uncompressed"] for r in recs)
    replies = sum(r["clients-good"] for r in recs)
    full = replies * 4 * summary["model-parameters"]
    refs = uplink_references(recs, summary)
    assert (refs.bytes_up, refs.same_fragments_fp32, refs.full_model_fp32) == (sent, same, full)
    assert same < full  # phones send half-width fragments, so the two references differ
    assert row(text, "bytes up (sent)")[1] == human_bytes(sent)
    assert row(text, "uplink against the same fragments in fp32")[1] == \
        f"{human_bytes(same)} ({same / sent:.2f}x what was sent)"
    assert row(text, "uplink against the full model in fp32")[1] == \
        f"{human_bytes(full)} ({full / sent:.2f}x what was sent): {replies:,} replies x 4 B x 110,000 parameters"
    assert "full-size" not in text


@pytest.mark.slow
def test_fusion_time_is_reported_apart_from_aggregation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fusion is made to look 1000 s long on the strategy's clock: aggregation-s must not contain it."""
    import time

    from fedshrink.fragments.fusion import Fusion
    from fedshrink.runner import run_inprocess
    from fedshrink.strategy import rounds

    skew = [0.0]
    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.perf_counter = lambda: time.perf_counter() + skew[0]
    monkeypatch.setattr(rounds, "time", clock)
    refine = Fusion.refine

    def slow_refine(self: Fusion, *args: Any, **kwargs: Any) -> Any:
        out = refine(self, *args, **kwargs)
        skew[0] += 1000.0
        return out

    monkeypatch.setattr(Fusion, "refine", slow_refine)
    result = run_inprocess({"num-server-rounds": 2, "local-epochs": 1, "quiet": True, "distill": False,
                            "report": False, "checkpoint": False, "fusion-steps": 5,
                            "profile-mix": "phone:0.5,laptop:0.5", "device-availability": False,
                            "output-dir": str(tmp_path)}, num_clients=4)
    recs = metrics(result.run_dir)
    assert all(r["fusion-seconds"] >= 1000 and r["aggregation-s"] < 1000 for r in recs)
    t = server_time(recs, result.summary)
    assert t.refiners_s == {"fusion": pytest.approx(sum(r["fusion-seconds"] for r in recs))}
    text = build_report(result.run_dir, draw=False).path.read_text()
    assert row(text, "fusion")[1] == f"{sum(r['fusion-seconds'] for r in recs):.3f}"
    assert row(text, "aggregation")[1] == f"{sum(r['aggregation-s'] for r in recs):.3f}"
    assert "excludes the refiners below" in row(text, "aggregation")[2]


def test_search_columns_and_over_budget_candidates(synthetic_run: Path) -> None:
    text = build_report(synthetic_run, draw=False).path.read_text()
    cols = header(text, "candidate")
    assert "teacher agreement after 100 steps" in cols and "accuracy" not in cols
    assert "test accuracy after its search steps (finalists)" in cols
    over = row(text, "w1.0-8bit")
    at = cols.index("teacher agreement after 100 steps")
    assert over[at].startswith("over budget, not trained (params 40,000 > 30,000")
    assert "0.0000" not in over
    finalist = row(text, "w0.5-8bit")
    assert finalist[at] == "0.7386" and finalist[cols.index("test accuracy after its search steps (finalists)")] \
        == "0.7500"
    assert finalist[cols.index("teacher agreement at its last rung")] == "0.7886 after 400 steps"
    assert row(text, "w0.25-8bit")[cols.index("test accuracy after its search steps (finalists)")] == "-"


@pytest.mark.slow
def test_search_table_of_a_real_run(distilled_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(distilled_run, run)
    text = build_report(run, draw=False).path.read_text()
    raw = json.loads((run / "pareto.json").read_text())["candidates"]
    points = read_pareto(run / "pareto.json")
    cols = header(text, "candidate")
    first = f"teacher agreement after {raw[0]['rung0_steps'] or 100} steps"
    assert first in cols
    over = [c for c in raw if not c["in_budget"]]
    assert over, "the budget leaves some candidates out"
    for c in over:
        assert row(text, c["name"])[cols.index(first)].startswith("over budget, not trained")
    finalists = [c for c in raw if c["in_budget"] and c["rungs_reached"] == max(x["rungs_reached"] for x in raw)]
    assert finalists and all(c["test_accuracy"] is not None for c in finalists)
    test_col = cols.index("test accuracy after its search steps (finalists)")
    for c in finalists:
        assert row(text, c["name"])[test_col] == f"{c['test_accuracy']:.4f}"
    assert {p.name for p in points if p.scored} == {c["name"] for c in raw if c["in_budget"]}


def test_dataset_name_as_configured(make_synthetic_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_synthetic_run("own", dataset="my-own-set")
    text = build_report(run, draw=False).path.read_text()
    assert "dataset = my-own-set" in text and row(text, "data set")[1] == "my-own-set"
    assert load_run(run).dataset == "my-own-set"
    other = make_synthetic_run("other", dataset="leaf-images")
    cmp = compare_runs([run, other], tmp_path / "cmp", draw=False).path.read_text()
    assert row(cmp, "own")[1] == "my-own-set" and row(cmp, "other")[1] == "leaf-images"
    assert "different data sets (leaf-images, my-own-set)" in cmp


def test_modelled_device_figures_when_the_rounds_carry_them(synthetic_run: Path) -> None:
    recs = metrics(synthetic_run)
    for i, r in enumerate(recs):
        r["device-time-s"], r["device-energy-j"] = 10.0 + i, 2.5
    (synthetic_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = build_report(synthetic_run, targets=[0.5], draw=False)
    text = rep.path.read_text()
    first = next(i for i, r in enumerate(recs) if r["accuracy"] >= 0.5)
    assert rep.reaches[0].round == recs[first]["round"]
    assert rep.reaches[0].device_time_s == sum(10.0 + i for i in range(first + 1))
    cols = row(text, "target")
    assert "modelled device time" in cols and "modelled device energy" in cols
    assert row(text, "0.5000")[cols.index("modelled device energy")] == f"{2.5 * (first + 1):.4g} J"
    assert row(text, "modelled device time (rounds' `device-time-s`, summed)")[1] == \
        f"{sum(10.0 + i for i in range(len(recs))):.4g} s"
    summary = json.loads((synthetic_run / "summary.json").read_text())
    assert summary["targets"]["levels"][0]["device-energy-j"] == 2.5 * (first + 1)


def test_many_series_get_distinct_styles_and_a_legend_beside_the_plot() -> None:
    """A sweep's plots hold one line per configuration: past a few, the legend moves beside the axes on a wider
    figure, no two series share a colour and marker, and the bytes plot names its line styles once, not once
    per series."""
    from fedshrink.report.plots import LEGEND_INSIDE, Curve, plot_accuracy_vs_bytes, plot_accuracy_vs_round

    def curves(n: int) -> dict[str, Curve]:
        return {f"run {i}": Curve([1, 2], [0.1 * i, 0.2], [1e3, 2e3], [4e3, 8e3], [1e4, 2e4]) for i in range(n)}

    few = plot_accuracy_vs_round(curves(2))
    assert few.axes[0].get_legend() is not None and not few.legends
    for n in (LEGEND_INSIDE + 1, 21):
        fig = plot_accuracy_vs_round(curves(n))
        assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
        assert fig.get_size_inches()[0] > few.get_size_inches()[0]
        styles = {(str(line.get_color()), line.get_marker()) for line in fig.axes[0].get_lines()}
        assert len(styles) == n
    fig = plot_accuracy_vs_bytes(curves(12))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [f"run {i}" for i in range(12)] + ["sent", "the same fragments in fp32",
                                                         "the full model in fp32 per reply"]
    assert len(fig.axes[0].get_lines()) == 36  # every series with both references
    only_sent = plot_accuracy_vs_bytes(curves(2), references=False)
    assert [t.get_text() for t in only_sent.axes[0].get_legend().get_texts()] == ["run 0", "run 1"]
