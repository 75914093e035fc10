"""Run directories never mix: one run per directory, nothing left by a refused config."""

from __future__ import annotations

import csv
import os

import pytest

from fedbatch.run_dir import discard_rejected, run_dir_problem
from tests.conftest import FAST, simulate


@pytest.fixture
def held(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    return run


def test_a_directory_holding_a_run_is_refused_unless_resumed(held):
    problem = run_dir_problem([f"hydra.run.dir={held}"])
    assert problem == (
        f"hydra.run.dir={held} already holds a run (metrics.jsonl): name a new directory, "
        f"or continue that run with resume={held}"
    )


def test_a_sweep_directory_holding_a_job_is_refused(held):
    sweep = held.parent
    problem = run_dir_problem(["-m", "seed=1,2", f"hydra.sweep.dir={sweep}"])
    assert problem == f"hydra.sweep.dir={sweep} already holds a sweep (run/metrics.jsonl): " + (
        "name a new directory"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["hydra.run.dir="], "hydra.run.dir= is empty: name a directory"),
        (["hydra.run.dir=  "], "hydra.run.dir= is empty"),
        (["-m", "hydra.sweep.dir="], "hydra.sweep.dir= is empty"),
    ],
)
def test_an_empty_directory_name_is_refused(argv, expected):
    assert run_dir_problem(argv).startswith(expected)


def test_a_file_in_the_way_is_named(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert run_dir_problem([f"hydra.run.dir={blocker}"]) == (
        f"hydra.run.dir={blocker} is a file, not a directory"
    )
    assert run_dir_problem([f"hydra.run.dir={blocker}/run"]) == (
        f"hydra.run.dir={blocker}/run cannot be made: {blocker} is a file"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_parent_is_named(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "cannot be written" in run_dir_problem([f"hydra.run.dir={locked}/run"])


@pytest.mark.parametrize(
    "argv",
    [
        [],  # Hydra's default: a new directory per run
        ["hydra.run.dir=fresh/run"],
        ["hydra.run.dir=outputs/${now:%H}"],  # resolved by Hydra, checked when it runs
        ["-m", "hydra.run.dir=x"],  # a multirun's jobs go to hydra.sweep.dir
    ],
)
def test_a_new_directory_is_fine(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_dir_problem(argv) is None


def test_a_refused_run_takes_its_directory_and_the_empty_parents_it_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "2026-12-04" / "10-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / "simulate.log").write_text("")
    (tmp_path / "outputs" / "2026-12-03").mkdir()  # an earlier day's runs: stays
    discard_rejected(run)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["2026-12-03"]


def test_a_directory_holding_anything_else_is_left_as_it_is(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    discard_rejected(tmp_path)
    assert (tmp_path / "notes.txt").exists() and (tmp_path / ".hydra").exists()


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_never_mix_and_a_refused_config_leaves_nothing(tmp_path):
    first = simulate(*FAST, "hydra.run.dir=run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}

    again = simulate(*FAST, "seed=9", "hydra.run.dir=run", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip() == (
        "fedbatch: error: hydra.run.dir=run already holds a run (config.yaml): name a new "
        "directory, or continue that run with resume=run"
    )
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before

    # refused after Hydra made the directory (the data must be loaded to know): nothing left
    refused = simulate(*FAST, "num_clients=5000", cwd=tmp_path)
    assert refused.returncode == 2 and "num_clients=5000" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_a_job_that_cannot_run_does_not_stop_the_sweep(tmp_path):
    """Too many clients for the data is known once the data is loaded, in the job."""
    result = simulate("-m", *FAST, "num_clients=5000,4", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "sweep" / "sweep.csv").open() as file:
        statuses = [(row["num_clients"], row["status"]) for row in csv.DictReader(file)]
    assert statuses == [("5000", "failed"), ("4", "ok")]
    said = "num_clients=5000 is invalid: allowed at most"
    assert said in (tmp_path / "sweep" / "0" / "simulate.log").read_text()
