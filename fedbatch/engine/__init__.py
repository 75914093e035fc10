"""Engines move messages between the one server loop and the ClientApps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbatch.config import RunConfig

if TYPE_CHECKING:
    from fedbatch.metrics.callbacks import Callback


class EngineError(RuntimeError):
    """The engine could not run the experiment (one line for the user, no traceback)."""


def run_engine(
    cfg: RunConfig,
    out_dir: Path,
    *,
    progress: bool,
    resume: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Run the experiment on the configured engine, or continue it from the checkpoint
    `resume`; return its summary. `callbacks` (`fedbatch.metrics.callbacks.Callback`) see
    every complete row and the run's end, in this process, on every engine."""
    engine = import_module(f"fedbatch.engine.{cfg.engine.name}")
    return engine.run(cfg, out_dir, progress=progress, resume=resume, callbacks=callbacks)
