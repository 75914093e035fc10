"""`python -m fedbatch.report` on a fake batch-size sweep: steps_to_target.png and its fit.

The sweep's steps follow S = 100 + 2000/B at the effective B (batch_size × accumulate), so
the fit must say S_min = 100, E_min = 2000 and B_crit = 20 (hand-computed: 2000/100). Its
rows carry no `effective_batch_size`, so B comes from the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fedbatch.metrics.sweep import collect_runs
from fedbatch.report.cli import main
from fedbatch.report.trials import effective_batch_size

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_job(
    job_dir: Path,
    config: dict[str, Any],
    overrides: list[str],
    summary: dict[str, Any] | None,
    rows: list[dict[str, Any]] | None = None,
) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = rows or [{"round": r, "test_accuracy": 0.1 + 0.2 * r} for r in range(4)]
    (job_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if summary is not None:
        (job_dir / "summary.json").write_text(json.dumps(summary))


def config_for(batch_size: Any, lr: float, seed: int = 0, accumulate: int = 2) -> dict[str, Any]:
    return {
        "seed": seed,
        "clients_per_round": 5,
        "client": {"batch_size": batch_size, "accumulate": accumulate, "lr": lr},
        "batch": {"name": "constant", "per_client": "same"},
    }


def summary_for(steps: float | None, b_eff: float, noise: float | None = 30.0) -> dict[str, Any]:
    reached = steps is not None
    return {
        "test_accuracy": 0.9 if reached else 0.5,
        "rounds_to_target": 10 if reached else None,
        "steps_to_target": steps,
        "examples_to_target": steps * b_eff if reached else None,
        "noise_scale_global": noise,
    }


def build_sweep(root: Path, batch_sizes: list[int]) -> Path:
    """Jobs over client.batch_size × client.lr; accumulate = 2 is in no override.

    At each B the LR 0.1 reaches the target in S = 100 + 2000/B_eff steps and the others
    take 1.5× that, except at batch_size 32 where 0.2 (the grid's top) is the best. A
    batch_size of 64 never reaches the target.
    """
    sweep = root / "multirun" / "sweep"
    job = 0
    for batch_size in batch_sizes:
        b_eff = 2 * batch_size
        for lr in (0.05, 0.1, 0.2):
            best = 0.2 if batch_size == 32 else 0.1
            ideal = 100 + 2000 / b_eff
            steps = None if batch_size == 64 else ideal * (1.0 if lr == best else 1.5)
            overrides = [f"client.batch_size={batch_size}", f"client.lr={lr}"]
            write_job(
                sweep / str(job), config_for(batch_size, lr), overrides, summary_for(steps, b_eff)
            )
            job += 1
    return sweep


def test_report_fits_steps_to_target_and_draws_it(tmp_path: Path) -> None:
    sweep = build_sweep(tmp_path, [2, 4, 8, 16, 32, 64])
    assert main([str(sweep)]) == 0
    out = sweep / "report"
    png = (out / "steps_to_target.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    summary = (out / "summary.md").read_text()
    assert "## Steps to target vs batch size" in summary
    assert "![steps to target vs B](steps_to_target.png)" in summary
    # B_eff = 4 .. 64 (accumulate 2 read from config.yaml): 2000/100 = 20
    assert "S_min = 100, E_min = 2000, **B_crit = E_min/S_min = 20**" in summary
    assert "R² (on log S) = 1." in summary
    # the fit leaves out B = 64, whose best LR is the grid's top, and is given beside it
    assert "n = 4 batch sizes whose best LR lies inside its grid" in summary
    assert "On all n = 5 points, flagged ones included: S_min = 100, E_min = 2000," in summary
    assert "Never reached the target: B = 128." in summary
    assert "median over the 5 best-LR points that measured it; " in summary
    assert "else its estimate `noise_scale_global`): 30." in summary
    assert "compare B_crit with B_simple/K = 6, the per-client share" in summary  # 30 / 5
    # per-B table: B = 8 -> 100 + 2000/8 = 350 steps, 2800 examples; B = 64 at the top LR
    assert "| 8 | 0.1 | 0.05, 0.1, 0.2 | 1 | 350 | 2800 | 10 | inside grid | 30 |" in summary
    assert "| 64 | 0.2 | 0.05, 0.1, 0.2 | 1 | 131.25 | 8400 | 10 | highest LR tried | 30 |" in (
        summary
    )
    assert "1 of 5 points have their best LR at the edge" in summary


def test_fewer_than_three_batch_sizes_reached_is_one_line_not_a_failure(tmp_path: Path) -> None:
    sweep = build_sweep(tmp_path, [2, 4, 64])
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert not (tmp_path / "out" / "steps_to_target.png").exists()
    lines = [line for line in summary.splitlines() if "Steps to target vs batch size" in line]
    assert lines == [
        "Steps to target vs batch size: not fitted, 2 of 3 distinct B reached the target "
        "(`steps_to_target` in summary.json; 3 needed)."
    ]


def test_a_sweep_with_one_batch_size_has_no_steps_section(tmp_path: Path) -> None:
    """A sweep over LRs alone (or strategies, seeds) at one B has no scaling to fit."""
    sweep = build_sweep(tmp_path, [8])
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    assert "Steps to target" not in (tmp_path / "out" / "summary.md").read_text()


def test_seed_that_missed_disqualifies_its_lr(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    job = 0
    for batch_size in (2, 4, 8):
        for seed in (0, 1):
            for lr, steps in ((0.1, 100 + 1000 / batch_size), (0.2, 50.0)):
                missed = lr == 0.2 and seed == 1  # 0.2 is fastest but one seed misses
                summary = summary_for(None if missed else steps, 2 * batch_size, noise=None)
                config = config_for(batch_size, lr, seed=seed)
                write_job(sweep / str(job), config, [f"seed={seed}"], summary)
                job += 1
    assert main([str(sweep)]) == 0
    summary = (sweep / "report" / "summary.md").read_text()
    # 0.1 is chosen at every B (mean over 2 seeds), at the bottom of the grid {0.1, 0.2}
    assert "| 4 | 0.1 | 0.1, 0.2 | 2 | 600 |" in summary  # 100 + 1000/2
    assert "| 16 | 0.1 | 0.1, 0.2 | 2 | 225 |" in summary  # 100 + 1000/8
    assert "lowest LR tried" in summary
    assert "Global B_simple: not measured in the best-LR runs" in summary


def test_effective_batch_size_is_measured_then_configured(tmp_path: Path) -> None:
    write_job(tmp_path / "0", config_for(16, 0.1, accumulate=4), [], summary_for(None, 64))
    rows = [{"round": 0}, {"round": 1, "effective_batch_size": 140.0}]
    rows.append({"round": 2, "effective_batch_size": 150.0})
    write_job(tmp_path / "1", config_for("full", 0.1, accumulate=1), [], None, rows)
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # only Hydra's own config.yaml
    (tmp_path / "2" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config_for(8, 0.1)))
    (tmp_path / "2" / "summary.json").write_text("{}")
    # configured 256 × 1, but the clients hold 143–144 samples: the rows' median over
    # trained rounds (round 0's value is not a trained round) is 144
    capped = [{"round": 0, "effective_batch_size": 256.0}]
    capped += [{"round": r, "effective_batch_size": b} for r, b in ((1, 143.0), (2, 144.0))]
    capped.append({"round": 3, "effective_batch_size": 144.0})
    write_job(tmp_path / "3", config_for(256, 0.1, accumulate=1), [], None, capped)
    runs = collect_runs(tmp_path)
    assert [effective_batch_size(run) for run in runs] == [64.0, 145.0, 16.0, 144.0]


def test_one_clients_own_noise_scale_is_the_pooled_datas(tmp_path: Path) -> None:
    """A centralized run (one client) has no across-client probe: its local B_simple,
    measured on all the training data, is the global one; with more clients it is not.
    An exact per-example value, where measured, is preferred to either estimate."""
    from fedbatch.report.trials import global_noise_scale

    rows = [{"round": 1, "noise_scale_local": 40.0}, {"round": 2, "noise_scale_local": 50.0}]
    for clients, expected in ((1, 50.0), (10, None)):
        job = tmp_path / str(clients)
        config = config_for(8, 0.1) | {"num_clients": clients}
        write_job(job, config, [], {"noise_scale_global": None}, rows)
        (run,) = collect_runs(job)
        assert global_noise_scale(run) == expected
    # The exact per-example value wins over any estimate: its median over the rounds.
    exact = [{"round": r, "noise_scale_exact_global": v} for r, v in enumerate((9, 30, 92), 1)]
    write_job(tmp_path / "exact", config_for(8, 0.1), [], {"noise_scale_global": 70.0}, exact)
    (run,) = collect_runs(tmp_path / "exact")
    assert global_noise_scale(run) == 30
