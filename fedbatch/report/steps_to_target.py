"""A batch-size sweep's steps to target against B: `steps_to_target.png` and its summary.md part.

The runs are read into trials and grouped by experiment (`trials.py`: measured B, and every
override but B, LR and seed); each group gets its best LR per B, its own fit (`scaling.py`:
on the points whose best LR is inside its grid when 3 or more B have one) and its own table,
and one figure draws them all (`steps_figure.py`). Runs whose B is not one number for the
whole run (a batch schedule, per-client sizes) are left out and said so: they have no
single B to put on the axis.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from fedbatch.metrics.sweep import RunRecord
from fedbatch.report.scaling import (
    FLAG_INSIDE,
    MIN_DISTINCT_B,
    BestPoint,
    FitChoice,
    ScalingFit,
    Trial,
    choose_fit,
    place_batches,
    select_best,
)
from fedbatch.report.steps_figure import STEPS_FIGURE, TITLE, Series, fmt, write_steps_figure
from fedbatch.report.tables import markdown_table
from fedbatch.report.trials import TrialGroup, group_labels, groups_from_runs

__all__ = ["STEPS_FIGURE", "TITLE", "steps_report"]


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
            "B": fmt(p.batch_size, 6),
            "best LR": fmt(p.lr),
            "LRs tried": ", ".join(fmt(lr) for lr in p.lrs_tried) or "n/a",
            "seeds": str(p.seeds),
            "steps": fmt(p.steps, 5),
            "examples": fmt(p.examples, 5),
            "rounds": fmt(p.rounds, 4),
            "flag": p.flag or "inside grid",
            "global B_simple": fmt(p.noise_scale),
        }
        for p in points
    ]
    return markdown_table(columns, rows)


def _fit_line(choice: FitChoice, points: Sequence[BestPoint]) -> str:
    fit = choice.fit
    every = choice.all_points  # on every point, when the main fit left flagged ones out
    which = " whose best LR lies inside its grid" if every is not None else ""
    line = (
        f"S = S_min + E_min/B fitted by least squares on log S over the best LR of each of "
        f"n = {fit.n} batch sizes{which}: S_min = {fmt(fit.s_min)}, E_min = {fmt(fit.e_min)}, "
        f"**B_crit = E_min/S_min = {fmt(fit.b_crit)}**{_range_note(fit, points)}, "
        f"R² (on log S) = {fmt(fit.r_squared)}."
    )
    if every is not None:
        line += (
            f" On all n = {every.n} points, flagged ones included: S_min = {fmt(every.s_min)}, "
            f"E_min = {fmt(every.e_min)}, B_crit = {fmt(every.b_crit)}, "
            f"R² = {fmt(every.r_squared)}."
        )
    return line


def _flag_lines(choice: FitChoice, points: Sequence[BestPoint]) -> list[str]:
    flagged = [p for p in points if p.flag != FLAG_INSIDE]
    lines = []
    if flagged:
        lines.append(
            f"{len(flagged)} of {len(points)} points have their best LR at the edge of the LR "
            "grid tried at that B, or one LR only: their steps bound the tuned value from above."
        )
    if choice.on_flagged:
        inside = len(points) - len(flagged)
        lines.append(
            f"This fit rests on flagged points (upper bounds): only {inside} B had their best "
            f"LR inside its grid, {MIN_DISTINCT_B} needed to fit those alone."
        )
    return lines


def _noise_line(series: Series, clients: Sequence[int | None], measured: int) -> str:
    if series.noise is None:
        return "Global B_simple: not measured in the best-LR runs (`noise_scale_global`)."
    line = (
        f"Global B_simple measured (median over the {measured} best-LR points that measured "
        f"it; each run's exact per-example value `noise_scale_exact_global`, its median over "
        f"the rounds, where measured, else its estimate `noise_scale_global`): "
        f"{fmt(series.noise)}."
    )
    known = {k for k in clients if k is not None}
    if series.clients == 1:
        line += " One client per round: B is the whole step's batch."
    elif series.clients is not None:
        line += (
            f" B is per client, and a FedAvg step averages the updates of K = "
            f"{series.clients} clients (`clients_per_round`), about K·B examples (exactly "
            f"for FedSGD): compare B_crit with B_simple/K = {fmt(series.noise / series.clients)}"
            ", the per-client share of the pooled noise scale, as well as with B_simple."
        )
    elif len(known) > 1:
        line += (
            f" B_simple/K not drawn: K (`clients_per_round`) varies within these runs "
            f"({', '.join(str(k) for k in sorted(known))})."
        )
    else:
        line += " B_simple/K not drawn: K (`clients_per_round`) is not in every run's config."
    return line + (
        " B_crit estimates McCandlish et al.'s B_noise, of which B_simple is a proxy: the "
        "two agree up to a factor that depends on the problem."
    )


def _cap_lines(group: TrialGroup, placed: Sequence[Trial]) -> list[str]:
    """One line per batch size where runs were placed away from their configured B."""
    configured_at: dict[float, set[float]] = {}
    for trial, moved in zip(group.trials, placed, strict=True):
        if trial.configured is not None:
            configured_at.setdefault(moved.batch_size, set()).add(trial.configured)
    lines = []
    for measured, configured in sorted(configured_at.items()):
        if configured == {measured}:
            continue
        names = " and ".join(fmt(b, 6) for b in sorted(configured))
        reasons = sorted({group.reasons[b] for b in configured if b in group.reasons})
        pooled = " (one batch size: their runs are pooled)" if len(configured) > 1 else ""
        lines.append(
            f"B = {names} configured, {fmt(measured)} measured: "
            f"{'; '.join(reasons) or 'as the clients measured it'}{pooled}."
        )
    return lines


def _group_report(group: TrialGroup, label: str) -> tuple[Series | None, list[str]]:
    """The group's series (None when fewer than 3 B reached the target) and its markdown."""
    trials = place_batches(group.trials)
    points = select_best(trials)
    choice = choose_fit(points)
    name = f"{TITLE} ({label})" if label else TITLE
    if choice is None:
        tried = len({trial.batch_size for trial in trials})
        return None, [
            f"{name}: not fitted, {len(points)} of {tried} distinct B reached the target "
            f"(`steps_to_target` in summary.json; {MIN_DISTINCT_B} needed)."
        ]
    measured = [p.noise_scale for p in points if p.noise_scale is not None]
    known = {k for k in group.clients if k is not None}
    clients = next(iter(known)) if len(known) == 1 and None not in group.clients else None
    noise = statistics.median(measured) if measured else None
    series = Series(label, tuple(points), choice, noise, clients)
    lines = [f"### {label}"] if label else []
    lines += [_fit_line(choice, points), _noise_line(series, group.clients, len(measured))]
    lines += _flag_lines(choice, points)
    lines += _cap_lines(group, trials)
    missed = sorted({t.batch_size for t in trials} - {p.batch_size for p in points})
    if missed:
        lines.append(f"Never reached the target: B = {', '.join(fmt(b, 6) for b in missed)}.")
    lines.append(_points_table(points))
    return series, lines


def steps_report(runs: Sequence[RunRecord], out_dir: Path) -> tuple[list[Path], str]:
    """Write the figure when some group has 3 or more B that reached the target; return it
    and the markdown (one fit and table per group)."""
    groups, notes = groups_from_runs(runs)
    if groups and all(len({t.batch_size for t in place_batches(g.trials)}) < 2 for g in groups):
        return [], ""  # not a sweep over B (one B per experiment): nothing to fit or say
    drawn: list[Series] = []
    parts: list[list[str]] = []
    for group, label in zip(groups, group_labels(groups), strict=True):
        series, lines = _group_report(group, label)
        if series is not None:
            drawn.append(series)
        parts.append(lines)
    notes = [f"Note: {note}." for note in notes]
    if not drawn:
        if not groups:
            parts = [[f"{TITLE}: not fitted, no run with a single B (runs without B left out)."]]
        return [], "\n\n".join([line for lines in parts for line in lines] + notes)
    figure = write_steps_figure(drawn, out_dir / STEPS_FIGURE)
    lines = [f"## {TITLE}", f"![steps to target vs B]({STEPS_FIGURE})"]
    if len(groups) > 1:
        lines.append(
            f"{len(groups)} experiments (runs that differ in more than B, LR and seed), "
            "each fitted on its own."
        )
    lines += [line for group_lines in parts for line in group_lines] + notes
    return [figure], "\n\n".join(lines)
