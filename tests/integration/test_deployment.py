"""The deployment path: partitions from node configs, dead nodes, and a real federation.

The fast tests drive the deployment code path through the in-process Grid; the slow ones
start a real SuperLink and SuperNodes on loopback (TLS and node authentication, the defaults).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli

from fedbatch.deploy.federation import (
    LocalFederation,
    federation_processes,
    flower_command,
    free_port,
    kill_node,
)
from fedbatch.deploy.security import make_node_keys
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.nodes import partition_order
from fedbatch.federated.run_config import CONFIG_KEY, OUTPUT_KEY, RESUME_KEY
from fedbatch.federated.server_app import run_experiment, serve
from fedbatch.metrics.interrupts import Interrupted
from fedbatch.run_dir import CHECKPOINT
from tests.conftest import (
    FAST,
    MEASURED,
    SERVER_DATA,
    read_rows,
    tiny_config,
    without_measured,
    without_server_data,
)


def deployment(**overrides):
    engine = {"name": "deployment", "round_timeout": 0.01, "node_timeout": 0.5}
    return tiny_config(engine=engine, **overrides)


class ShuffledGrid(InProcessGrid):
    """SuperNodes whose `--node-config` partitions are not in node-id order."""

    def __init__(self, partitions: list[int]) -> None:
        super().__init__(len(partitions))
        for context, partition in zip(self.contexts.values(), partitions, strict=True):
            context.node_config["partition-id"] = partition


class DeafGrid(InProcessGrid):
    """One SuperNode that never answers a train message, as if it had died."""

    def __init__(self, num_nodes: int, deaf_node: int) -> None:
        super().__init__(num_nodes)
        self.deaf_node = deaf_node

    def pull_messages(self, message_ids):
        replies = super().pull_messages(message_ids)
        return [
            r
            for r in replies
            if not (r.metadata.src_node_id == self.deaf_node and r.metadata.message_type == "train")
        ]


def test_partitions_come_from_the_nodes_own_configs():
    grid = ShuffledGrid([2, 0, 3, 1, 5, 4])
    order = partition_order(grid, deployment())
    assert [grid.contexts[node].node_config["partition-id"] for node in order] == list(range(6))


def test_deployment_path_gives_the_simulation_s_numbers(tmp_path):
    run_experiment(ShuffledGrid([2, 0, 3, 1, 5, 4]), deployment(), tmp_path / "d", progress=False)
    run_experiment(InProcessGrid(6), tiny_config(), tmp_path / "s", progress=False)
    # The server of a deployment holds no client data: no train loss of its own, and the
    # gap comes from the clients' evaluation of the global model (off here).
    deployed = without_measured(read_rows(tmp_path / "d"))
    simulated = without_measured(read_rows(tmp_path / "s"))
    assert all(row[key] is None for row in deployed for key in SERVER_DATA)
    assert all(row["generalization_gap"] is not None for row in simulated)
    assert without_server_data(deployed) == without_server_data(simulated)


def test_deployment_gap_is_test_loss_minus_the_clients_evaluation_of_the_global_model(tmp_path):
    cfg = deployment(strategy={"name": "fedavg", "fraction_evaluate": 1.0})
    run_experiment(InProcessGrid(6), cfg, tmp_path, progress=False)
    for row in read_rows(tmp_path)[1:]:
        assert row["global_train_loss"] is None
        assert row["generalization_gap"] == row["test_loss"] - row["client_eval_loss"]


class StoppedGrid(InProcessGrid):
    """A federation stopped (`flwr stop`, Ctrl-C: a signal to the ServerApp) as round
    `at` starts training."""

    def __init__(self, num_nodes: int, at: int) -> None:
        super().__init__(num_nodes)
        self.trainings_left = at

    def push_messages(self, messages):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.trainings_left -= 1
            if self.trainings_left == 0:
                raise Interrupted(signal.SIGINT)
        return super().push_messages(messages)


def test_a_stopped_deployment_resumes_in_its_shared_run_directory_as_if_never_stopped(tmp_path):
    engine = {"name": "deployment", "round_timeout": 5, "shared_dir": True}
    cfg = tiny_config(engine=engine, rounds=4, save={"every": 1})
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    run_config = {CONFIG_KEY: cfg.to_json(), OUTPUT_KEY: str(stopped)}
    with pytest.raises(KeyboardInterrupt):  # the signal, passed on to Flower's own handler
        serve(StoppedGrid(6, at=3), run_config)
    assert [row["round"] for row in read_rows(stopped)] == [0, 1, 2]
    interrupted = json.loads((stopped / "summary.json").read_text())
    assert interrupted["stopped_because"] == "interrupted"
    assert (stopped / CHECKPOINT).exists()
    serve(InProcessGrid(6), run_config | {RESUME_KEY: True})
    serve(InProcessGrid(6), {CONFIG_KEY: cfg.to_json(), OUTPUT_KEY: str(whole)})
    assert without_measured(read_rows(stopped)) == without_measured(read_rows(whole))
    summaries = [json.loads((d / "summary.json").read_text()) for d in (stopped, whole)]
    assert [{k: v for k, v in s.items() if k not in MEASURED} for s in summaries] == [
        {k: v for k, v in summaries[1].items() if k not in MEASURED}
    ] * 2
    assert not (stopped / CHECKPOINT).exists()  # the run has ended: nothing left to resume


class LateGrid(InProcessGrid):
    """A simulation whose nodes register while the ServerApp starts (as Ray's do)."""

    def __init__(self, num_nodes: int, empty_looks: int) -> None:
        super().__init__(num_nodes)
        self.empty_looks = empty_looks

    def get_node_ids(self):
        self.empty_looks -= 1
        return [] if self.empty_looks >= 0 else list(super().get_node_ids())[::-1]


def test_simulation_engines_wait_for_their_nodes_to_register():
    grid = LateGrid(6, empty_looks=2)
    order = partition_order(grid, tiny_config(engine={"name": "ray", "node_timeout": 5.0}))
    assert order == sorted(InProcessGrid(6).get_node_ids()) and grid.empty_looks < 0
    never = LateGrid(6, empty_looks=10**6)
    with pytest.raises(RuntimeError, match="only 0 of num_clients=6 simulated nodes registered"):
        partition_order(never, tiny_config(engine={"name": "ray", "node_timeout": 0.3}))


def test_two_nodes_with_one_partition_are_refused():
    with pytest.raises(RuntimeError, match="partition-id=0"):
        partition_order(ShuffledGrid([0, 0, 1, 2, 3, 4]), deployment())


def test_a_node_without_a_partition_is_named_with_its_error():
    grid = InProcessGrid(6)
    del grid.contexts[2].node_config["partition-id"]  # the node holding partition 0
    with pytest.raises(RuntimeError, match=r"partition-id \[0\] \(.*KeyError.*partition-id"):
        partition_order(grid, deployment())


def test_too_few_nodes_within_the_node_timeout_is_one_clear_error():
    with pytest.raises(RuntimeError, match=r"only 6 of num_clients=7 SuperNodes"):
        partition_order(InProcessGrid(6), deployment(num_clients=7))


def test_a_node_that_never_answers_is_a_counted_failure(tmp_path):
    grid = DeafGrid(6, deaf_node=2)
    summary = run_experiment(grid, deployment(), tmp_path, progress=False)
    rows = read_rows(tmp_path)[1:]
    assert summary["rounds_completed"] == 3
    deaf_rounds = [r for r in rows if r["clients_failed"]]
    assert deaf_rounds, "the deaf node (partition 0) is sampled in some round"
    for row in rows:
        assert row["clients_replied"] + row["clients_failed"] == 3
        assert row["clients_failed"] in (0, 1)
    for row in deaf_rounds:
        assert "no reply within engine.round_timeout=0.01 s" in row["client_error"]


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_tls_federation_with_node_auth_runs_refuses_strangers_and_survives_a_dead_node(
    tmp_path,
):
    run_dir = tmp_path / "run"
    with LocalFederation(tmp_path / "federation", 2) as federation:  # TLS and auth: defaults
        stranger_keys = make_node_keys(tmp_path / "stranger", "stranger")  # never registered
        stranger = federation.start_node(1, keys=stranger_keys, max_retries=2, name="stranger")
        plain_text = federation.start_node(0, tls=False, max_retries=2, name="plain-text")
        node_1 = federation.processes[2]
        overrides = ["engine=deployment", "engine.federation=local", "engine.round_timeout=30"]
        overrides += [*FAST, "num_clients=2", f"hydra.run.dir={run_dir}"]
        run = subprocess.Popen(
            [sys.executable, "-m", "fedbatch.simulate", *overrides],
            env=federation.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        metrics = run_dir / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 180)
        kill_node(node_1)  # mid-run: round 2 has to do without it
        output, _ = run.communicate(timeout=180)
        assert run.returncode == 0, output
        assert stranger.wait(60) != 0, "an unregistered SuperNode was let in"
        assert plain_text.wait(60) != 0, "a plain-text SuperNode joined a TLS SuperLink"
        assert "Failed to activate SuperNode" in federation.log("stranger").read_text()
    assert federation_processes(federation.home) == []

    rows = read_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert (rows[1]["clients_replied"], rows[1]["clients_failed"]) == (2, 0)
    assert (rows[2]["clients_replied"], rows[2]["clients_failed"]) == (1, 1)
    # The SuperLink drops the message when its TTL (the round timeout) runs out, or the
    # server stops waiting for it: either way a counted failure.
    error = rows[2]["client_error"]
    assert "no reply within engine.round_timeout=30 s" in error or "expired due to its TTL" in error

    simulated = tmp_path / "simulated"
    overrides = [*FAST, "num_clients=2", f"hydra.run.dir={simulated}"]
    subprocess.run([sys.executable, "-m", "fedbatch.simulate", *overrides], check=True)
    reference = read_rows(simulated)
    assert [r.keys() for r in rows] == [r.keys() for r in reference]
    until_the_kill = [without_server_data(without_measured(r[:2])) for r in (rows, reference)]
    assert until_the_kill[0] == until_the_kill[1]


def _stranger(workdir: Path, out: Path) -> subprocess.Popen:
    """A SuperNode `deploy local` did not start: it has the CA, but its key is unregistered.

    Its log is `out/stranger.log`.
    """
    connection = tomli.loads((workdir / "flwr-home" / "config.toml").read_text())
    keys = make_node_keys(out, "stranger")
    args = [flower_command("flower-supernode"), "--superlink"]
    args += [connection["superlink"]["local"]["address"], "--port", str(free_port())]
    args += ["--root-certificates", str(workdir / "certs" / "ca.crt")]
    args += ["--auth-supernode-private-key", str(keys.private_key), "--max-retries", "2"]
    args += ["--node-config", "partition-id=0 num-partitions=1"]
    with (out / "stranger.log").open("wb") as log:  # a pipe would outlive it: its helpers
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        return subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PATH": path},  # it starts `flower-superexec` by name
            start_new_session=True,
        )


@pytest.mark.slow
def test_ctrl_c_stops_the_default_local_federation_which_refuses_strangers(tmp_path):
    workdir = tmp_path / "work"
    args = ["local", "--nodes", "1", "--workdir", str(workdir), "rounds=50", "progress=off"]
    args.append(f"hydra.run.dir={tmp_path / 'run'}")  # not outputs/ in the checkout
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fedbatch.deploy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a terminal's Ctrl-C reaches the whole process group
    )
    assert launcher.stdout is not None
    for line in launcher.stdout:
        if line.startswith("Successfully started run"):
            break
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert (workdir / "keys" / "node-0.pub").exists()  # registered: auth is on
    stranger = _stranger(workdir, tmp_path)
    try:
        assert stranger.wait(60) != 0, "an unregistered SuperNode joined `deploy local`"
    finally:
        kill_node(stranger)  # with the helpers it started
    assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text()
    os.killpg(launcher.pid, signal.SIGINT)
    rest, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, rest
    assert "the federation is stopped" in rest
    assert federation_processes(workdir / "flwr-home") == []


@pytest.mark.slow
def test_deploy_local_interrupted_and_resumed_writes_the_in_process_numbers(tmp_path):
    """Ctrl-C stops the federation; `deploy local resume=` continues on a fresh one."""
    run_dir, simulated = tmp_path / "run", tmp_path / "simulated"
    kept = [arg for arg in FAST if not arg.startswith(("num_clients=", "rounds="))]
    overrides = [*kept, "rounds=4", "save.every=1"]
    command = [sys.executable, "-m", "fedbatch.deploy", "local", "--nodes", "4", "--insecure"]
    launcher = subprocess.Popen(
        [*command, *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(read_rows(run_dir)) >= 3, 180)
    os.killpg(launcher.pid, signal.SIGINT)
    said, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, said
    assert (run_dir / CHECKPOINT).exists()
    assert f"continue with: python -m fedbatch.deploy local resume={run_dir}" in said
    assert json.loads((run_dir / "summary.json").read_text())["stopped_because"] == "interrupted"
    resumed = subprocess.run(
        [sys.executable, "-m", "fedbatch.deploy", "local", "--insecure", f"resume={run_dir}"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    simulate_args = [*overrides, "num_clients=4", f"hydra.run.dir={simulated}"]
    subprocess.run([sys.executable, "-m", "fedbatch.simulate", *simulate_args], check=True)
    rows = [without_server_data(without_measured(read_rows(d))) for d in (run_dir, simulated)]
    assert rows[0] == rows[1]
    assert [row["round"] for row in rows[0]] == [0, 1, 2, 3, 4]
    assert (run_dir / "model.safetensors").exists() and not (run_dir / CHECKPOINT).exists()


@pytest.mark.slow
def test_an_unreachable_superlink_is_one_clear_error(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    connection = '[superlink.dead]\naddress = "127.0.0.1:1"\ninsecure = true\n'
    (home / "config.toml").write_text('[superlink]\ndefault = "dead"\n\n' + connection)
    overrides = ["engine=deployment", "engine.federation=dead", *FAST]
    overrides.append(f"hydra.run.dir={tmp_path / 'run'}")
    done = subprocess.run(
        [sys.executable, "-m", "fedbatch.simulate", *overrides],
        env=os.environ | {"FLWR_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if line.startswith("fedbatch: error:")]
    assert ours == [
        "fedbatch: error: `flwr run` to federation 'dead' ended (exit 1) before the run's "
        "summary came back: see its output above and the SuperLink's log"
    ]
    assert "Traceback" not in done.stdout + done.stderr
    assert (tmp_path / "run" / "config.yaml").exists()  # what was written stays
