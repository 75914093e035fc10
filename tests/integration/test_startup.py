"""Start-up: the default run imports only what it uses, and the bench times whole
processes of the same run side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedbatch.bench import __main__ as bench
from fedbatch.bench.cases import BenchCase

# Heavy libraries the default run (data=digits partition=iid, in-process engine) never
# uses: flwr_datasets' __init__ imports its plotting module (seaborn, scipy.stats) and
# Hugging Face `datasets`; Ray is engine=ray's.
NOT_ON_THE_DEFAULT_PATH = ("flwr_datasets", "datasets", "seaborn", "matplotlib", "ray")

# The whole default run in a fresh interpreter, as `python -m fedbatch.simulate` does it;
# at exit (cli() ends by sys.exit), the top-level packages it imported.
TOP_LEVEL = "json.dumps(sorted({m.split('.')[0] for m in sys.modules}))"
DEFAULT_RUN = f"""
import atexit, json, sys
atexit.register(lambda: print("MODULES", {TOP_LEVEL}))
sys.argv = ["fedbatch.simulate", "rounds=1", "progress=off", "hydra.run.dir=" + sys.argv[1]]
from fedbatch.simulate import cli
cli()
"""


@pytest.mark.slow
def test_default_run_imports_no_library_it_does_not_use(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", DEFAULT_RUN, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds_completed"] == 1
    line = next(x for x in run.stdout.splitlines() if x.startswith("MODULES "))
    imported = set(json.loads(line.removeprefix("MODULES ")))
    assert {"torch", "flwr", "hydra"} <= imported  # what it does use
    assert imported.isdisjoint(NOT_ON_THE_DEFAULT_PATH), imported & set(NOT_ON_THE_DEFAULT_PATH)


def test_plain_loop_process_imports_neither_flower_nor_hydra():
    """The `startup` case's baseline is a plain PyTorch loop: its runner module alone."""
    code = f"import json, sys, fedbatch.bench.runners; print({TOP_LEVEL})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = set(json.loads(out.stdout))
    assert "torch" in imported
    assert imported.isdisjoint({"flwr", "hydra", "omegaconf", *NOT_ON_THE_DEFAULT_PATH})


@pytest.mark.slow
def test_startup_case_times_both_processes_doing_the_same_run(tmp_path, monkeypatch):
    tiny = BenchCase(
        name="startup",
        description="test",
        raw={},
        runners=("plain", "simulate"),
        argv=("rounds=2", "num_clients=4", "clients_per_round=2", "client.steps=3"),
    )
    monkeypatch.setitem(bench.CASES, "startup", tiny)
    assert bench.main(["--case", "startup", "--repeats", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())["startup"]
    plain, simulate = results["plain"], results["simulate"]
    # Same seed, same clients and batches: the same final model, whichever process ran it.
    assert simulate["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-6)
    assert plain["ratio"] == 1.0
    assert simulate["ratio"] == pytest.approx(simulate["seconds"] / plain["seconds"])
    assert plain["seconds"] > 0.5  # a whole process: at least torch's import
    assert plain["load_median"] >= 0.0
    assert 0 < plain["cpu_seconds"] <= plain["cpu_seconds_median"]
    assert len(simulate["seconds_each"]) == 1 and simulate["seconds_each"][0] == simulate["seconds"]
