"""The report's plots: pure functions from plain series to matplotlib ``Figure``s.

No pyplot state: every function builds a :class:`matplotlib.figure.Figure`
(Agg canvas, safe in threads, tests and notebooks) and
:func:`save_figure` writes it as PNG. A plot that lacks its data raises
:class:`MissingData` with the reason, which the report prints in place of the plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from fedshrink.report.console import human_bytes
from fedshrink.report.pareto import ParetoPoint, pareto_front, score_label

DPI = 110


class MissingData(Exception):
    """A plot's data is absent from the run directory; the message says what is missing."""


@dataclass(frozen=True)
class Curve:
    """One run's accuracy per round, with cumulative uplink bytes when the run recorded them."""

    rounds: Sequence[int]
    accuracy: Sequence[float]
    bytes_up: Sequence[float] | None = None  # cumulative, B
    bytes_up_uncompressed: Sequence[float] | None = None  # cumulative, B: the same fragments in fp32
    bytes_up_full_fp32: Sequence[float] | None = None  # cumulative, B: the full model in fp32 per reply


@dataclass(frozen=True)
class ClientBar:
    """Totals of one client over the run."""

    partition_id: int
    profile: str
    wall_seconds: float
    peak_rss_bytes: int
    bytes_up: int
    bytes_down: int
    energy_joules: float


def save_figure(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _bytes_axis(ax: Axes, axis: str = "x") -> None:
    fmt = FuncFormatter(lambda v, _pos: human_bytes(v) if v > 0 else "0")
    target = ax.xaxis if axis == "x" else ax.yaxis
    if target.get_scale() == "log":
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(fmt)
    target.set_minor_formatter(NullFormatter())  # log axes: label decades only


def _figure(width: float = 6.4, height: float = 4.0, nrows: int = 1, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


LEGEND_INSIDE = 6  # more series than this: the legend goes beside the plot, and the figure widens for it
_MARKERS = ("o", "s", "^", "v", "D", "P")


def _series_styles(count: int) -> list[dict[str, Any]]:
    """A colour and marker per series, no two alike: tab10's colours up to 10 series, tab20's up to 20, then
    tab20's again with the next marker."""
    palette: list[Any] = [f"C{i}" for i in range(10)] if count <= 10 else [colormaps["tab20"](i) for i in range(20)]
    return [{"color": palette[i % len(palette)], "marker": _MARKERS[(i // len(palette)) % len(_MARKERS)],
             "markersize": 3} for i in range(count)]


def _legend(fig: Figure, ax: Axes, count: int, handles: Sequence[Any] = ()) -> None:
    """The legend inside the axes for a few series; beside them, on a figure widened to hold it, for many."""
    everything = [*ax.get_legend_handles_labels()[0], *handles]
    if count <= LEGEND_INSIDE:
        ax.legend(handles=everything, fontsize="small")
        return
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 4.8, max(height, 0.19 * len(everything) + 1.0))
    fig.legend(handles=everything, loc="outside right upper", fontsize="x-small")


def _target_lines(ax: Axes, targets: Sequence[float]) -> None:
    """A thin horizontal line at each target accuracy, labelled at the right."""
    for level in targets:
        ax.axhline(level, color="0.4", linestyle="-.", linewidth=0.8)
        ax.annotate(f"target {level:.4f}", (1.0, level), xycoords=("axes fraction", "data"), fontsize="x-small",
                    ha="right", va="bottom", color="0.3")


def plot_accuracy_vs_round(curves: Mapping[str, Curve], *, targets: Sequence[float] = ()) -> Figure:
    """Test accuracy of the global model against round, one line per run (and a line per target accuracy)."""
    if not curves or all(len(c.rounds) == 0 for c in curves.values()):
        raise MissingData("no rounds in metrics.jsonl")
    fig, axes = _figure()
    ax = axes[0][0]
    for (label, c), style in zip(curves.items(), _series_styles(len(curves)), strict=True):
        ax.plot(list(c.rounds), list(c.accuracy), label=label, **style)
    _target_lines(ax, targets)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against round")
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        _legend(fig, ax, len(curves))
    return fig


def plot_accuracy_vs_bytes(curves: Mapping[str, Curve], *, references: bool = True,
                           targets: Sequence[float] = ()) -> Figure:
    """Accuracy against cumulative uplink bytes sent (solid); with ``references``, also against the same
    fragments in fp32 (dashed) and the full model in fp32 (dotted) where recorded (:mod:`fedshrink.report.costs`)."""
    usable = {k: c for k, c in curves.items() if c.bytes_up is not None}
    if not usable:
        raise MissingData("no 'bytes-up' in the round records of metrics.jsonl")
    fig, axes = _figure()
    ax = axes[0][0]
    xs: list[float] = []
    drawn: set[str] = set()  # the reference styles some series has
    for (label, c), style in zip(usable.items(), _series_styles(len(usable)), strict=True):
        assert c.bytes_up is not None
        ax.plot(list(c.bytes_up), list(c.accuracy), label=label, **style)
        xs += list(c.bytes_up)
        for seq, linestyle in ((c.bytes_up_uncompressed, "--"), (c.bytes_up_full_fp32, ":")):
            if references and seq is not None:
                ax.plot(list(seq), list(c.accuracy), linestyle=linestyle, color=style["color"], alpha=0.7)
                xs += list(seq)
                drawn.add(linestyle)
    # one legend entry per line style, not per series: solid is what was sent
    meanings: tuple[tuple[Literal["-", "--", ":"], str], ...] = (
        ("-", "sent"), ("--", "the same fragments in fp32"), (":", "the full model in fp32 per reply"))
    keys = [Line2D([], [], color="0.3", linestyle=ls, label=what) for ls, what in meanings
            if ls in drawn | {"-"}] if drawn else []
    _target_lines(ax, targets)
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    _bytes_axis(ax)
    ax.set_xlabel("cumulative uplink bytes (all clients)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against cumulative uplink bytes")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, ax, len(usable), keys)
    return fig


def plot_accuracy_vs_device(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], *,
                            targets: Sequence[float] = ()) -> Figure:
    """Accuracy against cumulative simulated fleet time and fleet energy (modelled), one line per run.

    ``curves``: label -> (cumulative device seconds, cumulative device joules, accuracy), per round.
    """
    if not curves:
        raise MissingData("no 'device-time-s' in the round records (no simulated devices)")
    fig, axes = _figure(width=10.0, height=4.0, ncols=2)
    for (label, (secs, joules, acc)), style in zip(curves.items(), _series_styles(len(curves)), strict=True):
        axes[0][0].plot(list(secs), list(acc), label=label, **style)
        axes[0][1].plot(list(joules), list(acc), label=label, **style)
    for ax, what in zip(axes[0], ("cumulative simulated fleet time, s (modelled)",
                                  "cumulative fleet energy, J (modelled)"), strict=True):
        _target_lines(ax, targets)
        ax.set_xlabel(what)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].set_title("Accuracy against simulated time")
    axes[0][1].set_title("Accuracy against fleet energy")
    if len(curves) > 1:
        _legend(fig, axes[0][0], len(curves))
    return fig


def plot_client_bars(bars: Sequence[ClientBar], *, energy_label: str = "") -> Figure:
    """Per-client totals over the run: wall time, peak RSS, bytes (up + down stacked), energy."""
    if not bars:
        raise MissingData("no clients.csv (per-client resource records)")
    bars = sorted(bars, key=lambda b: b.partition_id)
    profiles = sorted({b.profile for b in bars})
    palette = [f"C{i % 10}" for i in range(len(profiles))]
    color = {p: palette[i] for i, p in enumerate(profiles)}
    xs = list(range(len(bars)))
    colors = [color[b.profile] for b in bars]
    fig, axes = _figure(10.0, 6.4, 2, 2)
    panels: list[tuple[Axes, str, list[float]]] = [
        (axes[0][0], "wall time over the run (s)", [b.wall_seconds for b in bars]),
        (axes[0][1], "peak RSS (max over rounds)", [float(b.peak_rss_bytes) for b in bars]),
        (axes[1][1], "energy (J)" + (f"\n[{energy_label}]" if energy_label else ""),
         [b.energy_joules for b in bars]),
    ]
    for ax, title, values in panels:
        ax.bar(xs, values, color=colors)
        ax.set_title(title, fontsize="medium")
    _bytes_axis(axes[0][1], "y")
    ax = axes[1][0]
    ax.bar(xs, [b.bytes_up for b in bars], color=colors, label="up")
    ax.bar(xs, [b.bytes_down for b in bars], bottom=[b.bytes_up for b in bars], color=colors, alpha=0.4,
           hatch="//", label="down")
    ax.set_title("bytes over the run (up solid, down hatched)", fontsize="medium")
    _bytes_axis(ax, "y")
    labels = [str(b.partition_id) for b in bars]
    step = max(1, len(bars) // 20)
    for row in axes:
        for ax in row:
            ax.set_xticks(xs[::step], labels[::step], fontsize="small")
            ax.set_xlabel("client (partition-id)", fontsize="small")
            ax.grid(axis="y", alpha=0.3)
    if len(profiles) > 1 or profiles != ["default"]:
        from matplotlib.patches import Patch

        fig.legend(handles=[Patch(color=color[p], label=p) for p in profiles], loc="outside upper right",
                   title="profile", fontsize="small")
    fig.suptitle("Per-client costs")
    return fig


def plot_pareto(points: Sequence[ParetoPoint], *, size_key: str = "params") -> Figure:
    """The trained student candidates: teacher agreement against size, the front joined, the chosen one starred.

    Candidates over the budget were never trained and have no score; they are left out (the report's table lists
    them, marked).
    """
    scored = [p for p in points if p.scored]
    if not scored:
        raise MissingData("no pareto.json (student search candidates)" if not points
                          else "no trained candidate in pareto.json")
    front = pareto_front(scored, size_key)
    fig, axes = _figure()
    ax = axes[0][0]
    others = [p for p in scored if not any(p is q for q in front)]
    ax.scatter([p.size(size_key) for p in others], [p.score for p in others], color="0.6", s=18,
               label="candidate")
    ax.plot([p.size(size_key) for p in front], [p.score for p in front], "o-", color="C0",
            markersize=5, label="Pareto front")
    chosen = [p for p in scored if p.chosen]
    if chosen:
        ax.scatter([p.size(size_key) for p in chosen], [p.score for p in chosen], marker="*", s=220,
                   color="C3", zorder=5, label="chosen")
    for p in front:
        if p.name:
            ax.annotate(p.name, (p.size(size_key), p.score or 0.0), fontsize="x-small",
                        xytext=(4, -10), textcoords="offset points")
    sizes = [p.size(size_key) for p in scored]
    if min(sizes) > 0 and max(sizes) / min(sizes) > 20:
        ax.set_xscale("log")
    if size_key == "bytes":
        _bytes_axis(ax)
        ax.set_xlabel("student size (int8 bytes, upper bound)")
    else:
        ax.set_xlabel("student parameters")
    ax.set_ylabel(f"{score_label(scored)}\n(held-out proxy images; not test accuracy)")
    ax.set_title("Student search: Pareto front")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig
