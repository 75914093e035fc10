"""A batch-size sweep's steps to target against B: `steps_to_target.png` and its summary.md part.

Each run becomes a `scaling.Trial`: its effective B (client.batch_size × client.accumulate),
LR and seed from the resolved config, since a value left at its default appears in no
override; and its steps, examples and rounds to the target from summary.json. Runs whose B
is not one number for the whole run (a batch schedule, per-client sizes) are left out and
said so: they have no single B to put on the axis.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, NullFormatter, ScalarFormatter

from fedbatch.metrics.sweep import STATUS_OK, RunRecord, config_value
from fedbatch.report.scaling import (
    FLAG_INSIDE,
    MIN_DISTINCT_B,
    BestPoint,
    ScalingFit,
    Trial,
    fit_steps_vs_batch,
    select_best,
)
from fedbatch.report.tables import markdown_table

STEPS_FIGURE = "steps_to_target.png"
TITLE = "Steps to target vs batch size"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _setting(run: RunRecord, key: str) -> Any:
    """The resolved config's value, else the override's (runs older than config.yaml)."""
    value = config_value(run.config, key)
    return value if value is not None else run.overrides.get(key)


def effective_batch_size(run: RunRecord) -> float | None:
    """B × accumulate; for `full`, the mean B the clients reported (rows' effective B)."""
    batch = _number(_setting(run, "client.batch_size"))
    if batch is not None:
        return batch * (_number(_setting(run, "client.accumulate")) or 1.0)
    reported = [_number(row.get("effective_batch_size")) for row in run.rows]
    present = [value for value in reported if value is not None]
    return statistics.median(present) if present else None


def _fixed_batch(run: RunRecord) -> bool:
    schedule = _setting(run, "batch.name")
    per_client = _setting(run, "batch.per_client")
    return schedule in (None, "constant") and per_client in (None, "same")


def global_noise_scale(run: RunRecord) -> float | None:
    """summary.json's final global B_simple, else the last one a metrics row carries."""
    value = _number(run.summary.get("noise_scale_global"))
    if value is not None:
        return value
    rows = [_number(row.get("noise_scale_global")) for row in run.rows]
    return next((v for v in reversed(rows) if v is not None), None)


def trials_from_runs(runs: Sequence[RunRecord]) -> tuple[list[Trial], list[str]]:
    """The runs as trials, and one note per kind of run left out or counted as missed."""
    trials: list[Trial] = []
    varying, unknown, unfinished = [], [], []
    for run in runs:
        batch = effective_batch_size(run)
        if not _fixed_batch(run):
            varying.append(run.name)
            continue
        if batch is None or batch <= 0:
            unknown.append(run.name)
            continue
        finished = run.status == STATUS_OK
        if not finished:
            unfinished.append(run.name)
        seed = _number(_setting(run, "seed"))
        trials.append(
            Trial(
                batch_size=batch,
                lr=_number(_setting(run, "client.lr")),
                seed=None if seed is None else int(seed),
                steps=_number(run.summary.get("steps_to_target")) if finished else None,
                examples=_number(run.summary.get("examples_to_target")),
                rounds=_number(run.summary.get("rounds_to_target")),
                noise_scale=global_noise_scale(run),
            )
        )
    notes = []
    if varying:
        notes.append(f"left out, B varies within the run: jobs {', '.join(varying)}")
    if unknown:
        notes.append(f"left out, B unknown: jobs {', '.join(unknown)}")
    if unfinished:
        notes.append(f"unfinished, counted as not reached: jobs {', '.join(unfinished)}")
    return trials, notes


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def write_steps_figure(
    points: Sequence[BestPoint], fit: ScalingFit, noise: float | None, path: Path
) -> Path:
    """Log–log steps vs B: best-LR points (hollow when flagged), the fit, B_crit, B_simple."""
    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_title(f"{TITLE} (best LR per B)", fontsize=11)
    axes.set_xlabel("effective batch size B")
    axes.set_ylabel("steps to target (clients' mean local steps, summed over rounds)")
    axes.xaxis.set_major_formatter(ScalarFormatter())  # 4, 8, 16 rather than 2², 2³, 2⁴
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    axes.grid(True, which="both", alpha=0.3)
    b_lo, b_hi = min(p.batch_size for p in points), max(p.batch_size for p in points)
    curve_b = [b_lo / 1.5 * (b_hi * 2.25 / b_lo) ** (i / 199) for i in range(200)]
    axes.plot(curve_b, [fit.steps(b) for b in curve_b], color="C0", linestyle="--")
    for point in points:
        inside = point.flag == FLAG_INSIDE
        axes.plot(
            [point.batch_size],
            [point.steps],
            marker="o",
            color="C0",
            markerfacecolor="C0" if inside else "white",
            linestyle="none",
        )
        axes.annotate(
            f"lr={_fmt(point.lr, 3)}",
            (point.batch_size, point.steps),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=7,
        )
    fit_label = (
        f"S = S_min + E_min/B: S_min={_fmt(fit.s_min)}, E_min={_fmt(fit.e_min)}, "
        f"R²(log S)={_fmt(fit.r_squared, 3)}"
    )
    handles = []
    if any(point.flag == FLAG_INSIDE for point in points):
        label = "best LR inside its grid"
        handles.append(Line2D([], [], color="C0", marker="o", linestyle="none", label=label))
    if any(point.flag != FLAG_INSIDE for point in points):
        label = "best LR at its grid's edge, or one LR"
        hollow = {"marker": "o", "markerfacecolor": "white", "linestyle": "none"}
        handles.append(Line2D([], [], color="C0", label=label, **hollow))
    handles.append(Line2D([], [], color="C0", linestyle="--", label=fit_label))
    if fit.s_min > 0:
        axes.axhline(fit.s_min, color="gray", linestyle=":")
        handles.append(Line2D([], [], color="gray", linestyle=":", label="S_min (B → ∞)"))
    if 0 < fit.b_crit < math.inf:
        axes.axvline(fit.b_crit, color="C1", linestyle=":")
        label = f"B_crit = E_min/S_min = {_fmt(fit.b_crit)}"
        handles.append(Line2D([], [], color="C1", linestyle=":", label=label))
    if noise is not None and noise > 0:
        axes.axvline(noise, color="C2", linestyle="-.")
        label = f"global B_simple (measured) = {_fmt(noise)}"
        handles.append(Line2D([], [], color="C2", linestyle="-.", label=label))
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _range_note(fit: ScalingFit, points: Sequence[BestPoint]) -> str:
    b_crit = fit.b_crit
    if math.isnan(b_crit):
        return ""
    if b_crit > max(p.batch_size for p in points):
        return " (beyond the largest B tried: extrapolated)"
    if b_crit < min(p.batch_size for p in points):
        return " (below the smallest B tried: extrapolated)"
    return ""


def _points_table(points: Sequence[BestPoint]) -> str:
    columns = ["B", "best LR", "LRs tried", "seeds", "steps", "examples", "rounds", "flag"]
    columns.append("global B_simple")
    rows = [
        {
            "B": _fmt(p.batch_size, 6),
            "best LR": _fmt(p.lr),
            "LRs tried": ", ".join(_fmt(lr) for lr in p.lrs_tried) or "n/a",
            "seeds": str(p.seeds),
            "steps": _fmt(p.steps, 5),
            "examples": _fmt(p.examples, 5),
            "rounds": _fmt(p.rounds, 4),
            "flag": p.flag or "inside grid",
            "global B_simple": _fmt(p.noise_scale),
        }
        for p in points
    ]
    return markdown_table(columns, rows)


def steps_report(runs: Sequence[RunRecord], out_dir: Path) -> tuple[list[Path], str]:
    """Write the figure when 3 or more B reached the target; return it and the markdown."""
    trials, notes = trials_from_runs(runs)
    points = select_best(trials)
    if len(points) < MIN_DISTINCT_B:
        tried = len({trial.batch_size for trial in trials})
        return [], (
            f"{TITLE}: not fitted, {len(points)} of {tried} distinct B reached the target "
            f"(`steps_to_target` in summary.json; {MIN_DISTINCT_B} needed)."
        )
    fit = fit_steps_vs_batch([p.batch_size for p in points], [p.steps for p in points])
    measured = [p.noise_scale for p in points if p.noise_scale is not None]
    noise = statistics.median(measured) if measured else None
    figure = write_steps_figure(points, fit, noise, out_dir / STEPS_FIGURE)
    lines = [
        f"## {TITLE}",
        f"![steps to target vs B]({STEPS_FIGURE})",
        f"S = S_min + E_min/B fitted by least squares on log S over the best LR of each of "
        f"n = {fit.n} batch sizes: S_min = {_fmt(fit.s_min)}, E_min = {_fmt(fit.e_min)}, "
        f"**B_crit = E_min/S_min = {_fmt(fit.b_crit)}**{_range_note(fit, points)}, "
        f"R² (on log S) = {_fmt(fit.r_squared)}.",
        (
            f"Global B_simple measured (`noise_scale_global`, median over the {len(measured)} "
            f"best-LR points that measured it): {_fmt(noise)}."
            if measured
            else "Global B_simple: not measured in the best-LR runs (`noise_scale_global`)."
        )
        + " B_crit estimates McCandlish et al.'s B_noise, of which B_simple is a proxy: the "
        "two agree up to a factor that depends on the problem.",
    ]
    flagged = [p for p in points if p.flag != FLAG_INSIDE]
    if flagged:
        lines.append(
            f"{len(flagged)} of {fit.n} points have their best LR at the edge of the LR grid "
            "tried at that B, or one LR only: their steps bound the tuned value from above."
        )
    missed = sorted({t.batch_size for t in trials} - {p.batch_size for p in points})
    if missed:
        lines.append(f"Never reached the target: B = {', '.join(_fmt(b, 6) for b in missed)}.")
    lines += [f"Note: {note}." for note in notes]
    lines.append(_points_table(points))
    return [figure], "\n\n".join(lines)
