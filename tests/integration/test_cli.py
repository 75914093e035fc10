"""`python -m fedbatch.simulate` and `python -m fedbatch.report` as a user runs them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbatch.config import ConfigError
from fedbatch.simulate import CONF_DIR, check_overrides, validate
from tests.conftest import FAST, read_rows, simulate

BAD_INPUT = [
    ("client.batch_size=0", "client.batch_size", "'full'"),
    ("client.batch_size=-4", "client.batch_size", "'full'"),
    ("client.batch_size=abc", "client.batch_size", "'full'"),
    ("client.lr=0", "client.lr", "> 0.0"),
    ("client.optimizer=lion", "client.optimizer", "adagrad"),
    ("num_clients=5000", "num_clients", "at most"),
    ("clients_per_round=50", "clients_per_round", "<= 10"),
    ("strategy.fraction_evaluate=2", "strategy.fraction_evaluate", "<= 1.0"),
    ("+strategy.bogus=1", "strategy.bogus", "server_momentum"),
]


@pytest.mark.parametrize(("override", "key", "allowed"), BAD_INPUT)
def test_bad_values_are_rejected_before_any_work(override, key, allowed):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        dcfg = compose("config", overrides=[override, "strategy=fedavgm"])
    raw = OmegaConf.to_container(dcfg, resolve=True)
    with pytest.raises(ConfigError) as info:
        validate(raw)
    message = str(info.value)
    assert message.startswith(f"{key}=") and allowed in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("strategy=fedfoo", "strategy", "fedyogi"),
        ("data=cifar10", "data", "mnist1d"),
        ("model=resnet", "model", "cnn1d"),
        ("model=cnn", "model", "cnn needs data=images"),
        ("client.batchsize=3", "client.batchsize", "batch_size, bucket_by_length, epochs"),
        ("partition.alpha=0.1", "partition=iid", "allowed name"),
        ("client.batch_size=0", "client.batch_size", "'full'"),
        ("num_clients=5000", "num_clients", "at most"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, override, key, allowed):
    result = simulate(override, f"hydra.run.dir={tmp_path}/run", "progress=off", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and allowed in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff"])
def test_documented_async_keys_are_accepted_and_null_means_unset(strategy):
    base = [f"strategy={strategy}", "clock=devices"]
    check_overrides([*base, "strategy.hinge_cutoff=2"])
    for overrides, expected in ((base, None), ([*base, "strategy.hinge_cutoff=2"], 2)):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            raw = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
        assert validate(raw).strategy.params.get("hinge_cutoff") == expected


def test_a_bad_job_in_a_sweep_fails_before_any_job_runs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = simulate("-m", "client.batch_size=8,0", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedbatch: error: job 1 (client.batch_size=0): client.batch_size=0 is invalid: "
        "allowed an integer >= 1 or 'full'"
    ]
    assert not sweep_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", ["1", "full"])
def test_run_writes_config_metrics_and_summary(tmp_path, batch_size):
    run_dir = tmp_path / "run"
    result = simulate(
        *FAST, f"client.batch_size={batch_size}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"batch_size: {batch_size}" in (run_dir / "config.yaml").read_text()
    rows = read_rows(run_dir)
    assert len(rows) == 3
    # digits: 1,437 training samples over 4 clients → 359 or 360 each, 2 clients per round
    expected_steps = 2 if batch_size == "full" else rows[1]["examples"]
    assert rows[1]["steps"] == expected_steps
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]


@pytest.mark.slow
def test_multirun_writes_job_dirs_sweep_csv_and_report(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = simulate(
        "-m", *FAST, "client.batch_size=8,full", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    for job in ("0", "1"):
        assert (sweep_dir / job / "metrics.jsonl").exists()
        assert (sweep_dir / job / "summary.json").exists()
    with (sweep_dir / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["client.batch_size"] for r in rows] == ["8", "full"]
    assert all(0.0 < float(r["test_accuracy"]) <= 1.0 for r in rows)

    report = subprocess.run(
        [sys.executable, "-m", "fedbatch.report", str(sweep_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert (sweep_dir / "report" / "accuracy_vs_round.png").stat().st_size > 1000
    assert "client.batch_size=full" in (sweep_dir / "report" / "summary.md").read_text()


def test_a_run_that_trained_nothing_exits_4_with_one_line(tmp_path):
    """At LR 1e20 every client's weights overflow: each reply is rejected, no update is
    aggregated, and the run says so, keeping what it wrote."""
    result = simulate(*FAST, "client.lr=1e20", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 4
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "fedbatch: error: no client's update was aggregated: rejected by the server: "
        "array 1.0.weight is not finite"
    )
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_because"] == "all_clients_failed"
    assert summary["rounds_trained"] == 0


def test_a_sweep_with_a_job_that_trained_nothing_completes_and_marks_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = simulate(
        "-m", *FAST, "client.lr=0.1,1e20", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    with (sweep_dir / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["client.lr"], r["status"]) for r in rows] == [
        ("0.1", "ok"),
        ("1e+20", "no_training"),
    ]
