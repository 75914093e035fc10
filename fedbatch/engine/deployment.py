"""The deployment engine: `flwr run` submits the run to a SuperLink whose SuperNodes train.

The same ServerApp and ClientApp as the simulation engines (`pyproject.toml`,
`[tool.flwr.app.components]`). The Hydra-composed config travels as one JSON field of the
run config (`fedbatch-config`, see `fedbatch.federated.run_config`). The ServerApp prints
each round's row and the summary; `flwr run --stream` brings them back here, into the run
directory, wherever the SuperLink runs. Each SuperNode holds the partition its
`--node-config` names.

With `engine.shared_dir=true` (`deploy local` sets it) the SuperLink's machine sees the run
directory at the same path: the ServerApp writes the run's files there itself (rows,
summary, checkpoints, the final model), exactly as the simulation engines do, and a run is
resumed by sending `resume` with the config it began with. Clients that keep state in their
node contexts, which no server can read, are refused at `resume=` (fedbatch.simulate).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import fedbatch
from fedbatch.config import RunConfig
from fedbatch.deploy.federation import flower_command
from fedbatch.engine import EngineError
from fedbatch.federated.run_config import CONFIG_KEY, OUTPUT_KEY, RESUME_KEY
from fedbatch.metrics.callbacks import Callback, RoundState, RunOutcome
from fedbatch.metrics.endings import INTERRUPTED, LOST
from fedbatch.metrics.interrupts import Interrupted
from fedbatch.metrics.sink import ROW_LINE, SUMMARY_LINE, write_summary
from fedbatch.metrics.trackers import trackers_for


class DeploymentError(EngineError):
    """The run could not be submitted or did not finish."""


def app_dir(cfg: RunConfig) -> Path:
    """The Flower app to submit: `engine.app_dir`, or the checkout fedbatch runs from."""
    path = Path(cfg.engine.app_dir or Path(fedbatch.__file__).resolve().parents[1])
    if not (path / "pyproject.toml").is_file():
        raise DeploymentError(
            f"engine.app_dir={str(path)!r} holds no pyproject.toml with [tool.flwr.app]: "
            "point it at a fedbatch checkout"
        )
    return path


def run_config_toml(cfg: RunConfig, out_dir: Path, *, resume: bool = False) -> str:
    """The run config: the whole config, composed here where a study's `--config-dir`
    lies (JSON strings are valid TOML basic strings). `output-dir` only where the SuperLink's
    machine shares the run directory; otherwise the rows stream back here."""
    shared = str(out_dir.resolve()) if cfg.engine.shared_dir else ""
    return (
        f"{CONFIG_KEY} = {json.dumps(cfg.to_json())}\n{OUTPUT_KEY} = {json.dumps(shared)}\n"
        f"{RESUME_KEY} = {str(resume).lower()}\n"
    )


class RunDirectory:
    """Takes the rows and the summary that the ServerApp prints: writes them into this
    machine's run directory, as `simulate` does for the other engines, unless the ServerApp
    writes them there itself (`shared`)."""

    def __init__(self, out_dir: Path, rounds: int, *, shared: bool = False) -> None:
        self.rounds = rounds
        self.metrics = None if shared else (out_dir / "metrics.jsonl").open("w", encoding="utf-8")
        self.summary_path = None if shared else out_dir / "summary.json"
        self.summary: dict[str, Any] | None = None
        # `logger`'s trackers and the caller's callbacks: they run here, where rows arrive
        self.callbacks: list[Callback] = []
        self.last_round = 0

    def take(self, line: str) -> bool:
        """Keep `line` if it is a row or the summary (and say so)."""
        for prefix in (ROW_LINE, SUMMARY_LINE):
            if line.startswith(prefix):
                try:
                    values = json.loads(line.removeprefix(prefix))
                except json.JSONDecodeError:
                    print(f"fedbatch: skipped a garbled line: {line[:120]!r}", file=sys.stderr)
                    return True
                self._keep(prefix, values)
                return True
        return False

    def _keep(self, prefix: str, values: dict[str, Any]) -> None:
        if prefix == SUMMARY_LINE:
            self.summary = values
            if self.summary_path is not None:
                write_summary(self.summary_path, values)
            for callback in self.callbacks:
                rounds, why = values.get("rounds_completed", 0), values.get("stopped_because")
                callback.on_run_end(RunOutcome(rounds, str(why), values.get("seconds", 0.0)))
            return
        if self.metrics is not None:
            self.metrics.write(json.dumps(values) + "\n")
            self.metrics.flush()
        self.last_round = values["round"]
        for callback in self.callbacks:
            callback.on_round_end(RoundState(values["round"], None, values))
        accuracy = values.get("test_accuracy")
        shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
        print(f"round {values['round']}/{self.rounds}: test accuracy {shown}", flush=True)

    def close(self, ended: str = LOST) -> None:
        """Close the files; callbacks left without a summary end as `ended` (`interrupted`,
        or `lost`: the run failed before its summary came back), not as runs under way."""
        if self.summary is None:
            for callback in self.callbacks:
                callback.on_run_end(RunOutcome(self.last_round, ended, 0.0))
        if self.metrics is not None:
            self.metrics.close()


STARTED = re.compile(r"Successfully started run (\d+)")


def _submit(command: list[str], federation: str, run_dir: RunDirectory) -> int:
    """Run `flwr run --stream`, keeping rows and summary, passing other output through;
    stop the run on Ctrl-C."""
    run_id, ended = None, LOST
    # Unbuffered: `flwr` writes the streamed log without flushing, and rows must arrive
    # as they happen, not when the run ends.
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if run_dir.take(line):
                continue
            sys.stdout.write(line)
            sys.stdout.flush()
            started = STARTED.match(line)
            run_id = started.group(1) if started else run_id
        return process.wait()
    except (KeyboardInterrupt, Interrupted):
        ended = INTERRUPTED
        if run_id is not None:  # best effort: the SuperLink may be going down as well
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run([flower_command("flwr"), "stop", run_id, federation], timeout=30)
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        run_dir.close(ended)


def run(
    cfg: RunConfig,
    out_dir: Path,
    *,
    progress: bool,
    resume: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Submit the run (or, given the checkpoint `resume` that the ServerApp reads from the
    shared run directory, its continuation) and wait for it. No progress bar: the server
    runs elsewhere, and each round prints one line as its row comes back; `callbacks` run
    here as the rows and the summary arrive."""
    if resume is not None and not cfg.engine.shared_dir:
        raise DeploymentError("resume= on engine=deployment needs engine.shared_dir=true")
    app = app_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = RunDirectory(out_dir, cfg.rounds, shared=cfg.engine.shared_dir)
    if not cfg.engine.shared_dir:  # shared: the ServerApp runs them, as it writes the files
        run_dir.callbacks = trackers_for(cfg.logger, out_dir, asdict(cfg), run_dir)
    run_dir.callbacks += callbacks
    federation = cfg.engine.federation
    with tempfile.TemporaryDirectory(prefix="fedbatch-run-config-") as tmp:
        config_file = Path(tmp) / "run-config.toml"
        toml = run_config_toml(cfg, out_dir, resume=resume is not None)
        config_file.write_text(toml, encoding="utf-8")
        command = [flower_command("flwr"), "run", str(app), federation, "--stream"]
        code = _submit([*command, "--run-config", str(config_file)], federation, run_dir)
    if code != 0 or run_dir.summary is None:
        raise DeploymentError(
            f"`flwr run` to federation {federation!r} ended (exit {code}) before the run's "
            "summary came back: see its output above and the SuperLink's log"
        )
    return run_dir.summary
