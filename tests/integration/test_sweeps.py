"""Sweeps that scale out: the joblib launcher, the SLURM launcher's config, Optuna LR tuning."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbatch.simulate import CONF_DIR, check_sweep
from fedbatch.sweep_plugins import parallel_jobs
from tests.conftest import FAST, simulate


def hydra_node(node: str, *overrides: str) -> dict:
    """`hydra.<node>` of the composed config, resolved."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        dcfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    resolved = OmegaConf.to_container(dcfg.hydra[node], resolve=True)
    assert isinstance(resolved, dict)
    return resolved


def sweep_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "sweep.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_launcher_runs_cores_over_threads_jobs_in_processes(threads):
    launcher = hydra_node("launcher", "hydra/launcher=parallel", f"engine.threads={threads}")
    assert launcher["_target_"].endswith("JoblibLauncher")
    assert launcher["backend"] == "loky"
    assert launcher["n_jobs"] == parallel_jobs(threads) >= 1


def test_slurm_launcher_config_composes_with_a_core_per_thread():
    launcher = hydra_node(
        "launcher", "hydra/launcher=slurm", "engine.threads=4", "hydra.sweep.dir=/scratch/sweep"
    )
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["cpus_per_task"] == 4
    assert (launcher["timeout_min"], launcher["gpus_per_node"], launcher["mem_gb"]) == (60, 0, 4)
    assert (launcher["tasks_per_node"], launcher["nodes"]) == (1, 1)
    assert launcher["partition"] is None and launcher["setup"] is None
    assert launcher["array_parallelism"] == 64
    assert launcher["submitit_folder"] == "/scratch/sweep/.submitit/%j"


def test_lr_tuning_sweeper_maximizes_over_a_log_interval_of_lr():
    sweeper = hydra_node("sweeper", "hydra/sweeper=lr_tuning")
    assert sweeper["_target_"].endswith("OptunaSweeper")
    assert sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert sweeper["sampler"]["seed"] == 0
    assert (sweeper["direction"], sweeper["n_trials"], sweeper["n_jobs"]) == ("maximize", 20, 1)
    assert sweeper["storage"] is None
    assert sweeper["params"] == {"client.lr": "tag(log, interval(0.001, 1.0))"}


def test_sweep_validation_leaves_other_sweepers_syntax_to_them():
    check_sweep(["-m", "hydra/sweeper=lr_tuning", "client.lr=tag(log,interval(0.01,1))"])
    with pytest.raises(SystemExit) as info:  # the basic sweeper cannot take an interval
        check_sweep(["-m", "client.lr=interval(0.01,1)"])
    assert info.value.code == 2


def test_an_unknown_launcher_is_one_line_and_exit_2(tmp_path):
    result = simulate("-m", "hydra/launcher=paralel", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedbatch: error: hydra/launcher='paralel' is invalid: allowed one of basic, joblib, "
        "parallel, slurm, submitit_local, submitit_slurm"
    ]
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_parallel_multirun_completes_every_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = simulate(
        "-m", "hydra/launcher=parallel", *FAST, "client.batch_size=8,16,32,64",
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Joblib.Parallel(n_jobs={parallel_jobs(1)},backend=loky" in result.stdout
    rows = sweep_rows(sweep_dir)
    assert [row["client.batch_size"] for row in rows] == ["8", "16", "32", "64"]
    assert all(row["status"] == "ok" and row["rounds_completed"] == "2" for row in rows)
    assert all(0.0 < float(row["test_accuracy"]) <= 1.0 for row in rows)


@pytest.mark.slow
def test_lr_tuning_runs_trials_and_writes_the_best_lr(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = simulate(
        "-m", "hydra/sweeper=lr_tuning", "hydra.sweeper.n_trials=2", *FAST,
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert 0.001 <= best["best_params"]["client.lr"] <= 1.0
    rows = sweep_rows(sweep_dir)
    assert len(rows) == 2 and all(row["status"] == "ok" for row in rows)
    # the objective Optuna saw is the runs' final test accuracy
    assert best["best_value"] == max(float(row["test_accuracy"]) for row in rows)
    tried = {float(row["client.lr"]): float(row["test_accuracy"]) for row in rows}
    assert tried[best["best_params"]["client.lr"]] == best["best_value"]
