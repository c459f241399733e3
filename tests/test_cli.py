"""The fedshrink command line: runs, and one-line errors for bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedshrink.cli import main


def test_run_inprocess_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    rc = main(["run", "--num-clients", "3",
               "-c", f"num-server-rounds=2 local-epochs=1 distill=false output-dir='{out}'",
               "-c", "run-name=cli"])
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


def test_report_and_compare_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    for name, chain in (("a", "raw"), ("b", "q4|zlib")):
        assert main(["run", "--num-clients", "3", "-c",
                     f"num-server-rounds=2 local-epochs=1 quiet=true distill=false output-dir='{out}' run-name={name} "
                     f"uplink-chain='{chain}'"]) == 0
    report = out / "a" / "report.md"
    assert report.is_file() and (out / "a" / "plots" / "accuracy_vs_round.png").is_file()
    report.unlink()
    assert main(["report", str(out / "a")]) == 0 and report.is_file()
    assert "accuracy_vs_bytes.png" in report.read_text()  # bytes are recorded, so the plot is drawn
    assert main(["compare", str(out / "a"), str(out / "b"), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.md").is_file()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "run directory" in capsys.readouterr().err
