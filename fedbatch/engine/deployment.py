"""The deployment engine: `flwr run` submits the run to a SuperLink whose SuperNodes train.

The same ServerApp and ClientApp as the simulation engines (`pyproject.toml`,
`[tool.flwr.app.components]`). The Hydra-composed config travels as one JSON field of the
run config (`fedbatch-config`); `output-dir` tells the ServerApp where to write
`metrics.jsonl` and `summary.json` (on the SuperLink's machine). Each SuperNode holds the
partition its `--node-config` names.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fedbatch
from fedbatch.config import RunConfig
from fedbatch.deploy.federation import flower_command
from fedbatch.engine import EngineError


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


def run_config_toml(cfg: RunConfig, out_dir: Path) -> str:
    """The run config: JSON strings are valid TOML basic strings."""
    return (
        f"fedbatch-config = {json.dumps(cfg.to_json())}\noutput-dir = {json.dumps(str(out_dir))}\n"
    )


def _submit(command: list[str], federation: str) -> int:
    """Run `flwr run --stream`, passing its output through; stop the run on Ctrl-C."""
    run_id = None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            if line.startswith("Successfully started run"):
                run_id = line.split()[-1]
        return process.wait()
    except KeyboardInterrupt:
        if run_id is not None:
            subprocess.run([flower_command("flwr"), "stop", run_id, federation], timeout=60)
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run(cfg: RunConfig, out_dir: Path, *, progress: bool) -> dict[str, Any]:
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fedbatch-run-config-") as tmp:
        config_file = Path(tmp) / "run-config.toml"
        config_file.write_text(run_config_toml(cfg, out_dir), encoding="utf-8")
        federation = cfg.engine.federation
        command = [flower_command("flwr"), "run", str(app_dir(cfg)), federation]
        code = _submit([*command, "--run-config", str(config_file), "--stream"], federation)
    summary = out_dir / "summary.json"
    if code != 0 or not summary.is_file() or summary.stat().st_mtime < started:
        raise DeploymentError(
            f"`flwr run` to federation {cfg.engine.federation!r} ended (exit {code}) without "
            f"writing {summary}: see its output above and the SuperLink's log"
        )
    return json.loads(summary.read_text(encoding="utf-8"))
