"""Per-round batch-size science, drawn only for runs that recorded it: B, LR, gradient norm,
and the two noise scales with everything measured about them.

A noise-scale plot draws the running estimate (solid), its standard error as a band
(value ± `_se`, wherever both are recorded, a bar for a lone round; rounds without an SE
leave a gap rather than a guess), and the exact per-example reference when the run computed
one (dashed, same colour): an estimate shown without its spread and its reference invites
reading noise as a trend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fedbatch.metrics.sweep import RunRecord
from fedbatch.report import plots
from fedbatch.report.plots import PlotFunction, register_plot

# Row key -> (file stem, title, y label). `noise_scale` is the within-client (local)
# B_simple, also written as `noise_scale_local`.
ROUND_METRICS = {
    "batch_size": ("batch_size", "Batch size per round", "B (mean over clients)"),
    "lr": ("lr", "Learning rate per round", "client LR (mean over steps and clients)"),
    "noise_scale": (
        "noise_scale_local",
        "Local gradient noise scale (within clients)",
        "local B_simple = tr(Σ)/|G|² of a client's data (running)",
    ),
    "noise_scale_global": (
        "noise_scale_global",
        "Global gradient noise scale (pooled training data)",
        "global B_simple = tr(Σ)/|G|² (running)",
    ),
    "grad_norm_mean": ("grad_norm", "Gradient norm", "mean mini-batch gradient L2 norm"),
}
# Noise-scale row key -> (its standard error's key, its exact per-example reference's key).
NOISE_REFERENCES = {
    "noise_scale": ("noise_scale_local_se", "noise_scale_exact"),
    "noise_scale_global": ("noise_scale_global_se", "noise_scale_exact_global"),
}
EXACT_LABEL = "exact (per-example)"
BAND_ALPHA = 0.2


def se_bands(
    run: RunRecord, key: str, se_key: str
) -> list[tuple[list[float], list[float], list[float]]]:
    """(rounds, value − SE, value + SE) for each unbroken stretch of rows with both."""
    bands: list[tuple[list[float], list[float], list[float]]] = []
    current: tuple[list[float], list[float], list[float]] = ([], [], [])
    for row in run.rows:
        x, y = plots.number(row.get("round")), plots.number(row.get(key))
        se = plots.number(row.get(se_key))
        if x is None or y is None or se is None:
            if current[0]:
                bands.append(current)
            current = ([], [], [])
            continue
        current[0].append(x)
        current[1].append(y - se)
        current[2].append(y + se)
    if current[0]:
        bands.append(current)
    return bands


def _draw_run(axes: Axes, run: RunRecord, key: str, color: Any) -> tuple[bool, bool, bool]:
    """Draw one run's estimate, band and reference; (drawn, any band, any reference)."""
    se_key, exact_key = NOISE_REFERENCES[key]
    xs, ys = plots.series(run, "round", key)
    if xs:
        axes.plot(xs, ys, color=color, marker=plots.marker_for(xs), markersize=3)
    bands = se_bands(run, key, se_key)
    for rounds, low, high in bands:
        if len(rounds) > 1:
            axes.fill_between(rounds, low, high, color=color, alpha=BAND_ALPHA, linewidth=0)
        else:  # a band one round wide has no area: a bar shows it
            axes.vlines(rounds, low, high, colors=[color], alpha=2 * BAND_ALPHA, linewidth=4)
    exact_x, exact_y = plots.series(run, "round", exact_key)
    if exact_x:
        axes.plot(exact_x, exact_y, color=color, linestyle="--")
    return bool(xs or exact_x), bool(bands), bool(exact_x)


def plot_noise_scale(runs: list[RunRecord], path: Path, key: str) -> Path | None:
    """A noise scale per round: estimate, ± SE band and exact reference, a colour per run."""
    _, title, ylabel = ROUND_METRICS[key]
    figure, axes = plots.new_axes(runs, title, "round", ylabel)
    handles: list[Any] = []
    any_band = any_exact = False
    labels, colors = plots.line_labels(runs), plots.line_colors(len(runs))
    for run, label, color in zip(runs, labels, colors, strict=True):
        drawn, band, exact = _draw_run(axes, run, key, color)
        if drawn:
            handles.append(Line2D([], [], color=color, label=label))
        any_band, any_exact = any_band or band, any_exact or exact
    if not handles:
        return None
    if any_band or any_exact:
        handles.append(Line2D([], [], color="black", label="running estimate"))
    if any_band:
        handles.append(Patch(color="black", alpha=BAND_ALPHA, label="± standard error"))
    if any_exact:
        handles.append(Line2D([], [], color="black", linestyle="--", label=EXACT_LABEL))
    return plots.save_figure(figure, axes, path, handles)


def _round_metric_plot(key: str) -> PlotFunction:
    stem, title, ylabel = ROUND_METRICS[key]

    def plot(runs: list[RunRecord], out_dir: Path) -> Path | None:
        path = out_dir / f"{stem}_vs_round.png"
        if key in NOISE_REFERENCES:
            return plot_noise_scale(runs, path, key)
        return plots.plot_metric(runs, path, ("round", key), (title, "round", ylabel))

    return plot


for _key, (_stem, *_) in ROUND_METRICS.items():
    register_plot(f"{_stem}_vs_round")(_round_metric_plot(_key))


def accuracy_by_steps(run: RunRecord) -> tuple[list[float], list[float]]:
    """(cumulative local steps per client, test accuracy) at each evaluated round: the
    steps are the rounds' `steps_per_client` (the sampled clients' mean) summed so far."""
    total, steps, accuracy = 0.0, [], []
    for row in run.rows:
        total += plots.number(row.get("steps_per_client")) or 0.0
        value = plots.number(row.get("test_accuracy"))
        if value is not None:
            steps.append(total)
            accuracy.append(value)
    return (steps, accuracy) if total > 0 else ([], [])


@register_plot("accuracy_vs_steps")
def plot_accuracy_vs_steps(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Test accuracy against the local steps taken: at equal epochs a larger B takes fewer
    steps, so runs that match per epoch part here (Smith et al. 2018)."""
    title = "Test accuracy per local SGD steps"
    figure, axes = plots.new_axes(runs, title, "local steps per client (cumulative)", "accuracy")
    drawn: list[float] = []
    colors = plots.line_colors(len(runs))
    for run, label, color in zip(runs, plots.line_labels(runs), colors, strict=True):
        xs, ys = accuracy_by_steps(run)
        if xs:
            axes.plot(xs, ys, label=label, color=color, marker=plots.marker_for(xs), markersize=3)
            drawn += [x for x in xs if x > 0]
    if not drawn:
        return None
    if max(drawn) / min(drawn) > 100:
        axes.set_xscale("symlog", linthresh=min(drawn))
    return plots.save_figure(figure, axes, out_dir / "accuracy_vs_steps.png")
