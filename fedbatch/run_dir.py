"""Run directories never mix: a directory that holds a run is not written into again
(only `resume=` continues it), and a config refused before any work leaves nothing behind.

Light on purpose (no torch, no Flower): `simulate` asks before Hydra creates anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from fedbatch.metrics.endings import INTERRUPTED

if TYPE_CHECKING:
    from fedbatch.config import RunConfig

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.safetensors"  # the final global model (save.model)
SUMMARY = "summary.json"
RUN_FILES = (CONFIG, "metrics.jsonl", SUMMARY, CHECKPOINT)  # what shows a run was here
RESUME_COMMAND = "FEDBATCH_RESUME_COMMAND"  # how to resume, if a launcher runs simulate
HYDRA_FILES = (".hydra", "simulate.log")  # what Hydra writes before fedbatch runs
MULTIRUN_FLAGS = {"-m", "--multirun"}


def held_run(directory: Path) -> str | None:
    """The file that shows `directory` holds a run, or None."""
    return next((name for name in RUN_FILES if (directory / name).exists()), None)


def _held_sweep(directory: Path) -> str | None:
    if (directory / "sweep.csv").exists():
        return "sweep.csv"
    for job in sorted(p for p in directory.iterdir() if p.is_dir()):
        held = held_run(job)
        if held is not None:
            return f"{job.name}/{held}"
    return None


def run_dir_problem(argv: list[str]) -> str | None:
    """One line on the output directory named on the command line (`hydra.run.dir`, or
    `hydra.sweep.dir` in a multirun) when it cannot take this run; else None."""
    multirun = bool(MULTIRUN_FLAGS & set(argv))
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    values = [arg.partition("=")[2] for arg in argv if arg.lstrip("+").partition("=")[0] == key]
    if not values:
        return None
    value = values[-1].strip()
    if not value:
        return f"{key}= is empty: name a directory (by default each run gets a new one)"
    if "${" in value:  # resolved by Hydra (e.g. ${now:...}): checked when the run starts
        return None
    path = Path(value)
    if path.exists() and not path.is_dir():
        return f"{key}={value} is a file, not a directory"
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"{key}={value} cannot be made: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{key}={value} cannot be written ({existing} is not writable)"
    if not path.is_dir():
        return None
    if multirun:
        held = _held_sweep(path)
        if held is not None:
            return f"{key}={value} already holds a sweep ({held}): name a new directory"
        return None
    held = held_run(path)
    if held is not None:
        return already_holds(key, path, held)
    return None


def already_holds(key: str, path: Path, held: str) -> str:
    return (
        f"{key}={path} already holds a run ({held}): name a new directory, "
        f"or continue that run with resume={path}"
    )


def discard_rejected(out_dir: Path) -> None:
    """Remove what Hydra made for a run refused before any work: its directory (if it
    holds nothing else) and the parents that were left empty, up to the working directory."""
    if any(p.name not in HYDRA_FILES for p in out_dir.iterdir()):
        return
    shutil.rmtree(out_dir)
    cwd = Path.cwd()
    for parent in out_dir.absolute().parents:
        if parent == cwd or not parent.is_relative_to(cwd):
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break


def why_no_checkpoint(run_dir: Path, cfg: RunConfig) -> str:
    """Why `run_dir` has no checkpoint to resume from."""
    if cfg.engine.name == "deployment" and not cfg.engine.shared_dir:
        return (
            "engine=deployment writes checkpoints here only with engine.shared_dir=true "
            "(the SuperLink's machine sees this directory; deploy local sets it)"
        )
    summary = run_dir / SUMMARY
    if summary.exists():
        stopped = json.loads(summary.read_text()).get("stopped_because")
        if stopped != INTERRUPTED:
            return f"the run has ended ({stopped}), nothing is left to resume"
    return "the run stopped before writing one (save.every=0?)"
