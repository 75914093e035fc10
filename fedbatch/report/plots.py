"""PNG plots of per-round metrics, one line per run.

Every plot is a function `(runs, out_dir) -> Path | None` registered in `PLOTS` by name; it
returns the file it wrote, or None when no run has the data it needs. A later study adds a
plot by decorating a function with `@register_plot("name")` in a module that the package
imports (`fedbatch/report/__init__.py`); `round_plots.py` holds the batch-size science.

A file is named by what it shows, `<y>_vs_<x>.png`, and shows only what was measured: time
is the virtual clock's (`virtual_seconds`) for runs with a clock or a stream, and the
measured wall-clock time only for runs without one (a simulator's wall time says nothing
about the simulated devices). Legends sit outside the axes, never on the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
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


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def series(run: RunRecord, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of `run` where both metrics are numbers."""
    xs, ys = [], []
    for row in run.rows:
        x, y = number(row.get(x_key)), number(row.get(y_key))
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


def new_axes(runs: list[RunRecord], title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
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


def save_figure(figure: Figure, axes: Axes, path: Path, handles: list[Any] | None = None) -> Path:
    """Save with the legend to the right of the axes; `bbox_inches` widens the image for it."""
    if handles is None:
        handles = axes.get_legend_handles_labels()[0]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def marker_for(xs: list[float]) -> str | None:
    return "o" if len(xs) <= MARKERS_MAX_POINTS else None


def _use_log_scale_if_wide(axes: Axes, values: list[float]) -> None:
    finite = [value for value in values if math.isfinite(value)]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= LOG_SCALE_MIN_RATIO:
        axes.set_yscale("log")


RunFilter = Callable[[RunRecord], bool]


def _every_run(run: RunRecord) -> bool:
    return True


def has_virtual_time(run: RunRecord) -> bool:
    """A clock or a stream ran: its rows carry virtual seconds."""
    return any(number(row.get("virtual_seconds")) is not None for row in run.rows)


def _without_virtual_time(run: RunRecord) -> bool:
    return not has_virtual_time(run)


def plot_metric(
    runs: list[RunRecord],
    path: Path,
    keys: tuple[str, str],
    labels: tuple[str, str, str],
    include: RunFilter = _every_run,
) -> Path | None:
    """One metric against one x, a line per included run (colours fixed over all runs)."""
    (x_key, y_key), (title, xlabel, ylabel) = keys, labels
    figure, axes = new_axes(runs, title, xlabel, ylabel)
    drawn = False
    for run, label, color in zip(runs, line_labels(runs), line_colors(len(runs)), strict=True):
        xs, ys = series(run, x_key, y_key) if include(run) else ([], [])
        if xs:
            axes.plot(xs, ys, label=label, color=color, marker=marker_for(xs), markersize=3)
            drawn = True
    return save_figure(figure, axes, path) if drawn else None


@register_plot("accuracy_vs_round")
def plot_accuracy(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Test accuracy per round (round 0 is the initial model)."""
    labels = ("Test accuracy per round", "round", "test accuracy")
    path = out_dir / "accuracy_vs_round.png"
    return plot_metric(runs, path, ("round", "test_accuracy"), labels)


Dashed = tuple[str, str, str]  # (row key, legend name, line style)


def _solid_and_dashed(
    runs: list[RunRecord],
    path: Path,
    axis_labels: tuple[str, str, str],
    solid: tuple[str, str, str],
    dashed: Sequence[Dashed],
    log_if_wide: bool = False,
    include: RunFilter = _every_run,
) -> Path | None:
    """Two metrics per run against one x, one colour per run: `solid` = (x key, key, name);
    the dashed line is the first of `dashed` that the run has, in that entry's style.

    The line-style key is added to the legend only when some run has a dashed metric, with
    one entry per kind of dashed line drawn.
    """
    title, xlabel, ylabel = axis_labels
    x_key, solid_key, solid_name = solid
    figure, axes = new_axes(runs, title, xlabel, ylabel)
    handles: list[Any] = []
    plotted: list[float] = []
    used: list[Dashed] = []
    for run, label, color in zip(runs, line_labels(runs), line_colors(len(runs)), strict=True):
        if not include(run):
            continue
        solid_x, solid_y = series(run, x_key, solid_key)
        dashed_x: list[float] = []
        dashed_y: list[float] = []
        for option in dashed:
            dashed_x, dashed_y = series(run, x_key, option[0])
            if dashed_x:
                axes.plot(dashed_x, dashed_y, color=color, linestyle=option[2])
                if option not in used:
                    used.append(option)
                break
        if solid_x:
            axes.plot(solid_x, solid_y, color=color, marker=marker_for(solid_x), markersize=3)
        if solid_x or dashed_x:
            handles.append(Line2D([], [], color=color, label=label))
            plotted += solid_y + dashed_y
    if not handles:
        return None
    if log_if_wide:
        _use_log_scale_if_wide(axes, plotted)
    if used:
        handles.append(Line2D([], [], color="black", label=solid_name))
        handles += [
            Line2D([], [], color="black", linestyle=style, label=name)
            for _, name, style in sorted(used, key=dashed.index)
        ]
    return save_figure(figure, axes, path, handles)


# The global model's train loss when the run measured it; the clients' running loss of their
# local models (`train_loss`, averaged while they train away from the global model) is not
# the same quantity, so it is only the fallback, drawn in its own style and named as such.
TRAIN_LOSSES: tuple[Dashed, ...] = (
    ("global_train_loss", "train loss (global model)", "--"),
    ("train_loss", "clients' running loss (local models)", ":"),
)


@register_plot("loss_vs_round")
def plot_loss(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Test loss (solid) and the global model's train loss (dashed) per round, one colour
    per run; runs without `global_train_loss` draw the clients' running loss (dotted)."""
    return _solid_and_dashed(
        runs,
        out_dir / "loss_vs_round.png",
        ("Loss per round", "round", "loss"),
        ("round", "test_loss", "test loss"),
        TRAIN_LOSSES,
        log_if_wide=True,
    )


@register_plot("accuracy_vs_virtual_time")
def plot_virtual_time(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Runs with a clock or stream: test accuracy (solid) over virtual time, and for streams
    the prequential accuracy (dashed); the title names only what is drawn."""
    streams = any(
        has_virtual_time(run) and series(run, "virtual_seconds", "prequential_accuracy")[0]
        for run in runs
    )
    title = "Test and prequential accuracy" if streams else "Test accuracy"
    ylabel = "accuracy" if streams else "test accuracy"
    return _solid_and_dashed(
        runs,
        out_dir / "accuracy_vs_virtual_time.png",
        (f"{title} vs virtual time", "virtual seconds (simulated clock)", ylabel),
        ("virtual_seconds", "test_accuracy", "test accuracy"),
        (("prequential_accuracy", "prequential accuracy (test-then-train)", "--"),),
        include=has_virtual_time,
    )


@register_plot("accuracy_vs_wall_clock_time")
def plot_wall_clock(runs: list[RunRecord], out_dir: Path) -> Path | None:
    """Runs without a virtual clock: test accuracy against measured wall-clock time."""
    labels = ("Test accuracy vs wall-clock time", "wall-clock seconds (measured)", "test accuracy")
    path = out_dir / "accuracy_vs_wall_clock_time.png"
    keys = ("elapsed_seconds", "test_accuracy")
    return plot_metric(runs, path, keys, labels, include=_without_virtual_time)
