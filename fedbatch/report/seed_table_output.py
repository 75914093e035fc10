"""The measured seed table as markdown (`seed_table.md`) and as a figure (`seed_table.png`)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedbatch.report.tables import markdown_table

if TYPE_CHECKING:
    from fedbatch.report.seed_table import MeasuredRow

MB = 2**20


def _mean(values: Sequence[float]) -> float | None:
    return statistics.mean(values) if values else None


def _spread(values: Sequence[float], digits: str) -> str:
    """ "mean ± sd" over seeds (the mean alone for one value, "n/a" for none)."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], digits)
    return f"{format(statistics.mean(values), digits)} ± {format(statistics.stdev(values), digits)}"


def batch_text(row: MeasuredRow) -> str:
    low = min(run.batch_sizes[0] for run in row.runs)
    high = max(run.batch_sizes[1] for run in row.runs)
    return f"{low:.0f}" if low == high else f"{low:.0f} → {high:.0f}"


def time_to_target(row: MeasuredRow) -> str:
    reached = row.values("seconds_to_target")
    if len(reached) < len(row.runs):
        return f"{len(reached)}/{len(row.runs)} seeds reached it"
    return f"{_spread(reached, '.1f')} s"


def fastest_rate(rows: Sequence[MeasuredRow]) -> float:
    return max(_mean(row.values("samples_per_second")) or 0.0 for row in rows)


def side_by_side(rows: Sequence[MeasuredRow], target: float) -> str:
    """The seed's table, each of its words followed by what was measured."""
    fastest = fastest_rate(rows)
    lines = []
    for row in rows:
        seed = row.seed
        rate = _mean(row.values("samples_per_second")) or 0.0
        noise = _mean(row.values("gradient_noise"))
        gap = _mean(row.values("gap_at_best"))
        lines.append({
            "Batch Size": f"{seed.label}: B = {batch_text(row)}",
            "Memory Usage": f"{seed.memory}: {row.memory_bytes / MB:.2f} MB",
            "Training Speed": f"{seed.speed}: {rate:,.0f} samples/s, "
                              f"{time_to_target(row)} to {target:.0%}",
            "Gradient Stability": f"{seed.stability}: noise {noise:.3g}" if noise is not None
                                  else f"{seed.stability}: n/a",
            "Generalization": f"{seed.generalization}: "
                              f"{_mean(row.values('best_accuracy')) or 0.0:.3f} test accuracy"
                              + (f", gap {gap:.2f}" if gap is not None else ""),
            "Hardware Utilization": f"{seed.hardware}: {rate / fastest:.1%} of the fastest",
        })  # fmt: skip
    return markdown_table(list(lines[0]), lines)


def details(rows: Sequence[MeasuredRow]) -> str:
    """Every number with its spread over seeds."""
    fastest = fastest_rate(rows)
    lines = []
    for row in rows:
        rate = row.values("samples_per_second")
        lines.append({
            "row": row.seed.label,
            "B": batch_text(row),
            "base LR": f"{row.lr:g}" + (" (grid edge)" if row.lr_at_edge else ""),
            "seeds": str(len(row.runs)),
            "step memory (MB)": f"{row.memory_bytes / MB:.3f}",
            "samples/s": _spread(rate, ",.0f"),
            "relative samples/s": f"{(_mean(rate) or 0.0) / fastest:.2f}",
            "time to target": time_to_target(row),
            "gradient noise": _spread(row.values("gradient_noise"), ".3g"),
            "best test accuracy": _spread(row.values("best_accuracy"), ".3f"),
            "true gap at best": _spread(row.values("gap_at_best"), ".3f"),
        })  # fmt: skip
    return markdown_table(list(lines[0]), lines)


def write_markdown(
    rows: Sequence[MeasuredRow], notes: Sequence[str], target: float, out: Path
) -> Path:
    parts = [
        "# The seed's mini-batch size comparison, measured",
        "Each cell: the seed's word, then what was measured (means over seeds).",
        side_by_side(rows, target),
        "## Every number (mean ± standard deviation over seeds)",
        details(rows),
    ]
    parts += [f"- {note}" for note in notes]
    path = out / "seed_table.md"
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


PANELS = (
    ("memory", "step memory (MB)", True),
    ("samples_per_second", "samples/s (training)", True),
    ("seconds_to_target", "seconds to target", False),
    ("gradient_noise", "gradient noise tr(Σ)/|G|²·(1/B − 1/n)", False),
    ("best_accuracy", "best test accuracy", False),
    ("gap_at_best", "true gap at best (loss)", False),
)


def write_figure(rows: Sequence[MeasuredRow], out: Path) -> Path:
    """A bar panel per measured quantity, a bar per row (mean, range over seeds)."""
    figure = Figure(figsize=(14, 7))
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, 3)
    labels = [row.seed.label.split(" (")[0] for row in rows]
    for axes, (field, name, log) in zip(grid.flat, PANELS, strict=True):
        means, low, high = [], [], []
        for row in rows:
            values = [row.memory_bytes / MB] if field == "memory" else row.values(field)
            mean = _mean(values)
            means.append(mean if mean is not None else 0.0)
            low.append(mean - min(values) if values and mean is not None else 0.0)
            high.append(max(values) - mean if values and mean is not None else 0.0)
        axes.bar(labels, means, yerr=[low, high], capsize=3, color="C0")
        axes.set_title(name, fontsize=10)
        axes.tick_params(axis="x", labelrotation=30, labelsize=8)
        if log:
            axes.set_yscale("log")
        if field == "best_accuracy":  # the differences are small: do not start at 0
            axes.set_ylim(min(m - d for m, d in zip(means, low, strict=True)) - 0.02,
                          max(m + d for m, d in zip(means, high, strict=True)) + 0.02)  # fmt: skip
        axes.grid(True, axis="y", alpha=0.3)
    figure.suptitle("The seed's batch-size ranges, measured (bars: mean; whiskers: range)")
    figure.tight_layout()
    path = out / "seed_table.png"
    figure.savefig(path, dpi=120)
    return path
