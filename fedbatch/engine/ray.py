"""The Ray engine: Flower's Simulation Runtime (`run_simulation`) with Ray actors.

The ServerApp runs the same round loop as every engine, in this process; ClientApps run
in Ray actors with `engine.num_cpus`/`engine.num_gpus` each. `engine.address` attaches
to an existing Ray cluster instead of starting a local one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedbatch.compat import start_ray
from fedbatch.config import RunConfig
from fedbatch.federated.client_app import app as client_app
from fedbatch.federated.server_app import quiet_flower_logs, run_experiment
from fedbatch.metrics.callbacks import Callback
from fedbatch.metrics.interrupts import Interrupted, reclaim_signals


def run(
    cfg: RunConfig,
    out_dir: Path,
    *,
    progress: bool,
    resume: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    interrupted: list[Interrupted] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run = run_experiment(
                grid, cfg, out_dir, progress=progress, resume=resume, callbacks=callbacks
            )
            summary.update(run)
        except Interrupted as interruption:  # saved: Flower's thread ends normally
            interrupted.append(interruption)

    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
    if cfg.engine.address:
        init_args["address"] = cfg.engine.address
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    # Keep Ray's current behaviour (no GPU env override) without its FutureWarning.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    quiet_flower_logs()
    start_ray(init_args)  # ray.init replaces our signal handlers: put them back
    reclaim_signals()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=cfg.num_clients,
        backend_config={
            "client_resources": {
                "num_cpus": cfg.engine.num_cpus,
                "num_gpus": cfg.engine.num_gpus,
            },
            "init_args": init_args,
        },
    )
    if interrupted:
        raise interrupted[0]
    return summary
