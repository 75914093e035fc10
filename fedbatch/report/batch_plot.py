"""Final quantities against the batch size, a panel each: where each run's training ended.

`sharpness_vs_batch.png` (Keskar et al. 2017) draws, for runs that probed their final
model (`monitor.final`), the final global train loss (are the runs compared at matched
training loss?), the ε-sharpness, the top Hessian eigenvalue and the true generalization
gap (test − train loss of the same model) against the measured B. Each point is the mean
over seeds, its bar their range; a line per experiment (overrides other than B, LR and seed,
as in the steps-to-target fit).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedbatch.metrics.sweep import RunRecord
from fedbatch.report import plots
from fedbatch.report.plots import register_plot
from fedbatch.report.trials import effective_batch_size, group_key

Points = dict[float, list[float]]  # B -> the values of its runs (one per seed)

MINIMA_PANELS = (
    ("global_train_loss", "final train loss (global model)"),
    ("final_sharpness", "ε-sharpness (lower bound)"),
    ("final_hessian_top", "top Hessian eigenvalue"),
    ("generalization_gap", "true gap (test − train loss)"),
)


def summary_by_batch(runs: Sequence[RunRecord], key: str) -> dict[str, Points]:
    """{experiment label: {measured B: summary[key] of each run}} for finished runs."""
    lines: dict[str, Points] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        batch, value = effective_batch_size(run), plots.number(run.summary.get(key))
        if batch is None or value is None:
            continue
        label = ", ".join(f"{k}={v}" for k, v in group_key(run)) or "all runs"
        lines[label][batch].append(value)
    return {label: dict(points) for label, points in lines.items()}


def mean_and_range(points: Points) -> tuple[list[float], list[float], list[list[float]]]:
    """Sorted Bs, the mean over each B's runs, and the range as error-bar offsets."""
    batches = sorted(points)
    means = [statistics.mean(points[b]) for b in batches]
    low = [m - min(points[b]) for m, b in zip(means, batches, strict=True)]
    high = [max(points[b]) - m for m, b in zip(means, batches, strict=True)]
    return batches, means, [low, high]


@register_plot("sharpness_vs_batch")
def plot_sharpness_vs_batch(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Final train loss, ε-sharpness, top Hessian eigenvalue and true gap against B."""
    if not any("final_sharpness" in run.summary for run in runs):
        return None
    probed = [run for run in runs if "final_sharpness" in run.summary]
    figure = Figure(figsize=(12, 8))
    FigureCanvasAgg(figure)
    grid = figure.subplots(2, 2)
    figure.suptitle("The final model against the batch size (mean and range over seeds)")
    for axes, (key, name) in zip(grid.flat, MINIMA_PANELS, strict=True):
        lines = summary_by_batch(probed, key)
        for (label, points), color in zip(
            lines.items(), plots.line_colors(len(lines)), strict=True
        ):
            batches, means, bars = mean_and_range(points)
            axes.errorbar(batches, means, yerr=bars, label=label, color=color, marker="o",
                          markersize=3, capsize=2)  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlabel("batch size B (measured)")
        axes.set_ylabel(name)
        axes.grid(True, alpha=0.3)
    handles = grid[0][0].get_legend_handles_labels()[0]
    return plots.save_figure(figure, grid[0][1], out_dir / "sharpness_vs_batch.png", handles)
