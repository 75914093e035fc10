"""The seed's "Mini-Batch Size Comparison", measured: one row per batch-size range.

`python -m fedbatch.report.seed_table SWEEP [--out DIR] [--target ACC]` reads a sweep of
`simulations/seed_table` (each job names its row with `+row=<name>`, see `SEED_ROWS`) and
writes `seed_table.md` (the seed's words beside the measured numbers, then every number
with its spread over seeds) and `seed_table.png`. Each row is shown at its best LR: the
one with the highest mean best test accuracy over seeds. Per run:

- memory: a training step's weights + gradients + optimizer state + saved activations at
  the largest B the run used, counted as `python -m fedbatch.calibrate` counts it;
- samples/s: samples trained over training seconds (`monitor.timing`: data + compute,
  without evaluation), and that rate relative to the fastest row's;
- time to target: training seconds until the test accuracy first reaches `--target`;
- gradient noise: tr(Σ)/|G|² · (1/B − 1/n), the variance of a mini-batch gradient of B of
  the n samples relative to the squared full gradient (0 at full batch), from the exact
  per-example B_simple (`monitor.noise_exact`), the median over the rounds measured;
- generalization: the best test accuracy and the true gap (test − train loss of the same
  model) at the round of that accuracy.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbatch.metrics.sweep import FINISHED, RunRecord, collect_runs, config_value
from fedbatch.report.seed_table_output import write_figure, write_markdown


@dataclass(frozen=True)
class SeedRow:
    """A row of the seed's table: its label and its five ratings, in the seed's words."""

    name: str  # the `+row=` option of the study
    label: str
    memory: str
    speed: str
    stability: str
    generalization: str
    hardware: str


SEED_ROWS = (
    SeedRow("small", "1-8 (Small)", "Very Low", "Slow", "Low", "Good", "Poor"),
    SeedRow("medium", "16-64 (Medium)", "Low", "Moderate", "Moderate", "Good", "Moderate"),
    SeedRow("large", "128-512 (Large)", "Moderate", "Fast", "High", "Moderate", "Good"),
    SeedRow("very_large", "1024+ (Very Large)", "High", "Very Fast", "Very High", "Poor",
            "Excellent"),
    SeedRow("full", "Full Batch", "Very High", "Variable", "Highest", "Variable",
            "Depends on Size"),
    SeedRow("dynamic", "Dynamic", "Variable", "Adaptive", "Adaptive", "Good", "Optimized"),
)  # fmt: skip


@dataclass(frozen=True)
class RunMeasures:
    batch_sizes: tuple[float, float]  # the smallest and largest B the run trained with
    samples_per_second: float
    seconds_to_target: float | None  # None: never reached
    gradient_noise: float | None
    best_accuracy: float
    gap_at_best: float | None


@dataclass(frozen=True)
class MeasuredRow:
    seed: SeedRow
    lr: float
    lr_at_edge: bool  # the best LR is the smallest or largest tried: a wider grid may beat it
    runs: list[RunMeasures]
    memory_bytes: int

    def values(self, field: str) -> list[float]:
        values = (getattr(run, field) for run in self.runs)
        return [v for v in values if v is not None and math.isfinite(v)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def measure_run(run: RunRecord, target: float) -> RunMeasures | None:
    """A finished run's measurements from its rows and summary (None: unfinished)."""
    best = _number(run.summary.get("best_test_accuracy"))
    if run.status not in FINISHED or best is None:
        return None
    seconds = samples = 0.0
    to_target, noise, batches = None, [], []
    gap_at_best = None
    for row in run.rows:
        seconds += (_number(row.get("data_seconds")) or 0.0) + (
            _number(row.get("compute_seconds")) or 0.0
        )
        samples += _number(row.get("examples_seen")) or 0.0
        batch = _number(row.get("effective_batch_size"))
        if batch:
            batches.append(batch)
        accuracy = _number(row.get("test_accuracy"))
        if to_target is None and row.get("round", 0) > 0 and (accuracy or 0.0) >= target:
            to_target = seconds
        b_simple, n = _number(row.get("noise_scale_exact")), _number(row.get("examples"))
        if b_simple is not None and batch and n:
            noise.append(b_simple * (1.0 / batch - 1.0 / n))
        if row.get("round") == run.summary.get("best_round"):
            gap_at_best = _number(row.get("generalization_gap"))
    if not batches or seconds <= 0:
        return None
    return RunMeasures(
        batch_sizes=(min(batches), max(batches)),
        samples_per_second=samples / seconds,
        seconds_to_target=to_target,
        gradient_noise=statistics.median(noise) if noise else None,
        best_accuracy=best,
        gap_at_best=gap_at_best,
    )


def _lr(run: RunRecord) -> float | None:
    return _number(config_value(run.config, "client.lr"))


def step_memory(run: RunRecord, batch_size: int) -> int:
    """Peak bytes of one training step at `batch_size`, as `fedbatch.calibrate` counts."""
    from fedbatch.calibrate import calibrate
    from fedbatch.config import build_config

    profile = calibrate(build_config(run.config), [batch_size], ["fp32"], repeats=1)["fp32"]
    return int(profile[0]["peak_bytes"])


def measure_rows(runs: Sequence[RunRecord], target: float) -> tuple[list[MeasuredRow], list[str]]:
    """Each seed row found in the sweep, at its best LR; notes on what was left out."""
    measured, notes = [], []
    for seed_row in SEED_ROWS:
        mine = [run for run in runs if run.overrides.get("row") == seed_row.name]
        by_lr: dict[float, list[tuple[RunRecord, RunMeasures]]] = {}
        for run in mine:
            lr, measures = _lr(run), measure_run(run, target)
            if lr is None or measures is None:
                notes.append(f"job {run.name} ({run.label}) left out: unfinished or unmeasured")
                continue
            by_lr.setdefault(lr, []).append((run, measures))
        if not by_lr:
            notes.append(f"row {seed_row.label}: no finished runs (+row={seed_row.name})")
            continue
        lr, chosen = max(
            by_lr.items(), key=lambda item: statistics.mean(m.best_accuracy for _, m in item[1])
        )
        largest = max(chosen, key=lambda pair: pair[1].batch_sizes[1])
        memory = step_memory(largest[0], int(largest[1].batch_sizes[1]))
        edge = len(by_lr) > 1 and lr in (min(by_lr), max(by_lr))
        measured.append(MeasuredRow(seed_row, lr, edge, [m for _, m in chosen], memory))
    return measured, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedbatch.report.seed_table",
        description="The seed's mini-batch size comparison, measured from a seed_table sweep.",
    )
    parser.add_argument("sweep", type=Path, help="the multirun dir of simulations/seed_table")
    parser.add_argument("--out", type=Path, default=None, help="default: <sweep>/report")
    parser.add_argument("--target", type=float, default=0.65, help="test accuracy target")
    args = parser.parse_args(argv)
    runs = collect_runs(args.sweep) if args.sweep.is_dir() else []
    rows, notes = measure_rows(runs, args.target)
    if not rows:
        parser.exit(2, f"fedbatch.report.seed_table: no seed_table runs in {args.sweep}\n")
    out = args.out or args.sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    for path in (write_markdown(rows, notes, args.target, out), write_figure(rows, out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
