"""sweep.csv, the Hydra sweep callback and `python -m fedbatch.report` on fake run dirs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fedbatch.metrics.sweep import SweepSummary, collect_runs, format_label, write_sweep_csv
from fedbatch.report.cli import main
from fedbatch.report.tables import format_value

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = Path(__file__).resolve().parents[2]


def metric_rows(rounds: int, final_accuracy: float) -> list[dict[str, Any]]:
    rows = []
    for r in range(rounds + 1):
        trained = r > 0
        rows.append(
            {
                "round": r,
                "train_loss": 2.0 / r if trained else None,
                "train_accuracy": 0.5 if trained else None,
                "test_loss": 2.3 - r * 0.3,
                "test_accuracy": 0.1 + (final_accuracy - 0.1) * r / rounds,
                "clients_sampled": 4,
                "seconds": 0.5 if trained else None,
                "elapsed_seconds": 0.5 * r,
                "future_metric": [1, 2],  # unknown keys are carried along untouched
            }
        )
    return rows


def write_run(
    run_dir: Path,
    overrides: list[str] | None,
    rows: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    truncated_tail: str = "",
) -> Path:
    run_dir.mkdir(parents=True)
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        lines = "".join(f"- {override}\n" for override in overrides) or "[]\n"
        (run_dir / ".hydra" / "overrides.yaml").write_text(lines)
    jsonl = "".join(json.dumps(row) + "\n" for row in rows) + truncated_tail
    (run_dir / "metrics.jsonl").write_text(jsonl)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def summary_for(accuracy: float, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "test_accuracy": accuracy,
        "test_loss": 0.51234567,
        "best_test_accuracy": accuracy,
        "best_round": 3,
        "rounds_completed": 3,
        "stopped_because": "max_rounds",
        "seconds": seconds,
        **extra,
    }


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A 3-job multirun: two finished jobs, one (job 2) killed before summary.json."""
    sweep = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    write_run(
        sweep / "0",
        ["client.batch_size=1", "+client.lr=0.1"],
        metric_rows(3, 0.81234567),
        summary_for(0.81234567, 12.3456),
    )
    write_run(
        sweep / "1",
        ["client.batch_size=8", "++client.lr=0.1"],
        metric_rows(3, 0.9),
        summary_for(0.9, 4.5, extra_field="x"),
        truncated_tail='{"round": 4, "test_acc',
    )
    write_run(sweep / "2", ["client.batch_size=full", "client.lr=0.1"], metric_rows(1, 0.3), None)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    return list(reader.fieldnames or []), rows


def test_collect_runs_parses_overrides_and_labels(sweep_dir: Path) -> None:
    runs = collect_runs(sweep_dir)
    assert [run.name for run in runs] == ["0", "1", "2"]
    assert runs[0].overrides == {"client.batch_size": "1", "client.lr": "0.1"}
    assert runs[1].label == "client.batch_size=8, client.lr=0.1"
    assert [run.status for run in runs] == ["ok", "ok", "incomplete"]
    assert runs[2].summary == {}
    assert format_label({}, "12-00-00") == "12-00-00"


def test_truncated_last_jsonl_line_is_skipped(sweep_dir: Path) -> None:
    run = collect_runs(sweep_dir / "1")[0]
    assert [row["round"] for row in run.rows] == [0, 1, 2, 3]
    assert run.rows[0]["train_loss"] is None
    assert run.rows[0]["future_metric"] == [1, 2]


def test_single_run_dir_without_overrides_is_labelled_by_its_name(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "13-37-00", None, metric_rows(2, 0.5), summary_for(0.5, 1.0))
    runs = collect_runs(run_dir)
    assert len(runs) == 1
    assert (runs[0].name, runs[0].label, runs[0].overrides) == ("13-37-00", "13-37-00", {})


def test_job_dirs_sort_numerically_and_crashed_jobs_count(tmp_path: Path) -> None:
    for name in ("10", "2", "9"):
        write_run(tmp_path / name, [f"seed={name}"], metric_rows(1, 0.5), summary_for(0.5, 1.0))
    (tmp_path / "1" / ".hydra").mkdir(parents=True)  # crashed before logging any round
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (tmp_path / "not_a_job").mkdir()
    runs = collect_runs(tmp_path)
    assert [run.name for run in runs] == ["1", "2", "9", "10"]
    assert runs[0].status == "failed"


def test_sweep_csv_has_one_row_per_job_with_status_and_override_columns(sweep_dir: Path) -> None:
    path = write_sweep_csv(sweep_dir)
    assert path == sweep_dir / "sweep.csv"
    columns, rows = read_csv(path)
    assert columns == [
        "job",
        "overrides",
        "status",
        "client.batch_size",
        "client.lr",
        "test_accuracy",
        "test_loss",
        "best_test_accuracy",
        "best_round",
        "rounds_completed",
        "stopped_because",
        "seconds",
        "extra_field",
    ]
    assert [row["job"] for row in rows] == ["0", "1", "2"]
    assert [row["status"] for row in rows] == ["ok", "ok", "incomplete"]
    assert [row["client.batch_size"] for row in rows] == ["1", "8", "full"]
    assert rows[0]["overrides"] == "client.batch_size=1, client.lr=0.1"
    assert float(rows[0]["test_accuracy"]) == pytest.approx(0.81234567)
    assert rows[1]["extra_field"] == "x"
    assert rows[2]["test_accuracy"] == "" and rows[2]["stopped_because"] == ""


def test_report_on_a_sweep_writes_pngs_and_summary_md(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(sweep_dir)]) == 0
    out_dir = sweep_dir / "report"
    for name in ("accuracy_vs_round.png", "loss_vs_round.png", "accuracy_vs_wall_clock_time.png"):
        png = (out_dir / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 1000
    printed = capsys.readouterr().out.split()
    assert str(out_dir / "summary.md") in printed
    assert str(sweep_dir / "sweep.csv") in printed  # regenerated because it was absent
    summary = (out_dir / "summary.md").read_text()
    for run in collect_runs(sweep_dir):
        assert run.label in summary
    assert "| 0.8123 |" in summary and "| 0.9000 |" in summary
    assert "| 12.35 |" in summary and "| incomplete |" in summary
    assert "![accuracy_vs_round](accuracy_vs_round.png)" in summary


def test_report_on_a_single_run_honours_out(tmp_path: Path) -> None:
    run_dir = write_run(
        tmp_path / "run", ["client.batch_size=64"], metric_rows(2, 0.7), summary_for(0.7, 3.0)
    )
    out_dir = tmp_path / "elsewhere"
    assert main([str(run_dir), "--out", str(out_dir)]) == 0
    assert (out_dir / "accuracy_vs_round.png").read_bytes().startswith(PNG_MAGIC)
    summary = (out_dir / "summary.md").read_text()
    assert "client.batch_size=64" in summary and "| test_accuracy | 0.7000 |" in summary
    assert not (run_dir / "sweep.csv").exists()


@pytest.mark.parametrize("make_dir", [False, True], ids=["missing", "no-runs"])
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, make_dir: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "nowhere"
    if make_dir:
        target.mkdir()
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target) in err and "expected" in err


def test_module_entry_point_reports_missing_path_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, "-m", "fedbatch.report", str(missing)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_sweep_callback_writes_sweep_csv(
    sweep_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    SweepSummary().on_multirun_end(config)
    _, rows = read_csv(sweep_dir / "sweep.csv")
    assert len(rows) == 3
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(sweep_dir / "sweep.csv") in out


def test_format_value_rounds_by_column_meaning() -> None:
    assert format_value("test_accuracy", "0.912345") == "0.9123"
    assert format_value("seconds", "12.3456") == "12.35"
    assert format_value("best_round", "7") == "7"
    assert format_value("stopped_because", "max_rounds") == "max_rounds"
    assert format_value("test_loss", "") == ""
