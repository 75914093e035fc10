"""The pieces behind scaled-out sweeps: job slots per machine, plugin checks, the objective."""

from __future__ import annotations

import pytest

from fedbatch import sweep_plugins
from fedbatch.config import ConfigError
from fedbatch.simulate import CONF_DIR, objective
from fedbatch.sweep_plugins import parallel_jobs, plugin_error


@pytest.mark.parametrize(
    ("threads", "cores", "jobs"), [(1, 2, 2), (2, 2, 1), (4, 2, 1), (3, 16, 5)]
)
def test_parallel_jobs_fill_the_cores_without_oversubscribing(threads, cores, jobs):
    assert parallel_jobs(threads, cores=cores) == jobs


def test_parallel_jobs_default_to_this_machines_cores():
    assert parallel_jobs(1) == sweep_plugins.available_cores() >= 1


@pytest.mark.parametrize("threads", [0, -1, "two", 1.5])
def test_parallel_jobs_reject_bad_threads(threads):
    with pytest.raises(
        ConfigError, match=r"^engine\.threads=.* is invalid: allowed an integer >= 1$"
    ):
        parallel_jobs(threads, cores=2)


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "client.batch_size=8,16"],
        ["-m", "hydra/launcher=parallel"],
        ["-m", "hydra/launcher=slurm"],
        ["-m", "hydra/launcher=basic", "hydra/sweeper=lr_tuning"],
        ["-m", "hydra/launcher=joblib", "hydra/sweeper=optuna"],
    ],
)
def test_known_launchers_and_sweepers_pass(argv):
    assert plugin_error(argv, CONF_DIR) is None


def test_an_unknown_launcher_is_one_line_listing_the_options():
    message = plugin_error(["-m", "hydra/launcher=paralel"], CONF_DIR)
    assert message == (
        "hydra/launcher='paralel' is invalid: allowed one of basic, joblib, parallel, slurm, "
        "submitit_local, submitit_slurm"
    )


def test_a_missing_plugin_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(sweep_plugins, "_installed", lambda module: "optuna" not in module)
    assert plugin_error(["-m", "hydra/launcher=parallel"], CONF_DIR) is None
    assert plugin_error(["-m", "hydra/sweeper=lr_tuning"], CONF_DIR) == (
        "hydra/sweeper=lr_tuning needs hydra-optuna-sweeper: pip install 'fedbatch[sweep]'"
    )


@pytest.mark.parametrize(
    ("summary", "value"),
    [
        ({"test_accuracy": 0.8, "best_test_accuracy": 0.9}, 0.8),
        ({"test_accuracy": None, "best_test_accuracy": 0.9}, 0.9),
        ({"test_accuracy": None, "best_test_accuracy": None}, 0.0),
        ({}, 0.0),
    ],
)
def test_the_objective_is_always_a_float(summary, value):
    result = objective(summary)
    assert isinstance(result, float) and result == value
