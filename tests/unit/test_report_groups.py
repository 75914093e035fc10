"""Steps to target on sweeps that are not one plain B × LR grid: B capped by the clients'
data, several experiments in one sweep, K clients per step, fits that rest on flagged points.

Steps follow S = S_min + E_min/B at the *measured* B, so every expected B_crit is E_min/S_min
by hand; B_simple/K is the measured 30 over K.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from matplotlib.axes import Axes

from fedbatch.metrics.sweep import RunRecord, collect_runs
from fedbatch.report import steps_to_target
from fedbatch.report.cli import main
from fedbatch.report.steps_figure import Series, draw_steps
from fedbatch.report.trials import group_key, group_labels, groups_from_runs

LRS = (0.05, 0.1, 0.2)


def write_job(
    job_dir: Path,
    batch: int,
    lr: float,
    steps: float,
    overrides: tuple[str, ...] = (),
    measured: float | None = None,
    clients: int = 5,
) -> None:
    """One finished job; its rows carry `effective_batch_size` = `measured` when given."""
    (job_dir / ".hydra").mkdir(parents=True)
    listed = [*overrides, f"client.batch_size={batch}", f"client.lr={lr}"]
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(listed))
    config = {
        "seed": 0,
        "clients_per_round": clients,
        "client": {"batch_size": batch, "accumulate": 1, "lr": lr},
        "batch": {"name": "constant", "per_client": "same"},
    }
    (job_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows: list[dict[str, Any]] = [{"round": 0, "test_accuracy": 0.1}]
    rows += [
        {"round": r, "test_accuracy": 0.3 * r, "effective_batch_size": measured} for r in (1, 2)
    ]
    (job_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    b = measured or batch
    summary = {"steps_to_target": steps, "examples_to_target": steps * b, "rounds_to_target": 10}
    summary["noise_scale_global"] = 30.0
    (job_dir / "summary.json").write_text(json.dumps(summary))


def write_grid(
    sweep: Path,
    batches: dict[int, float],
    curve: Callable[[float], float],
    best: Callable[[int], float],
    lrs: tuple[float, ...] = LRS,
    **job: Any,
) -> None:
    """Jobs over configured B (→ measured B) × LR: the best LR takes `curve(measured)` steps,
    the others 1.5× that. Job numbers continue after those already in `sweep`."""
    number = len(list(sweep.iterdir())) if sweep.is_dir() else 0
    for batch, measured in batches.items():
        for lr in lrs:
            steps = curve(measured) * (1.0 if lr == best(batch) else 1.5)
            write_job(sweep / str(number), batch, lr, steps, measured=measured, **job)
            number += 1


def section(summary: str) -> str:
    return summary[summary.index("## Steps to target") : summary.index("## Plots")]


def test_b_is_the_measured_one_and_runs_capped_alike_are_pooled(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # clients hold 144 samples: B = 256 and 512 both train at 144
    batches = {32: 32.0, 64: 64.0, 128: 128.0, 256: 144.0, 512: 144.0}
    write_grid(sweep, batches, lambda b: 100 + 2000 / b, best=lambda b: 0.1)
    assert main([str(sweep)]) == 0
    text = section((sweep / "report" / "summary.md").read_text())
    assert "n = 4 batch sizes: S_min = 100, E_min = 2000, **B_crit = E_min/S_min = 20**" in text
    assert (
        "B = 256 and 512 configured, 144 measured: capped by the clients' data "
        "(one batch size: their runs are pooled)." in text
    )
    # 100 + 2000/144 = 113.89 steps, the two configured B's best-LR runs as 2 seeds
    assert "| 144 | 0.1 | 0.05, 0.1, 0.2 | 2 | 113.89 |" in text
    assert "| 256 |" not in text and "| 512 |" not in text
    assert "B = 32 configured" not in text  # measured as configured: nothing to say


def spy_figure(monkeypatch: pytest.MonkeyPatch) -> dict[str, Axes]:
    drawn: dict[str, Axes] = {}

    def spy(all_series: list[Series], path: Path) -> Path:
        figure, drawn["axes"] = draw_steps(all_series)
        figure.savefig(path)
        return path

    monkeypatch.setattr(steps_to_target, "write_steps_figure", spy)
    return drawn


def vertical_lines(axes: Axes) -> dict[float, list[str]]:
    """x → the colours of the vertical lines there (both x data equal)."""
    out: dict[float, list[str]] = {}
    for line in axes.get_lines():
        xs = list(line.get_xdata())
        if len(xs) == 2 and xs[0] == xs[1]:
            out.setdefault(round(float(xs[0]), 3), []).append(str(line.get_color()))
    return out


def test_each_experiment_gets_its_own_best_lr_fit_and_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = tmp_path / "sweep"
    batches = {b: float(b) for b in (4, 8, 16, 32)}
    # IID: S = 100 + 2000/B (B_crit 20), best LR 0.1; K = 5 in every run
    iid = ("partition=iid", "model=mlp", "hydra.job.name=a")
    write_grid(sweep, batches, lambda b: 100 + 2000 / b, lambda b: 0.1, overrides=iid)
    # Dirichlet: S = 200 + 8000/B (B_crit 40), best LR 0.1 on its own grid. Pooled, the two
    # partitions' LR 0.1 runs would be averaged as seeds of one cell and fit neither curve
    dirichlet = ("partition=dirichlet", "model=mlp", "hydra.job.name=b")
    curve = lambda b: 200 + 8000 / b  # noqa: E731
    lrs = (0.025, 0.1, 0.4)
    write_grid(sweep, {4: 4.0, 8: 8.0}, curve, lambda b: 0.1, lrs, overrides=dirichlet)
    # ... with K = 10 in its later runs: B_simple/K has no single K there
    write_grid(
        sweep, {16: 16.0, 32: 32.0}, curve, lambda b: 0.1, lrs, overrides=dirichlet, clients=10
    )
    drawn = spy_figure(monkeypatch)
    assert main([str(sweep)]) == 0
    text = section((sweep / "report" / "summary.md").read_text())
    assert "2 experiments (runs that differ in more than B, LR and seed)" in text
    iid_part = text[text.index("### partition=iid") : text.index("### partition=dirichlet")]
    dirichlet_part = text[text.index("### partition=dirichlet") :]
    assert "S_min = 100, E_min = 2000, **B_crit = E_min/S_min = 20**" in iid_part
    assert "| 8 | 0.1 | 0.05, 0.1, 0.2 | 1 | 350 |" in iid_part  # 100 + 2000/8
    assert "compare B_crit with B_simple/K = 6," in iid_part  # 30 / 5
    assert "S_min = 200, E_min = 8000, **B_crit = E_min/S_min = 40**" in dirichlet_part
    assert "| 8 | 0.1 | 0.025, 0.1, 0.4 | 1 | 1200 |" in dirichlet_part  # 200 + 8000/8
    assert "K (`clients_per_round`) varies within these runs (5, 10)" in dirichlet_part
    axes = drawn["axes"]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert "partition=iid: B_simple/K per client (K = 5) = 6" in legend
    assert "partition=iid: global B_simple (measured, pooled data) = 30" in legend
    assert "partition=dirichlet: global B_simple (measured, pooled data) = 30" in legend
    assert not any(label.startswith("partition=dirichlet: B_simple/K") for label in legend)
    assert not any("model=" in label or "hydra" in label for label in legend)
    lines = vertical_lines(axes)
    # B_crit, B_simple/K and B_simple per series, in the series' colour
    assert (lines[20.0], lines[6.0], lines[40.0]) == (["C0"], ["C0"], ["C1"])
    assert lines[30.0] == ["C0", "C1"]  # both measured B_simple = 30


def test_too_few_points_inside_their_grid_fit_all_and_say_so(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    batches = {b: float(b) for b in (4, 8, 16, 32)}
    # best LR 0.1 (inside) at B = 4, 8; 0.2 (the grid's top) at B = 16, 32
    write_grid(sweep, batches, lambda b: 100 + 2000 / b, lambda b: 0.1 if b < 16 else 0.2)
    assert main([str(sweep)]) == 0
    text = section((sweep / "report" / "summary.md").read_text())
    assert "n = 4 batch sizes: S_min = 100, E_min = 2000, **B_crit = E_min/S_min = 20**" in text
    assert (
        "This fit rests on flagged points (upper bounds): only 2 B had their best LR inside "
        "its grid, 3 needed to fit those alone." in text
    )
    assert "On all n =" not in text
    assert collect_runs(sweep)[0].config["clients_per_round"] == 5


def test_groups_are_keyed_by_every_override_but_b_lr_seed_and_hydra() -> None:
    def run(name: str, **overrides: str) -> RunRecord:
        config = {"client": {"batch_size": 8}, "batch": {"name": "constant"}}
        return RunRecord(Path(name), name, overrides=overrides, status="ok", config=config)

    within = {"client.batch_size": "8", "client.accumulate": "2", "client.lr": "0.1", "seed": "1"}
    runs = [
        run("0", **within, **{"hydra.job.name": "x"}),
        run("1", **{"hydra.sweep.dir": "/y"}),
        run("2", partition="dirichlet", model="cnn"),
        run("3", model="cnn"),
    ]
    assert [group_key(r) for r in runs[:2]] == [(), ()]
    groups, _ = groups_from_runs(runs)
    assert [len(group.trials) for group in groups] == [2, 1, 1]
    assert group_labels(groups) == [
        "model=default, partition=default",
        "model=cnn, partition=dirichlet",
        "model=cnn, partition=default",
    ]
