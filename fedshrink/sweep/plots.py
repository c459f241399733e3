"""Comparison plots of a sweep's configurations: pure functions from runs to matplotlib ``Figure``s.

Curves are means over a configuration's seeds, round by round
(:func:`mean_curve`); the bar chart shows each configuration's final accuracy,
mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from matplotlib.figure import Figure

from fedshrink.report.plots import Curve, MissingData
from fedshrink.report.rundata import RunData


def mean_curve(runs: Sequence[RunData]) -> Curve:
    """Accuracy (and cumulative uplink bytes) per round, averaged over ``runs`` at the rounds all of them reached."""
    curves = [r.curve() for r in runs]
    if not curves:
        return Curve(rounds=[], accuracy=[])
    n = min(len(c.rounds) for c in curves)

    def mean_of(series: list[Sequence[float] | None]) -> list[float] | None:
        if any(s is None for s in series):
            return None
        return [statistics.mean(float(s[i]) for s in series if s is not None) for i in range(n)]

    return Curve(rounds=list(curves[0].rounds[:n]),
                 accuracy=mean_of([c.accuracy for c in curves]) or [],
                 bytes_up=mean_of([c.bytes_up for c in curves]),
                 bytes_up_uncompressed=mean_of([c.bytes_up_uncompressed for c in curves]))


def plot_final_accuracy(labels: Sequence[str], means: Sequence[float], sds: Sequence[float],
                        counts: Sequence[int]) -> Figure:
    """Final test accuracy per configuration: bars at the mean over seeds, error bars +/- one sd."""
    if not labels:
        raise MissingData("no finished runs in the sweep")
    height = max(2.5, 0.35 * len(labels) + 1.2)
    fig = Figure(figsize=(7.0, height), layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(labels)))
    ax.barh(ys, [100 * m for m in means], xerr=[100 * s for s in sds], color="C0", alpha=0.8, capsize=3)
    ax.set_yticks(ys, [f"{lab} (n={k})" for lab, k in zip(labels, counts, strict=True)], fontsize="small")
    ax.invert_yaxis()
    lo = min(100 * (m - s) for m, s in zip(means, sds, strict=True))
    ax.set_xlim(max(0.0, lo - 5), 100)
    ax.set_xlabel("final test accuracy % (mean +/- sd over seeds)")
    ax.set_title("Final accuracy by configuration")
    ax.grid(axis="x", alpha=0.3)
    return fig
