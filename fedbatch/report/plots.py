"""PNG plots of per-round metrics, one line per run.

Every plot is a function `(runs, out_dir) -> Path | None` registered in `PLOTS` by name; it
returns the file it wrote, or None when no run has the data it needs. A later study adds a
plot by decorating a function with `@register_plot("name")`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedbatch.metrics.sweep import RunRecord

PlotFunction = Callable[[list[RunRecord], Path], Path | None]
PLOTS: dict[str, PlotFunction] = {}

LEGEND_INSIDE_MAX_LINES = 6
MARKERS_MAX_POINTS = 40
LOG_SCALE_MIN_RATIO = 100.0


def register_plot(name: str) -> Callable[[PlotFunction], PlotFunction]:
    def register(plot: PlotFunction) -> PlotFunction:
        PLOTS[name] = plot
        return plot

    return register


def write_plots(
    runs: list[RunRecord], out_dir: Path, names: Iterable[str] | None = None
) -> list[Path]:
    """Run the registered plots (all, or those named) and return the files written."""
    written = []
    for name in PLOTS if names is None else names:
        path = PLOTS[name](runs, out_dir)
        if path is not None:
            written.append(path)
    return written


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def series(run: RunRecord, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of `run` where both metrics are numbers."""
    xs, ys = [], []
    for row in run.rows:
        x, y = _number(row.get(x_key)), _number(row.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def shared_overrides(runs: list[RunRecord]) -> dict[str, str]:
    """Overrides every run has with the same value (context for a title, not a legend)."""
    if len(runs) < 2:
        return {}
    first = runs[0].overrides
    return {k: v for k, v in first.items() if all(run.overrides.get(k) == v for run in runs)}


def line_labels(runs: list[RunRecord]) -> list[str]:
    """Legend labels: the overrides that tell runs apart, else the run's own label."""
    if len(runs) < 2:
        return [run.label for run in runs]
    shared = shared_overrides(runs)
    labels = []
    for run in runs:
        varying = [f"{k}={v}" for k, v in run.overrides.items() if k not in shared]
        labels.append(", ".join(varying) or run.label)
    return labels


def line_colors(count: int) -> list[Any]:
    if count <= 10:
        return [f"C{index}" for index in range(count)]
    return [colormaps["viridis"](index / max(count - 1, 1)) for index in range(count)]


def _new_axes(runs: list[RunRecord], title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    shared = ", ".join(f"{k}={v}" for k, v in shared_overrides(runs).items())
    if shared:
        title = f"{title}\n{shared if len(shared) <= 90 else shared[:87] + '...'}"
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if xlabel == "round":
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: Figure, axes: Axes, path: Path, handles: list[Any] | None = None) -> Path:
    if handles is None:
        handles = axes.get_legend_handles_labels()[0]
    if len(handles) > LEGEND_INSIDE_MAX_LINES:  # many runs: keep the legend off the data
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    else:
        axes.legend(handles=handles, loc="best", fontsize=8)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _marker(xs: list[float]) -> str | None:
    return "o" if len(xs) <= MARKERS_MAX_POINTS else None


def _use_log_scale_if_wide(axes: Axes, values: list[float]) -> None:
    finite = [value for value in values if math.isfinite(value)]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= LOG_SCALE_MIN_RATIO:
        axes.set_yscale("log")


def _plot_metric(
    runs: list[RunRecord], path: Path, x_key: str, y_key: str, labels: tuple[str, str, str]
) -> Path | None:
    title, xlabel, ylabel = labels
    figure, axes = _new_axes(runs, title, xlabel, ylabel)
    drawn = False
    for run, label, color in zip(runs, line_labels(runs), line_colors(len(runs)), strict=True):
        xs, ys = series(run, x_key, y_key)
        if xs:
            axes.plot(xs, ys, label=label, color=color, marker=_marker(xs), markersize=3)
            drawn = True
    return _save(figure, axes, path) if drawn else None


@register_plot("accuracy")
def plot_accuracy(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Test accuracy per round (round 0 is the initial model)."""
    labels = ("Test accuracy per round", "round", "test accuracy")
    return _plot_metric(runs, out_dir / "accuracy.png", "round", "test_accuracy", labels)


def _solid_and_dashed(
    runs: list[RunRecord],
    path: Path,
    axis_labels: tuple[str, str, str],
    keys: tuple[str, str, str],
    names: tuple[str, str],
    log_if_wide: bool = False,
) -> Path | None:
    """Two metrics per run against one x: `keys` = (x, solid, dashed), one colour per run."""
    title, xlabel, ylabel = axis_labels
    x_key, solid_key, dashed_key = keys
    figure, axes = _new_axes(runs, title, xlabel, ylabel)
    handles: list[Any] = []
    plotted: list[float] = []
    for run, label, color in zip(runs, line_labels(runs), line_colors(len(runs)), strict=True):
        solid_x, solid_y = series(run, x_key, solid_key)
        dashed_x, dashed_y = series(run, x_key, dashed_key)
        if solid_x:
            axes.plot(solid_x, solid_y, color=color, marker=_marker(solid_x), markersize=3)
        if dashed_x:
            axes.plot(dashed_x, dashed_y, color=color, linestyle="--")
        if solid_x or dashed_x:
            handles.append(Line2D([], [], color=color, label=label))
            plotted += solid_y + dashed_y
    if not handles:
        return None
    if log_if_wide:
        _use_log_scale_if_wide(axes, plotted)
    handles += [
        Line2D([], [], color="black", label=names[0]),
        Line2D([], [], color="black", linestyle="--", label=names[1]),
    ]
    return _save(figure, axes, path, handles)


@register_plot("loss")
def plot_loss(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Test loss (solid) and train loss (dashed) per round, one colour per run."""
    return _solid_and_dashed(
        runs,
        out_dir / "loss.png",
        ("Loss per round", "round", "loss"),
        ("round", "test_loss", "train_loss"),
        ("test loss", "train loss"),
        log_if_wide=True,
    )


@register_plot("stream")
def plot_stream(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Streaming runs: held-out (solid) and prequential (dashed) accuracy over virtual time."""
    return _solid_and_dashed(
        runs,
        out_dir / "stream.png",
        ("Accuracy over virtual time", "virtual seconds", "accuracy"),
        ("virtual_seconds", "test_accuracy", "prequential_accuracy"),
        ("test accuracy", "prequential accuracy (test-then-train)"),
    )


@register_plot("time")
def plot_time(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Test accuracy against measured wall-clock time since the run started."""
    labels = ("Test accuracy vs wall-clock time", "elapsed seconds (measured)", "test accuracy")
    return _plot_metric(runs, out_dir / "time.png", "elapsed_seconds", "test_accuracy", labels)


# Batch-size science: drawn only for runs that recorded them.
_ROUND_METRICS = {
    "batch_size": ("Batch size per round", "B (mean over clients)"),
    "lr": ("Learning rate per round", "client LR (mean over steps and clients)"),
    "noise_scale": ("Gradient noise scale", "B_simple = tr(Σ)/|G|² (running)"),
    "grad_norm_mean": ("Gradient norm", "mean mini-batch gradient L2 norm"),
}


def _round_metric_plot(key: str) -> PlotFunction:
    title, ylabel = _ROUND_METRICS[key]

    def plot(runs: list[RunRecord], out_dir: Path) -> Path | None:
        return _plot_metric(runs, out_dir / f"{key}.png", "round", key, (title, "round", ylabel))

    return plot


for _key in _ROUND_METRICS:
    register_plot(_key)(_round_metric_plot(_key))
