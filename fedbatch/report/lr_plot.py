"""Final test accuracy against the LR, one line per setting: over how wide a range of LRs
each batch size trains well (Masters & Luschi 2018's figure).

A setting is a run's overrides other than the LR and the seed (so one line per B in a
B × LR sweep); each point is the mean over seeds, its bar their range. Drawn only for a
sweep that tried at least two LRs.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from fedbatch.metrics.sweep import RunRecord, config_value
from fedbatch.report import plots
from fedbatch.report.plots import register_plot

VARIED = ("client.lr", "seed")


def accuracy_by_lr(runs: list[RunRecord]) -> dict[str, dict[float, list[float]]]:
    """{setting label: {LR: final test accuracies over its seeds}}, settings in run order."""
    lines: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        lr = _lr(run)
        accuracy = plots.number(run.summary.get("test_accuracy"))
        if lr is None or lr <= 0 or accuracy is None:
            continue
        setting = [f"{k}={v}" for k, v in run.overrides.items() if k not in VARIED]
        lines[", ".join(setting) or "all runs"][lr].append(accuracy)
    return {label: dict(points) for label, points in lines.items()}


def _lr(run: RunRecord) -> float | None:
    """The run's client LR: its resolved config's, else its override's."""
    value = config_value(run.config, "client.lr")
    try:
        return float(run.overrides.get("client.lr", "") if value is None else value)
    except ValueError:
        return None


@register_plot("accuracy_vs_lr")
def plot_accuracy_vs_lr(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Final test accuracy per LR (mean over seeds, their range as a bar), a line per setting."""
    lines = accuracy_by_lr(runs)
    if len({lr for points in lines.values() for lr in points}) < 2:
        return None
    title = "Final test accuracy per learning rate (mean and range over seeds)"
    figure, axes = plots.new_axes(runs, title, "client LR", "final test accuracy")
    for (label, points), color in zip(lines.items(), plots.line_colors(len(lines)), strict=True):
        lrs = sorted(points)
        means = [statistics.mean(points[lr]) for lr in lrs]
        low = [m - min(points[lr]) for m, lr in zip(means, lrs, strict=True)]
        high = [max(points[lr]) - m for m, lr in zip(means, lrs, strict=True)]
        axes.errorbar(lrs, means, yerr=[low, high], label=label, color=color, marker="o",
                      markersize=3, capsize=2)  # fmt: skip
    axes.set_xscale("log")
    return plots.save_figure(figure, axes, out_dir / "accuracy_vs_lr.png")
