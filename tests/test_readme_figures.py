"""The README's results table quotes its results files: every decimal figure in a row appears in a file it links."""

from __future__ import annotations

import re
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
