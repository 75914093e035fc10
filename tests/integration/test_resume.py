"""Never lose a run: killed (`kill -9`) or interrupted (Ctrl-C, SIGTERM) at a random
moment and resumed with `resume=<run dir>`, a run writes the rows and summary of a run that
never stopped; the final model loads without unpickling and scores what the summary says."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from fedbatch.engine import inprocess
from fedbatch.federated.checkpoint import save_checkpoint
from fedbatch.federated.workload import build_workload
from fedbatch.run_dir import CHECKPOINT, MODEL_FILE
from fedbatch.simulate import CONF_DIR, resume_run
from tests.conftest import FAST, MEASURED, read_rows, tiny_config, without_measured

ROUNDS = 20
# Each keeps state a resume must give back exactly: client streams, client and server
# optimizer moments, dropout masks, the adaptive batch planner and its noise averages (sync);
# the virtual clock, stragglers, dropouts and crashes (clock); the event queue of updates in
# flight (async).
SCENARIOS = {
    "sync": [
        "strategy=fedadam",
        "client.optimizer=adam",
        "client.optimizer_state=keep",
        "model.dropout=0.2",
        "stream=poisson",
        "stream.drift=covariate",
        "stream.drift_at=30",
        "batch=adaptive",
        "monitor.noise_across=2",
        "monitor.noise_exact=5",
    ],
    "clock": [
        "clock=devices",
        "clock.policy=deadline_drop",
        "clock.deadline=2",
        "clock.over_selection=0.5",
        "clock.spread=0.5",
        "clock.dropout=0.2",
        "clock.crash=0.1",
    ],
    "async": ["strategy=fedbuff", "clock=devices", "clock.spread=0.5"],
}


def _start(run_dir: Path, args: list[str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "fedbatch.simulate", *args, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows_written(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _signal_when(
    runs: list[tuple[subprocess.Popen[str], Path, int, int]], rng: random.Random
) -> list[str]:
    """For each (process, run dir, rows, signal): once `rows` rows are written, a random
    moment later (within a round or so), the signal. The processes' stderr."""
    pending, due = set(range(len(runs))), {}
    while pending:
        now = time.monotonic()
        for i in sorted(pending):
            process, run_dir, rows, sig = runs[i]
            if i not in due and (_rows_written(run_dir) >= rows or process.poll() is not None):
                due[i] = now + rng.uniform(0.0, 0.05)
            elif i in due and now >= due[i]:
                process.send_signal(sig)  # nothing, if it has ended: the caller sees that
                pending.remove(i)
        time.sleep(0.002)
    return [process.communicate(timeout=300)[1] for process, *_ in runs]


def _resume(run_dir: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "fedbatch.simulate", f"resume={run_dir}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _summary(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {key: value for key, value in summary.items() if key not in MEASURED}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scenario", "sig"),
    [("sync", signal.SIGTERM), ("clock", signal.SIGINT), ("async", signal.SIGTERM)],
)
def test_killed_or_interrupted_anywhere_a_resumed_run_writes_the_same_numbers(
    scenario, sig, tmp_path
):
    args = [*SCENARIOS[scenario], f"rounds={ROUNDS}", "progress=off"]
    whole, killed, stopped = tmp_path / "whole", tmp_path / "killed", tmp_path / "stopped"
    runs = [
        _start(whole, [*args, "save.every=3"]),
        _start(killed, [*args, "save.every=3"]),  # rounds after the checkpoint are replayed
        _start(stopped, [*args, "save.every=0"]),  # only the interrupt writes one
    ]
    rng = random.Random(scenario)
    _, said = _signal_when(
        [
            (runs[1], killed, rng.randint(2, ROUNDS - 6), signal.SIGKILL),
            (runs[2], stopped, rng.randint(2, ROUNDS - 6), sig),
        ],
        rng,
    )
    assert runs[0].wait(timeout=300) == 0
    assert runs[1].returncode == -signal.SIGKILL, "it ended before the kill"

    # Interrupted: one line saying where it stopped and how to go on, exit 128 + signal.
    assert runs[2].returncode == 128 + sig and "Traceback" not in said, said
    interrupted = json.loads((stopped / "summary.json").read_text())
    assert interrupted["stopped_because"] == "interrupted"
    rounds = interrupted["rounds_completed"]
    assert len(read_rows(stopped)) == rounds + 1  # round 0 … the last completed round
    name = signal.Signals(sig).name
    assert said.strip().splitlines()[-1] == (
        f"fedbatch: error: interrupted ({name}) after {rounds} rounds; "
        f"continue with: python -m fedbatch.simulate resume={stopped}"
    )

    resumed = [_resume(killed), _resume(stopped)]
    for process, run_dir in zip(resumed, (killed, stopped), strict=True):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert without_measured(read_rows(run_dir)) == without_measured(read_rows(whole))
        assert _summary(run_dir) == _summary(whole)
        assert not (run_dir / CHECKPOINT).exists()  # ended: nothing is left to resume
        ours, theirs = load_file(run_dir / MODEL_FILE), load_file(whole / MODEL_FILE)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "stopped", "whole"]


@pytest.mark.slow
def test_ray_stops_after_the_round_it_is_in_and_resumes_to_the_in_process_numbers(tmp_path):
    """Ray runs the round loop off the main thread: a signal asks it to stop after its
    round (Ray's own handlers, which would end the process unsaved, are put back)."""
    args = ["rounds=12", "num_clients=5", "clients_per_round=4", "model.dropout=0.2"]
    args += ["progress=off", "save.every=0"]
    reference, stopped = tmp_path / "inprocess", tmp_path / "ray"
    runs = [_start(reference, args), _start(stopped, [*args, "engine=ray", "engine.num_cpus=1"])]
    (said,) = _signal_when([(runs[1], stopped, 3, signal.SIGTERM)], random.Random(0))
    assert runs[0].wait(timeout=300) == 0
    assert runs[1].returncode == 143 and "Traceback" not in said, said
    assert said.strip().splitlines()[-1].startswith("fedbatch: error: interrupted (SIGTERM)")

    resumed = _resume(stopped)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert without_measured(read_rows(stopped)) == without_measured(read_rows(reference))
    assert _summary(stopped) == _summary(reference)


def test_the_saved_model_scores_the_test_accuracy_the_summary_reports(tmp_path):
    """Rebuilt from the config and `model.safetensors` alone, evaluated by hand."""
    cfg = tiny_config(rounds=3)
    inprocess.run(cfg, tmp_path, progress=False)
    workload = build_workload(cfg)
    model = workload.initial_model()
    model.load_state_dict(load_file(tmp_path / MODEL_FILE))
    with torch.no_grad():
        predicted = model.eval()(workload.x_test).argmax(dim=1)
    accuracy = (predicted == workload.y_test).sum().item() / len(workload.y_test)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert accuracy > 0.5  # trained: the file is the final model, not the initial one


# --- what resume= refuses, with one line and exit 2 ------------------------------------------


def _run_dir(tmp_path: Path, *overrides: str) -> Path:
    """A run directory as the CLI leaves it: its config.yaml."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        dcfg = compose("config", overrides=[*FAST, *overrides])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dcfg))
    return run_dir


def _refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        resume_run(list(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_resume_refuses_what_it_cannot_continue_with_one_line(tmp_path, capsys):
    assert "takes no other argument" in _refusal(capsys, f"resume={tmp_path}", "rounds=9")
    assert "holds no config.yaml" in _refusal(capsys, f"resume={tmp_path}")

    run_dir = _run_dir(tmp_path)
    (run_dir / "summary.json").write_text(json.dumps({"stopped_because": "rounds"}))
    said = _refusal(capsys, f"resume={run_dir}")
    assert "holds no checkpoint.pt" in said and "the run has ended (rounds)" in said

    (run_dir / CHECKPOINT).write_bytes(b"torn")
    assert "cannot be read as a checkpoint" in _refusal(capsys, f"resume={run_dir}")

    save_checkpoint(run_dir / CHECKPOINT, {"config": "{}", "round": 1})
    said = _refusal(capsys, f"resume={run_dir}")
    assert "config.yaml is not the config its checkpoint.pt was written with" in said


@pytest.mark.parametrize("engine", ["ray", "deployment"])
def test_resume_refuses_engines_whose_clients_keep_state_the_server_cannot_read(
    engine, tmp_path, capsys
):
    run_dir = _run_dir(tmp_path, f"engine={engine}", "client.optimizer_state=keep")
    if engine == "deployment":
        (run_dir / "config.yaml").write_text(
            (run_dir / "config.yaml").read_text().replace("shared_dir: false", "shared_dir: true")
        )
    save_checkpoint(run_dir / CHECKPOINT, {"config": "{}", "round": 1})
    said = _refusal(capsys, f"resume={run_dir}")
    assert f"engine={engine} cannot be resumed (client.optimizer_state=keep)" in said
    assert "inprocess and vectorized can" in said


def test_resume_of_a_deployment_whose_server_wrote_elsewhere_says_why_there_is_nothing(
    tmp_path, capsys
):
    said = _refusal(capsys, f"resume={_run_dir(tmp_path, 'engine=deployment')}")
    assert "holds no checkpoint.pt: engine=deployment writes checkpoints here only with " in said
    assert "engine.shared_dir=true" in said


def test_a_config_that_does_not_validate_is_named(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    (run_dir / "config.yaml").write_text(
        (run_dir / "config.yaml").read_text().replace("rounds: 2", "rounds: -1")
    )
    (run_dir / CHECKPOINT).write_bytes(b"")
    said = _refusal(capsys, f"resume={run_dir}")
    assert "config.yaml: rounds=-1" in said
