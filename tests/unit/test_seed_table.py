"""The measured seed table: each number from hand-made rows, computed by hand."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedbatch.metrics.sweep import collect_runs
from fedbatch.report.seed_table import SEED_ROWS, main, measure_rows, measure_run, step_memory
from tests.conftest import tiny_config


def _row(r: int, **values: Any) -> dict[str, Any]:
    base = {"round": r, "examples": 1000, "data_seconds": None, "compute_seconds": None}
    return base | values


def write_job(
    sweep: Path, job: int, row: str, lr: float, rows: list[dict[str, Any]], best: float
) -> Path:
    run_dir = sweep / str(job)
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = [f"+row={row}", f"client.lr={lr}", f"seed={job}"]
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = json.loads(tiny_config(num_clients=1, clients_per_round=1).to_json())
    config["client"]["lr"] = lr
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best_round = max(rows, key=lambda r: r.get("test_accuracy") or 0.0)["round"]
    summary = {"best_test_accuracy": best, "best_round": best_round}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def three_rounds(batch: float, accuracies: tuple[float, float, float]) -> list[dict[str, Any]]:
    """Rounds 1-3 after round 0: 0.5 s data and 1.5 s compute each, B samples × 10 steps."""
    rows = [_row(0, test_accuracy=0.1)]
    for r, accuracy in enumerate(accuracies, start=1):
        rows.append(
            _row(
                r,
                data_seconds=0.5,
                compute_seconds=1.5,
                examples_seen=10 * batch,
                effective_batch_size=batch,
                test_accuracy=accuracy,
                generalization_gap=0.1 * r,
                noise_scale_exact=200.0 * r if r != 2 else None,
            )
        )
    return rows


def test_a_runs_numbers_by_hand(tmp_path: Path) -> None:
    write_job(tmp_path, 0, "medium", 0.01, three_rounds(32, (0.5, 0.7, 0.6)), best=0.7)
    (run,) = collect_runs(tmp_path)
    measures = measure_run(run, target=0.65)
    assert measures is not None
    assert measures.samples_per_second == pytest.approx(3 * 320 / 6.0)
    assert measures.seconds_to_target == pytest.approx(4.0)  # reached in round 2
    # median of B_simple (1/B − 1/n) over rounds 1 and 3 (200 and 600), n = 1000
    expected = statistics.median([s * (1 / 32 - 1 / 1000) for s in (200.0, 600.0)])
    assert measures.gradient_noise == pytest.approx(expected)
    assert measures.gap_at_best == pytest.approx(0.2)  # the gap of round 2, the best
    assert measure_run(run, target=0.9).seconds_to_target is None


def test_full_batch_has_no_gradient_noise(tmp_path: Path) -> None:
    write_job(tmp_path, 0, "full", 0.01, three_rounds(1000, (0.5, 0.7, 0.6)), best=0.7)
    (run,) = collect_runs(tmp_path)
    assert measure_run(run, target=0.65).gradient_noise == 0.0


def test_each_row_at_its_best_lr_and_memory_at_its_largest_batch(tmp_path: Path) -> None:
    """Two LRs × two seeds of the dynamic row: the LR with the higher mean best accuracy
    wins, and the step memory is counted at the largest B a run of that LR reached."""
    job = 0
    for lr, bests in ((0.01, (0.70, 0.60)), (0.03, (0.66, 0.66))):
        for best in bests:
            rows = three_rounds(8, (0.5, best, 0.6))
            rows[-1]["effective_batch_size"] = 64
            write_job(tmp_path, job, "dynamic", lr, rows, best=best)
            job += 1
    runs = collect_runs(tmp_path)
    (row,), notes = measure_rows(runs, target=0.65)
    others = [r for r in SEED_ROWS if r.name != "dynamic"]
    assert notes == [f"row {r.label}: no finished runs (+row={r.name})" for r in others]
    assert row.seed.name == "dynamic" and row.lr == 0.03 and row.lr_at_edge
    assert [m.best_accuracy for m in row.runs] == [0.66, 0.66]
    assert row.runs[0].batch_sizes == (8, 64)
    assert row.memory_bytes == step_memory(runs[2], 64) > step_memory(runs[2], 8)


def test_the_command_writes_the_seeds_words_beside_the_numbers(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for job, row in enumerate(("small", "full")):
        batch = 4 if row == "small" else 1000
        write_job(sweep, job, row, 0.01, three_rounds(batch, (0.5, 0.7, 0.6)), best=0.7)
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "seed_table.md").read_text()
    small, full = SEED_ROWS[0], SEED_ROWS[4]
    assert f"| {small.label}: B = 4 | {small.memory}: " in text
    assert f"{full.stability}: noise 0 " in text
    assert f"{small.hardware}: 0.4% of the fastest" in text  # 20 against 5,000 samples/s
    assert (tmp_path / "out" / "seed_table.png").stat().st_size > 0
