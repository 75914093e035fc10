"""fedbatch outside this checkout: as a wheel, and as a Flower app under `flwr run`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedbatch.deploy.federation import federation_processes
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated import server_app
from fedbatch.federated.run_config import CONFIG_KEY, OUTPUT_KEY, OVERRIDES_KEY
from tests.conftest import read_rows

ROOT = Path(__file__).resolve().parents[2]
TINY = "rounds=2 num_clients=3 clients_per_round=2 client.batch_size=16 model.hidden=[16]"


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_the_serverapp_trains_the_packaged_config_with_run_config_overrides(tmp_path):
    """`flwr run` with an empty `fedbatch-config`: the ServerApp composes the packaged
    config with the `overrides` key itself (here on the in-process Grid)."""
    run_config = {CONFIG_KEY: "", OVERRIDES_KEY: TINY, OUTPUT_KEY: str(tmp_path)}
    context = Context(1, 1, node_config={}, state=RecordDict(), run_config=run_config)
    server_app.main(InProcessGrid(3), context)
    rows = read_rows(tmp_path)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert {row["batch_size"] for row in rows[1:]} == {16}
    assert {row["clients_sampled"] for row in rows[1:]} == {2}
    summary = _summary(tmp_path)
    assert summary["rounds_completed"] == 2 and summary["stopped_because"] == "rounds"
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"] > 0.2  # chance is 0.1


@pytest.mark.slow
def test_a_wheel_runs_the_default_experiment_and_a_study_from_anywhere(tmp_path):
    """Built from a copy of the tree (nothing lands in the checkout), installed into a
    folder that shadows the editable install, run from an unrelated directory."""
    pytest.importorskip("setuptools", minversion="77")  # the dev extra brings it
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "fedbatch", source / "fedbatch", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    dist, site = tmp_path / "dist", tmp_path / "site"
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)]
    subprocess.run([*build, str(source)], cwd=tmp_path, check=True, timeout=300)
    (wheel,) = dist.glob("fedbatch-*.whl")
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    subprocess.run(install, cwd=tmp_path, check=True, timeout=300)
    assert sorted(p.name for p in (site / "fedbatch" / "conf").glob("*.yaml")) == ["config.yaml"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = os.environ | {"PYTHONPATH": str(site)}

    def python(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip

    found = python("-c", "import fedbatch; print(fedbatch.__file__)")
    assert Path(found.stdout.strip()) == site / "fedbatch" / "__init__.py", found.stderr
    run = tmp_path / "run"
    result = python("-m", "fedbatch.simulate", "rounds=1", "progress=off", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    summary = _summary(run)
    assert summary["rounds_completed"] == 1 and isinstance(summary["test_accuracy"], float)
    # A study's defaults list (`- config`) finds the packaged config beside its --config-dir.
    study = tmp_path / "study"
    args = ["--config-dir", str(ROOT / "simulations" / "batch_size"), "--config-name", "study"]
    result = python("-m", "fedbatch.simulate", *args, "rounds=1", f"hydra.run.dir={study}")
    assert result.returncode == 0, result.stderr
    assert _summary(study)["rounds_completed"] == 1
    assert list(elsewhere.iterdir()) == []  # Hydra wrote only where it was told


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(home: Path) -> None:
    """Stop the local SuperLink that `flwr run` started (it outlives the command) and
    everything it started: the processes whose environment names this FLWR_HOME."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in federation_processes(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while federation_processes(home) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
def test_flwr_run_trains_on_a_local_simulation(tmp_path):
    """`flwr run .` as README shows it: Flower's own `local` connection (a SuperLink in
    simulation mode, started on first use), overrides through the run config."""
    home, out = tmp_path / "flwr-home", tmp_path / "out"
    env = os.environ | {
        "FLWR_HOME": str(home),
        # Flower's local SuperLink has fixed default ports: free ones, so as not to meet
        # another on this machine.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # offline: use this venv
        "RAY_DISABLE_USAGE_STATS": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    command = [str(Path(sys.executable).with_name("flwr")), "run", ".", "--stream"]
    command += ["--federation-config", "num-supernodes=3"]
    command += ["--run-config", f"{OVERRIDES_KEY}='{TINY}' {OUTPUT_KEY}='{out}'"]
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540
        )
    finally:
        _stop(home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (ROOT / "pyproject.toml").read_bytes() == pyproject  # flwr run left it alone
    rows = read_rows(out)
    assert [row["round"] for row in rows] == [0, 1, 2], result.stdout[-3000:]
    assert {row["batch_size"] for row in rows[1:]} == {16}
    assert _summary(out)["test_accuracy"] == rows[-1]["test_accuracy"] > 0.2
