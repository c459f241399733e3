"""The README's results table quotes its results files: every decimal figure in a row appears in a file it links."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"(?<![\w.])\d[\d,]*\.\d+")  # 97.59, 4.66, 1,155.2: decimals, which a reader takes as measured
LINK = re.compile(r"\]\((simulations/results/[\w./-]+\.md)\)")


def results_rows() -> list[tuple[str, str, list[Path]]]:
    """(what, figure cell, linked results files) for every row of the README's results table."""
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and LINK.search(cells[2]):
            rows.append((cells[0], cells[1], [ROOT / p for p in LINK.findall(cells[2])]))
    return rows


def test_the_results_table_has_rows() -> None:
    assert len(results_rows()) >= 5


def test_every_readme_figure_is_in_its_results_file() -> None:
    missing = []
    for what, figures, files in results_rows():
        text = "\n".join(f.read_text() for f in files if f.exists())
        assert text, f"README row {what!r} links no existing results file: {files}"
        missing += [f"{what[:50]}: {num}" for num in FIGURE.findall(figures)
                    if not re.search(rf"(?<![\d.,]){re.escape(num)}(?!\d)", text)]
    assert not missing, "README figures not in the linked results files:\n" + "\n".join(missing)


COMMAND = re.compile(r"`(?:OMP_NUM_THREADS=1 )?(?:\.venv/bin/)?(python simulations/benchmarks/bench_\w+\.py[^`]*)`")


def make_results_plan() -> list[str]:
    """The analysis and measurement commands `make results` runs, as `python simulations/benchmarks/...` lines."""
    plan = subprocess.run(["make", "-n", "results-sweeps", "results-measure", "SIM=", "PY=python"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    plan = re.sub(r"\\\n\s*", " ", plan)  # continuation lines
    lines = [m.group(1) for m in re.finditer(r"(python simulations/benchmarks/\S+\.py[^;\n]*)", plan)]
    for sweep in sorted((ROOT / "simulations" / "sweeps").glob("*.toml")):  # the loop over sweep files
        lines.append(f"python simulations/benchmarks/bench_{sweep.stem}.py --sweep-dir runs/sweeps/{sweep.stem}")
    for name in ("robust_rules_bucket", "robust_rules_glyphs"):  # the loop over two reruns
        lines.append(f"python simulations/benchmarks/bench_robust_rules.py --sweep-dir runs/sweeps/{name} "
                     f"--sweep-file simulations/sweeps/reruns/{name}.toml --out simulations/results/{name}.md")
    return [" ".join(line.split()) for line in lines if "$" not in line]


def test_make_results_regenerates_every_results_file() -> None:
    """Each results file names the command that wrote it, and `make results` runs that command."""
    plan = make_results_plan()
    unnamed, unplanned = [], []
    for path in sorted((ROOT / "simulations" / "results").glob("*.md")):
        # a benchmark made of parts (bench_devices.py) runs every part when no --part is given, as make does
        named = [" ".join(re.sub(r"--part \w+", "", c).split()) for c in COMMAND.findall(path.read_text())]
        if not named:
            unnamed.append(path.name)
        elif not any(c in plan for c in named):
            unplanned.append(f"{path.name}: {named[0]}")
    assert not unnamed, f"results files that name no benchmark command: {unnamed}"
    assert not unplanned, "results files whose command `make results` does not run:\n" + "\n".join(unplanned)
