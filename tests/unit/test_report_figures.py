"""Report figures say only what was measured, keep legends off the data, and `--out` leaves
the source directory untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedbatch.report import plots
from fedbatch.report.cli import main


def write_run(run_dir: Path, rows: list[dict[str, Any]], overrides: list[str]) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run_dir / "summary.json").write_text(json.dumps({"test_accuracy": rows[-1]["test_accuracy"]}))
    return run_dir


def rows(rounds: int, clock: bool = False, stream: bool = False) -> list[dict[str, Any]]:
    out = []
    for r in range(rounds + 1):
        row: dict[str, Any] = {"round": r, "test_accuracy": 0.1 + 0.2 * r, "test_loss": 2.0 - r}
        row |= {"train_loss": 2.1 - r if r else None, "elapsed_seconds": 0.3 * r}
        if clock or stream:
            row["virtual_seconds"] = 10.0 * r
        if stream:
            row["prequential_accuracy"] = 0.1 * r if r else None
        out.append(row)
    return out


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[Figure, Axes]]:
    """Every figure the report saves, by file name, to inspect titles, labels, legends."""
    saved: dict[str, tuple[Figure, Axes]] = {}
    original = plots.save_figure

    def spy(figure: Figure, axes: Axes, path: Path, handles: list[Any] | None = None) -> Path:
        saved[path.name] = (figure, axes)
        return original(figure, axes, path, handles)

    monkeypatch.setattr(plots, "save_figure", spy)
    return saved


def legend_texts(axes: Axes) -> list[str]:
    legend = axes.get_legend()
    return [text.get_text() for text in legend.get_texts()] if legend else []


def legend_outside(figure: Figure, axes: Axes) -> bool:
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    legend = axes.get_legend()
    inside = axes.get_window_extent(renderer)
    return legend is not None and legend.get_window_extent(renderer).x0 >= inside.x1


def drawn_lines(axes: Axes, style: str) -> list[tuple[str, list[float]]]:
    """(colour, y data) of each data line drawn in `style` (legend proxies are not drawn)."""
    return [
        (str(line.get_color()), [float(y) for y in line.get_ydata()])
        for line in axes.get_lines()
        if line.get_linestyle() == style
    ]


def test_clock_only_run_is_plotted_against_virtual_time_and_never_called_a_stream(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    run = write_run(tmp_path / "run", rows(3, clock=True), ["clock=devices"])
    assert main([str(run)]) == 0
    names = {path.name for path in (run / "report").iterdir()}
    assert "accuracy_vs_virtual_time.png" in names
    assert "accuracy_vs_wall_clock_time.png" not in names  # its clock is the virtual one
    assert not any("stream" in name for name in names)
    _, axes = drawn["accuracy_vs_virtual_time.png"]
    assert axes.get_title().startswith("Test accuracy vs virtual time")
    assert axes.get_xlabel() == "virtual seconds (simulated clock)"
    assert not any("prequential" in text for text in legend_texts(axes))


def test_stream_run_adds_prequential_accuracy(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    run = write_run(tmp_path / "run", rows(3, stream=True), ["stream=poisson"])
    assert main([str(run)]) == 0
    _, axes = drawn["accuracy_vs_virtual_time.png"]
    assert axes.get_title().startswith("Test and prequential accuracy vs virtual time")
    assert "prequential accuracy (test-then-train)" in legend_texts(axes)


def test_run_without_clock_uses_measured_wall_clock_time(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    run = write_run(tmp_path / "run", rows(3), ["client.batch_size=8"])
    assert main([str(run)]) == 0
    names = {path.name for path in (run / "report").iterdir()}
    assert {"accuracy_vs_round.png", "loss_vs_round.png"} <= names
    assert "accuracy_vs_virtual_time.png" not in names
    _, axes = drawn["accuracy_vs_wall_clock_time.png"]
    assert axes.get_xlabel() == "wall-clock seconds (measured)"


def test_legends_sit_outside_the_axes(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", rows(3), ["client.batch_size=8"])
    write_run(sweep / "1", rows(3, clock=True), ["client.batch_size=16"])
    assert main([str(sweep)]) == 0
    assert len(drawn) >= 4
    for name, (figure, axes) in drawn.items():
        assert legend_outside(figure, axes), name


def test_loss_plot_draws_the_global_models_train_loss_else_names_the_clients_loss(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    sweep = tmp_path / "sweep"
    with_global = rows(3)
    for row in with_global:  # the clients' running loss is there too, and must not be drawn
        row["global_train_loss"] = 2.0 - 0.5 * row["round"]
    write_run(sweep / "0", with_global, ["client.batch_size=8"])
    write_run(sweep / "1", rows(3), ["client.batch_size=16"])  # no global_train_loss
    assert main([str(sweep)]) == 0
    figure, axes = drawn["loss_vs_round.png"]
    # run 0 (C0): its global-model loss dashed; run 1 (C1): its clients' running loss dotted
    assert drawn_lines(axes, "--") == [("C0", [2.0, 1.5, 1.0, 0.5])]
    assert drawn_lines(axes, ":") == [("C1", pytest.approx([1.1, 0.1, -0.9]))]  # 2.1 − r
    legend = legend_texts(axes)
    assert "train loss (global model)" in legend
    assert "clients' running loss (local models)" in legend
    assert "train loss" not in legend and legend_outside(figure, axes)


def noise_rows() -> list[dict[str, Any]]:
    """Rounds 0..4: the running global B_simple 40, 50, 60, 70 with SE 4, 5, null, 7 (round
    3 has none: a gap), the exact pooled value 45 at every round; local likewise at half."""
    out = rows(4)
    values, errors = (None, 40.0, 50.0, 60.0, 70.0), (None, 4.0, 5.0, None, 7.0)
    for row, value, se in zip(out, values, errors, strict=True):
        row |= {"noise_scale_global": value, "noise_scale_global_se": se}
        row |= {"noise_scale_exact_global": 45.0}
        row |= {"noise_scale": value and value / 2, "noise_scale_local_se": se and se / 2}
        row |= {"noise_scale_exact": 22.5}
    return out


@pytest.mark.parametrize(
    ("name", "scale"),
    [("noise_scale_global_vs_round.png", 1.0), ("noise_scale_local_vs_round.png", 0.5)],
)
def test_noise_scale_plots_draw_exact_reference_and_se_band(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]], name: str, scale: float
) -> None:
    sweep = tmp_path / "sweep"
    write_run(sweep / "0", noise_rows(), ["client.batch_size=8"])
    write_run(sweep / "1", rows(3), ["client.batch_size=16"])  # measured no noise scale
    assert main([str(sweep)]) == 0
    figure, axes = drawn[name]
    assert drawn_lines(axes, "-") == [("C0", [v * scale for v in (40, 50, 60, 70)])]
    assert drawn_lines(axes, "--") == [("C0", [45 * scale] * 5)]  # exact, the run's colour
    # one band per stretch with an SE (round 3 has none): rounds 1–2 from 40 − 4 to 50 + 5,
    # and round 4 alone, 70 ± 7 (a bar)
    bands = [band.get_paths()[0].vertices for band in axes.collections]
    assert [(min(v[:, 0]), max(v[:, 0])) for v in bands] == [(1, 2), (4, 4)]
    assert [(min(v[:, 1]), max(v[:, 1])) for v in bands] == [
        (36 * scale, 55 * scale),
        (63 * scale, 77 * scale),
    ]
    expected = ["client.batch_size=8", "running estimate", "± standard error"]
    assert legend_texts(axes) == [*expected, "exact (per-example)"]
    assert legend_outside(figure, axes)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_out_leaves_the_source_tree_byte_for_byte_untouched(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for job, batch_size in enumerate((8, 16, 32)):
        write_run(sweep / str(job), rows(2), [f"client.batch_size={batch_size}"])
    before = snapshot(sweep)
    out = tmp_path / "elsewhere"
    assert main([str(sweep), "--out", str(out)]) == 0
    assert snapshot(sweep) == before
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "2"]
    assert (out / "sweep.csv").read_text().count("\n") == 4  # header + 3 jobs
    assert (out / "summary.md").is_file()


def test_accuracy_is_drawn_against_the_cumulative_local_steps(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    """Two runs with the same accuracy per round, one taking 5× fewer steps per round:
    against steps, the second's line ends at a fifth of the first's (hand-summed)."""
    for name, steps in (("small_b", 90.0), ("large_b", 18.0)):
        run = [row | ({"steps_per_client": steps} if row["round"] else {}) for row in rows(3)]
        write_run(tmp_path / "sweep" / name, run, [f"client.batch_size={name}"])
    main([str(tmp_path / "sweep")])
    _, axes = drawn["accuracy_vs_steps.png"]
    lines = {tuple(line.get_xdata()): list(line.get_ydata()) for line in axes.get_lines()}
    assert lines[(0.0, 90.0, 180.0, 270.0)] == lines[(0.0, 18.0, 36.0, 54.0)]
    assert lines[(0.0, 18.0, 36.0, 54.0)] == pytest.approx([0.1, 0.3, 0.5, 0.7])


def test_final_accuracy_is_drawn_against_the_lr_a_line_per_batch_size(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    """Two B × two LRs × two seeds: each point is the mean of its two seeds (hand-computed)."""
    final = {("8", "0.1"): (0.9, 0.8), ("8", "1.0"): (0.5, 0.7), ("64", "0.1"): (0.6, 0.6)}
    final |= {("64", "1.0"): (0.85, 0.95)}
    for (batch, lr), accuracies in final.items():
        for seed, accuracy in enumerate(accuracies):
            run = rows(1)
            run[-1]["test_accuracy"] = accuracy
            overrides = [f"client.batch_size={batch}", f"client.lr={lr}", f"seed={seed}"]
            write_run(tmp_path / "sweep" / f"{batch}_{lr}_{seed}", run, overrides)
    main([str(tmp_path / "sweep")])
    _, axes = drawn["accuracy_vs_lr.png"]
    means = {text: None for text in legend_texts(axes)}
    assert set(means) == {"client.batch_size=8", "client.batch_size=64"}
    data = [container.lines[0] for container in axes.containers]  # each errorbar's line
    lines = [[round(float(y), 9) for y in line.get_ydata()] for line in data]
    assert sorted(lines) == [[0.6, 0.9], [0.85, 0.6]]
    assert axes.get_xscale() == "log"


def test_final_probes_are_drawn_against_the_measured_batch_size(
    tmp_path: Path, drawn: dict[str, tuple[Figure, Axes]]
) -> None:
    """Two B × two seeds that probed their final model: each panel's point is the mean of
    its two seeds (hand-computed), at the B the clients measured, not the configured one."""
    finals = {
        ("8", 0): (0.30, 1.0, 5.0, 0.02),
        ("8", 1): (0.32, 3.0, 7.0, 0.04),
        ("512", 0): (0.31, 9.0, 40.0, 0.10),
        ("512", 1): (0.29, 11.0, 60.0, 0.20),
    }
    keys = ("global_train_loss", "final_sharpness", "final_hessian_top", "generalization_gap")
    for (batch, seed), values in finals.items():
        run_dir = write_run(
            tmp_path / "sweep" / f"{batch}_{seed}",
            [row | {"effective_batch_size": min(int(batch), 144)} for row in rows(2)],
            [f"client.batch_size={batch}", f"seed={seed}"],
        )
        (run_dir / "summary.json").write_text(json.dumps(dict(zip(keys, values, strict=True))))
    main([str(tmp_path / "sweep")])
    figure, legend_axes = drawn["sharpness_vs_batch.png"]
    panels = figure.axes
    assert legend_outside(figure, legend_axes)
    means = []
    for axes in panels:
        (container,) = axes.containers
        assert list(container.lines[0].get_xdata()) == [8.0, 144.0]
        means.append([round(float(y), 9) for y in container.lines[0].get_ydata()])
    assert means == [[0.31, 0.30], [2.0, 10.0], [6.0, 50.0], [0.03, 0.15]]
