"""The Flower ServerApp: an experiment's callbacks around the round loop.

`run_experiment` is what every engine calls: it builds the workload and the standard
callbacks (server-side evaluation, convergence monitoring, metrics sink, summary, progress),
then the caller's own, and runs `round_loop.run_rounds` on the engine's Grid, its nodes in
partition order.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedbatch.config import RunConfig
from fedbatch.federated.checkpoint import CheckpointError
from fedbatch.federated.evaluation import FinalModelProbe, PooledExactNoise, ServerEvaluation
from fedbatch.federated.nodes import PartitionedGrid, partition_order
from fedbatch.federated.records import model_to_arrays
from fedbatch.federated.round_loop import run_rounds
from fedbatch.federated.run_config import (
    OUTPUT_KEY,
    config_from_run_config,
    output_dir,
    resuming,
)
from fedbatch.federated.saving import MODEL_FILE, FinalModelFile, checkpointer_for, run_checkpoint
from fedbatch.federated.workload import Workload, workload_for
from fedbatch.metrics.callbacks import Callback, ConvergenceMonitor
from fedbatch.metrics.interrupts import Interrupted, interruptible
from fedbatch.metrics.progress import progress_display
from fedbatch.metrics.sink import JsonlSink, LineSink, SummaryFile
from fedbatch.metrics.trackers import trackers_for

__all__ = ["app", "run_experiment", "run_rounds", "serve", "standard_callbacks"]


def standard_callbacks(
    workload: Workload, out_dir: Path | None, *, progress: bool, lines: bool = False
) -> tuple[list[Callback], SummaryFile]:
    """Evaluation → convergence (→ final probe) → metrics.jsonl (→ model.safetensors) →
    summary.json (→ trackers) (→ progress) (→ rows and summary as lines on stdout). No
    files when `out_dir` is None."""
    cfg = workload.cfg
    monitor = ConvergenceMonitor(cfg.stop)
    summary = SummaryFile(None if out_dir is None else out_dir / "summary.json", monitor)
    callbacks: list[Callback] = [ServerEvaluation(workload), monitor]
    if PooledExactNoise.wanted(workload):
        callbacks.insert(1, PooledExactNoise(workload))
    if FinalModelProbe.wanted(workload):  # after the monitor: it probes where a stop ends
        callbacks.append(FinalModelProbe(workload))
    if out_dir is not None:
        callbacks.append(JsonlSink(out_dir / "metrics.jsonl"))
        if cfg.save.model:
            callbacks.append(FinalModelFile(out_dir / MODEL_FILE, workload))
    callbacks.append(summary)
    if out_dir is not None:  # after the summary and the model, which they report
        callbacks += trackers_for(cfg.logger, out_dir, asdict(cfg), summary)
    if progress:
        callbacks.append(progress_display(cfg.rounds, cfg.progress))
    if lines:
        callbacks.append(LineSink(summary))
    return callbacks, summary


def quiet_flower_logs() -> None:
    """Flower logs every sampling and aggregation at INFO: noise on a hot path."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's link-state DB


def run_experiment(
    grid: Grid,
    cfg: RunConfig,
    out_dir: Path | None,
    *,
    progress: bool,
    lines: bool = False,
    resume: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Run the experiment on `grid`, writing metrics.jsonl, summary.json, checkpoints and
    the final model to `out_dir` (if any) and, with `lines`, printing rows and summary as
    lines; or continue it from the checkpoint `resume`. `callbacks` run after the standard
    ones, so each row they see is complete."""
    quiet_flower_logs()
    workload = workload_for(cfg.to_json())
    standard, summary = standard_callbacks(workload, out_dir, progress=progress, lines=lines)
    ordered = PartitionedGrid(grid, partition_order(grid, cfg), cfg.engine.round_timeout)
    run_rounds(
        ordered,
        cfg,
        [*standard, *callbacks],
        initial_arrays=model_to_arrays(workload.initial_model()),
        partition_sizes=workload.partitions.sizes.tolist(),  # Python ints, as before
        checkpointer=checkpointer_for(cfg, out_dir, grid),
        resume=resume,
    )
    return summary.summary


app = ServerApp()


def serve(grid: Grid, run_config: Mapping[str, Any]) -> None:
    """Run (or, with `resume`, continue) the experiment `run_config` names. Rows stream back
    to the submitting machine; `output-dir`, if set, gets the run's files here. Ctrl-C and
    SIGTERM (`flwr stop`) save the run, as in the other engines, before Flower's own exit."""
    cfg = config_from_run_config(run_config)
    out_dir = output_dir(run_config)
    resume = None
    if resuming(run_config):
        if out_dir is None:
            raise CheckpointError(f"resume=true needs {OUTPUT_KEY}: the run directory to resume")
        resume = run_checkpoint(out_dir, cfg)
    try:
        with interruptible():
            run_experiment(grid, cfg, out_dir, progress=False, lines=True, resume=resume)
    except Interrupted as interruption:
        signal.raise_signal(interruption.signal_number)  # to Flower's handler, now restored
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under `flwr run`: the config comes from the run config, as JSON or
    as overrides of the packaged config (`fedbatch.federated.run_config`)."""
    serve(grid, context.run_config)
