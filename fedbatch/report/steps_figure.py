"""`steps_to_target.png`: steps to target against per-client B, one series per experiment.

Each series has its own colour: its best-LR points (hollow when flagged), its fit, B_crit,
and the measured global B_simple beside B_simple/K. The x axis is the per-client B (a
client's step averages B examples); one FedAvg step averages the K clients' updates, about
K·B examples (exactly for FedSGD), so B_crit read on this axis is compared with the pooled
data's noise scale per client, B_simple/K, as well as with B_simple itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, NullFormatter, ScalarFormatter

from fedbatch.report.scaling import FLAG_INSIDE, BestPoint, FitChoice, ScalingFit

STEPS_FIGURE = "steps_to_target.png"
TITLE = "Steps to target vs batch size"
POOLED_STYLE = {"linestyle": "-", "linewidth": 1.0, "alpha": 0.7}  # B_simple: thin, solid
PER_CLIENT_STYLE = {"linestyle": "-."}  # B_simple/K; B_crit is dotted, the fits dashed


@dataclass(frozen=True)
class Series:
    """One experiment's points and fit as drawn; `clients` is K, None when unknown or mixed."""

    label: str
    points: tuple[BestPoint, ...]
    choice: FitChoice | None
    noise: float | None
    clients: int | None


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def fit_label(fit: ScalingFit, which: str) -> str:
    return (
        f"S = S_min + E_min/B on {which}: S_min={fmt(fit.s_min)}, E_min={fmt(fit.e_min)}, "
        f"R²(log S)={fmt(fit.r_squared, 3)}"
    )


def _prefix(label: str) -> str:
    return f"{label}: " if label else ""


def _new_axes() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_title(f"{TITLE} (best LR per B)", fontsize=11)
    axes.set_xlabel("effective batch size B per client (measured)")
    axes.set_ylabel("steps to target (clients' mean local steps, summed over rounds)")
    axes.xaxis.set_major_formatter(ScalarFormatter())  # 4, 8, 16 rather than 2², 2³, 2⁴
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    axes.grid(True, which="both", alpha=0.3)
    return figure, axes


def _draw_points(axes: Axes, series: Series, color: str) -> list[Any]:
    for point in series.points:
        inside = point.flag == FLAG_INSIDE
        axes.plot(
            [point.batch_size],
            [point.steps],
            marker="o",
            color=color,
            markerfacecolor=color if inside else "white",
            linestyle="none",
        )
        axes.annotate(
            f"lr={fmt(point.lr, 3)}",
            (point.batch_size, point.steps),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=7,
        )
    handles = []
    name = _prefix(series.label)
    if any(point.flag == FLAG_INSIDE for point in series.points):
        label = f"{name}best LR inside its grid"
        handles.append(Line2D([], [], color=color, marker="o", linestyle="none", label=label))
    if any(point.flag != FLAG_INSIDE for point in series.points):
        label = f"{name}best LR at its grid's edge, or one LR"
        hollow = {"marker": "o", "markerfacecolor": "white", "linestyle": "none"}
        handles.append(Line2D([], [], color=color, label=label, **hollow))
    return handles


def _draw_curve(axes: Axes, fit: ScalingFit, span: tuple[float, float], **style: Any) -> None:
    b_lo, b_hi = span
    curve_b = [b_lo / 1.5 * (b_hi * 2.25 / b_lo) ** (i / 199) for i in range(200)]
    axes.plot(curve_b, [fit.steps(b) for b in curve_b], **style)


def _draw_fit(axes: Axes, series: Series, color: str) -> list[Any]:
    choice, name = series.choice, _prefix(series.label)
    if choice is None:
        return []
    fit = choice.fit
    span = (min(p.batch_size for p in series.points), max(p.batch_size for p in series.points))
    _draw_curve(axes, fit, span, color=color, linestyle="--")
    which = "all points (flagged too)" if choice.on_flagged else "best LRs inside their grid"
    label = f"{name}{fit_label(fit, which)}"
    handles = [Line2D([], [], color=color, linestyle="--", label=label)]
    every = choice.all_points
    if every is not None:
        _draw_curve(axes, every, span, color=color, linestyle="--", alpha=0.35)
        label = f"{name}the same on all points (flagged too): B_crit = {fmt(every.b_crit)}"
        handles.append(Line2D([], [], color=color, linestyle="--", alpha=0.35, label=label))
    if fit.s_min > 0:
        axes.axhline(fit.s_min, color=color, linestyle=":", alpha=0.5)
        handles.append(
            Line2D([], [], color=color, linestyle=":", alpha=0.5, label=f"{name}S_min (B → ∞)")
        )
    if 0 < fit.b_crit < math.inf:
        axes.axvline(fit.b_crit, color=color, linestyle=":")
        label = f"{name}B_crit = E_min/S_min = {fmt(fit.b_crit)}"
        handles.append(Line2D([], [], color=color, linestyle=":", label=label))
    return handles


def _draw_noise(axes: Axes, series: Series, color: str) -> list[Any]:
    noise, name = series.noise, _prefix(series.label)
    if noise is None or noise <= 0:
        return []
    axes.axvline(noise, color=color, **POOLED_STYLE)
    label = f"{name}global B_simple (measured, pooled data) = {fmt(noise)}"
    handles = [Line2D([], [], color=color, label=label, **POOLED_STYLE)]
    if series.clients is not None and series.clients > 0:
        share = noise / series.clients
        axes.axvline(share, color=color, **PER_CLIENT_STYLE)
        label = f"{name}B_simple/K per client (K = {series.clients}) = {fmt(share)}"
        handles.append(Line2D([], [], color=color, label=label, **PER_CLIENT_STYLE))
    return handles


def draw_steps(all_series: Sequence[Series]) -> tuple[Figure, Axes]:
    """Log–log steps vs per-client B, each series in its own colour; legend beside the axes."""
    figure, axes = _new_axes()
    handles: list[Any] = []
    for index, series in enumerate(all_series):
        color = f"C{index % 10}"
        handles += _draw_points(axes, series, color)
        handles += _draw_fit(axes, series, color)
        handles += _draw_noise(axes, series, color)
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    return figure, axes


def write_steps_figure(all_series: Sequence[Series], path: Path) -> Path:
    figure, _ = draw_steps(all_series)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
