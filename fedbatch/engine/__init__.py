"""Engines move messages between the one server loop and the ClientApps."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

from fedbatch.config import RunConfig


class EngineError(RuntimeError):
    """The engine could not run the experiment (one line for the user, no traceback)."""


def run_engine(
    cfg: RunConfig, out_dir: Path, *, progress: bool, resume: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run the experiment on the configured engine, or continue it from the checkpoint
    `resume`; return its summary."""
    engine = import_module(f"fedbatch.engine.{cfg.engine.name}")
    return engine.run(cfg, out_dir, progress=progress, resume=resume)
