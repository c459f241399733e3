"""A sweep's table and `fedshrink compare` on sweep directories, from a tiny sweep made in this process."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from fedshrink.cli import main
from fedshrink.sweep import SweepSpec, open_sweep, run_sweep
from fedshrink.sweep.results import bytes_to_reach


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SweepSpec.from_mapping({
        "name": "table", "seeds": [1, 2], "num-clients": 2, "workers": 1, "targets": [0.15, 0.99],
        "base": {"num-server-rounds": 2, "local-epochs": 1, "model": "mlp", "distill": False},
        "runs": [{"name": "a"}, {"name": "b", "settings": {"learning-rate": 0.05}, "seeds": [1]}],
    })
    return run_sweep(spec, tmp_path_factory.mktemp("sweep"), say=lambda _: None).path


def test_table_matches_the_runs(sweep_dir: Path) -> None:
    rows = {c["config"]: c for c in json.loads((sweep_dir / "summary.json").read_text())["configs"]}
    sweep = open_sweep(sweep_dir)
    a = list(sweep.of("a").values())
    assert rows["a"]["done"] == 2 and rows["b"]["done"] == rows["b"]["planned"] == 1
    assert rows["a"]["accuracy"]["mean"] == pytest.approx(statistics.mean(r.summary["accuracy"] for r in a))
    assert rows["a"]["accuracy"]["sd"] == pytest.approx(statistics.stdev(r.summary["accuracy"] for r in a))
    hits = [bytes_to_reach(r.rounds, 0.15) for r in a]
    assert rows["a"]["bytes-to-target"]["0.15"]["reached"] == sum(h is not None for h in hits)
    assert rows["a"]["bytes-to-target"]["0.99"] == {"reached": 0, "of": 2}
    assert "| a | 2/2 |" in (sweep_dir / "summary.md").read_text()


def test_compare_reads_a_sweep(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_run = next(iter(open_sweep(sweep_dir).of("b").values())).path
    assert main(["compare", str(sweep_dir), str(one_run), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "3 configurations compared" in text
    assert "| a | 2/2 |" in text and "| b | 1/1 |" in text and f"| {one_run.name} | 1/1 |" in text
    assert (tmp_path / "cmp" / "plots" / "accuracy_vs_round.png").is_file()


def test_cli_refuses_a_bad_sweep_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[base]\nnum-server-round = 3\n')
    assert main(["sweep", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedshrink: invalid setting num-server-round=3") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_seed_accuracies_and_narrow_widths_leave_out_what_did_not_finish() -> None:
    from fedshrink.sweep.results import narrow_widths, seed_accuracies

    per_seed = {1: [{"accuracy": 0.5}, {"accuracy": 0.9512, "accuracy-width": {"0.25": 0.4, "0.5": 0.8}}],
                3: [{"accuracy": 0.9, "accuracy-width": {"0.5": 0.6}}]}
    cells, finals = seed_accuracies(per_seed, [1, 2, 3])
    assert cells == ["95.12", "n/a", "90.00"] and finals == [0.9512, 0.9]
    assert narrow_widths(per_seed) == "40.0 / 70.0"  # 0.25 from seed 1 alone, 0.5 the mean of both
    assert narrow_widths({1: [{"accuracy": 0.9}]}) == "-"


def test_the_reference_mean_and_the_gap_cells() -> None:
    from fedshrink.sweep.results import gap_cell, mean_final, pct_mean_sd

    ref = mean_final({1: [{"accuracy": 0.98}], 2: [{"accuracy": 0.5}, {"accuracy": 0.96}]})
    assert ref == pytest.approx(0.97) and mean_final({}) is None
    assert gap_cell(ref, [0.95, 0.94]) == "2.50" and gap_cell(None, [0.95]) == ""
    assert pct_mean_sd([0.9, 0.92]) == "91.00 ± 1.41" and pct_mean_sd([]) == "n/a"


def test_accuracy_columns_are_the_seeds_their_mean_and_the_gap() -> None:
    from fedshrink.sweep.results import accuracy_columns

    per_seed = {1: [{"accuracy": 0.9}], 3: [{"accuracy": 0.92}]}
    assert accuracy_columns(per_seed, [1, 2, 3], 0.95) == ["90.00", "n/a", "92.00", "91.00 ± 1.41", "4.00"]
    assert accuracy_columns(per_seed, [1, 2, 3], 0.95, reference=True)[-1] == ""
    assert accuracy_columns({}, [1], None) == ["n/a", "n/a", ""]


def test_reach_is_the_first_round_at_the_target_with_the_bytes_each_way() -> None:
    from fedshrink.sweep.results import bytes_to_reach, reach

    rounds = [{"round": 1, "accuracy": 0.5, "bytes-up": 10, "bytes-down": 100},
              {"round": 2, "accuracy": 0.91, "bytes-up": 20, "bytes-down": 5},
              {"round": 3, "accuracy": 0.95, "bytes-up": 30, "bytes-down": 5}]
    assert reach(rounds, 0.9) == (2, 30, 105) and bytes_to_reach(rounds, 0.9) == 30
    assert reach(rounds, 0.95) == (3, 60, 110)
    assert reach(rounds, 0.96) is None and bytes_to_reach(rounds, 0.96) is None
