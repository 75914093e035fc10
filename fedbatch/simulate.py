"""`python -m fedbatch.simulate [overrides]`: run one federated experiment (Hydra main).

validate → build → engine.run → summary. Bad input is reported as one line before any
work starts; outputs (`config.yaml`, `metrics.jsonl`, `summary.json`) go to the Hydra
run directory.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedbatch.config import ConfigError, RunConfig, build_config
from fedbatch.config.compose import (
    CONF_DIR,
    OverrideError,
    open_arguments,
    register_schema,
    search_dirs,
)
from fedbatch.config.compose import check_overrides as check_config_overrides
from fedbatch.metrics.endings import failure
from fedbatch.metrics.interrupts import Interrupted, interruptible
from fedbatch.run_dir import (
    CHECKPOINT,
    CONFIG,
    RESUME_COMMAND,
    SUMMARY,
    already_holds,
    discard_rejected,
    held_run,
    run_dir_problem,
    why_no_checkpoint,
)
from fedbatch.sweep_plugins import plugin_error, register_resolvers

if TYPE_CHECKING:
    from fedbatch.federated.workload import Workload

register_resolvers()  # before Hydra composes: conf/hydra/launcher/parallel.yaml uses one
register_schema()  # conf/config.yaml starts from the schema's defaults


def fail(message: str) -> None:
    print(f"fedbatch: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject unknown groups, options and keys with one line and exit 2, before Hydra
    composes (the checks: `fedbatch.config.compose.check_overrides`)."""
    try:
        check_config_overrides(argv, conf_dir)
    except OverrideError as error:
        fail(str(error))


def check_sweep(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """In a multirun, validate every job's values before the first job starts."""
    other_primary = ("--config-path", "--config-name", "-cp", "-cn", "hydra/sweeper")
    if not {"-m", "--multirun"} & set(argv) or any(a.startswith(other_primary) for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from fedbatch.compat import sweep_jobs

    own = [a for a in argv if "=" in a and not a.lstrip("+").startswith(("-", "~", "hydra"))]
    user_dirs = ",".join(f"file://{d}" for d in search_dirs(argv, conf_dir)[1:])
    searchpath = [f"hydra.searchpath=[{user_dirs}]"] if user_dirs else []
    try:
        jobs = sweep_jobs(own)
    except HydraException as error:  # e.g. interval(), which only Optuna-like sweepers take
        fail(f"{error} (the default sweeper takes lists a,b,c and range())")
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        for number, job in enumerate(jobs):
            try:  # each job's options: `partition=iid,dirichlet partition.alpha=0.1`
                check_config_overrides([*job, *searchpath], conf_dir)
            except OverrideError as error:
                fail(f"job {number} ({' '.join(job)}): {error}")
            composed = compose("config", overrides=[*job, *searchpath])
            raw = OmegaConf.to_container(composed, resolve=True)
            try:
                build_config(raw)  # type: ignore[arg-type]
            except ConfigError as error:
                fail(f"job {number} ({' '.join(job)}): {error}")


def validate(raw: dict[str, Any]) -> RunConfig:
    """Everything that can be checked before training: values first, then the data."""
    cfg = build_config(raw)  # cheap: no torch or Flower import for built-in names
    from fedbatch.metrics.trackers import check_installed

    check_installed(cfg.logger)
    from fedbatch.config.run import check_model_input
    from fedbatch.federated.strategies import check_strategy_params
    from fedbatch.federated.workload import workload_for
    from fedbatch.sizes import check_data_fits, check_model_fits

    check_strategy_params(cfg)
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda", "auto or cpu (no CUDA device is visible)")
    check_data_fits(cfg)  # before generating it
    workload = workload_for(cfg.to_json())  # loads data and partitions: too many clients
    dataset = workload.dataset
    check_model_input(cfg, dataset.input_shape)  # the user's own data: known once loaded
    check_model_fits(cfg, dataset.input_shape, dataset.num_classes)  # before building it
    if cfg.client.precision == "fp16" and workload.device.type != "cuda":
        raise ConfigError("client.precision", "fp16", "fp32 or bf16 without a CUDA device")
    smallest = int(workload.partitions.sizes.min())
    if cfg.model.norm == "batch" and smallest < 2:
        raise ConfigError(
            "model.norm",
            "batch",
            f"none, group or layer here: a client holds only {smallest} "
            "sample and BatchNorm needs two (or use fewer clients)",
        )
    if cfg.model.target or cfg.client.optimizer_target or cfg.strategy.target:
        _build_own_classes(cfg, workload)
    return cfg


def _build_own_classes(cfg: RunConfig, workload: Workload) -> None:
    """Build each `_target_` once before any round, so that a constructor refusing its
    arguments, or a model whose outputs are not logits, is one line here rather than a
    failure in every client."""
    from fedbatch.federated.server_app import quiet_flower_logs
    from fedbatch.federated.strategies import build_strategy
    from fedbatch.local.models import check_logits
    from fedbatch.local.optim import build_optimizer

    quiet_flower_logs()  # as in the run: Flower's FedAvg logs its settings when built
    model = workload.initial_model()
    if cfg.model.target is not None:
        check_logits(cfg.model, model, workload.x_test[:2], workload.dataset.num_classes)
    if cfg.client.optimizer_target is not None:
        build_optimizer(model.parameters(), cfg.client)
    if cfg.strategy.target is not None:
        build_strategy(cfg)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _progress_wanted(setting: str) -> bool:
    """Off only when asked: off a terminal, progress is a plain line per round."""
    return setting != "off"


def objective(summary: dict[str, Any]) -> float:
    """What a sweeper maximizes (Optuna): the final test accuracy, else the best one, else 0.

    Optuna needs a float; a run whose last round was not evaluated falls back to its best
    evaluation, and one never evaluated scores 0.0.
    """
    for key in ("test_accuracy", "best_test_accuracy"):
        if summary.get(key) is not None:
            return float(summary[key])
    return 0.0


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    held = held_run(out_dir)
    if held is not None:  # e.g. two runs started within the same second
        fail(already_holds("hydra.run.dir", out_dir, held))
    try:
        raw = resolved(dcfg)
        cfg = validate(raw)
    except (ConfigError, OverrideError) as error:
        if multirun:  # the sweep goes on; sweep.csv lists this job as failed
            return job_failed(str(error))
        discard_rejected(out_dir)
        fail(str(error))
    raw["num_clients"] = cfg.num_clients  # a natural partition's: from the data
    (out_dir / CONFIG).write_text(OmegaConf.to_yaml(raw), encoding="utf-8")
    return execute(cfg, out_dir, multirun=multirun)


def resolved(dcfg: DictConfig) -> dict[str, Any]:
    """The config with its interpolations resolved; one that resolves to nothing
    (`client.lr=${oops}`) is an OverrideError naming the key."""
    try:
        raw = OmegaConf.to_container(dcfg, resolve=True)
    except OmegaConfBaseException as error:
        reason = str(error).strip().splitlines()[0]
        raise OverrideError(f"{getattr(error, 'full_key', None) or 'config'}: {reason}") from None
    assert isinstance(raw, dict)
    return raw


def job_failed(message: str) -> float:
    """A multirun job that cannot run: said in one line, on the console and in its
    simulate.log; the other jobs still run."""
    logging.getLogger("fedbatch").error(message)
    return 0.0


def execute(
    cfg: RunConfig, out_dir: Path, *, multirun: bool, resume: dict[str, Any] | None = None
) -> float:
    """Run (or, from the checkpoint `resume`, continue) the experiment into `out_dir`;
    say how it ended in one line, and exit non-zero when it did not do what was asked
    (outside a multirun, whose sweep.csv says so instead)."""
    from fedbatch.engine import EngineError, run_engine
    from fedbatch.metrics.callbacks import ResumeError

    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state DB, on import

    try:
        with interruptible(deferred=cfg.engine.name == "ray"):  # its loop: not in main
            summary = run_engine(
                cfg, out_dir, progress=_progress_wanted(cfg.progress), resume=resume
            )
    except (EngineError, ResumeError) as error:
        if multirun:
            return job_failed(str(error))
        fail(str(error))
    except Interrupted as interruption:
        print(f"fedbatch: error: {interrupted_line(interruption, out_dir)}", file=sys.stderr)
        sys.exit(interruption.exit_code)
    accuracy = summary.get("test_accuracy")
    print(
        f"fedbatch: stopped after {summary['rounds_completed']} rounds "
        f"({summary['stopped_because']}), test accuracy {_fmt(accuracy)} "
        f"(best {_fmt(summary['best_test_accuracy'])}), {summary['seconds']:.2f} s → {out_dir}"
    )
    if summary.get("client_error"):
        print(f"fedbatch: a client failed: {summary['client_error']}", file=sys.stderr)
    ended = failure(summary)
    if ended is not None and not multirun:
        # A sweep's job ends normally (sweep.csv gives its status): one diverging LR of a
        # grid must not stop the others.
        print(f"fedbatch: error: {ended.message}", file=sys.stderr)
        sys.exit(ended.exit_code)
    return objective(summary)


def interrupted_line(interruption: Interrupted, out_dir: Path) -> str:
    """What an interrupted run says: where it stopped and how to go on."""
    summary = out_dir / SUMMARY
    rounds = json.loads(summary.read_text())["rounds_completed"] if summary.exists() else 0
    line = f"interrupted ({interruption}) after {rounds} rounds"
    if (out_dir / CHECKPOINT).exists():
        launcher = os.environ.get(RESUME_COMMAND, "python -m fedbatch.simulate")
        line += f"; continue with: {launcher} resume={out_dir}"
    return line


def resume_run(argv: list[str]) -> None:
    """`resume=<run dir>`: continue an interrupted run in its own directory, with the
    config it started with, from its checkpoint."""
    from fedbatch.federated.checkpoint import CheckpointError
    from fedbatch.federated.saving import client_state_keepers, run_checkpoint

    if len(argv) != 1:
        fail("resume=<run dir> takes no other argument: a run continues as it began")
    run_dir = Path(argv[0].partition("=")[2])
    config = run_dir / CONFIG
    if not config.is_file():
        fail(f"resume={run_dir} holds no config.yaml: not a fedbatch run directory")
    try:
        cfg = validate(yaml.safe_load(config.read_text(encoding="utf-8")))
    except ConfigError as error:
        fail(f"resume={run_dir}: config.yaml: {error}")
    if not (run_dir / CHECKPOINT).is_file():
        fail(f"resume={run_dir} holds no {CHECKPOINT}: {why_no_checkpoint(run_dir, cfg)}")
    keepers = client_state_keepers(cfg)
    if cfg.engine.name in ("ray", "deployment") and keepers:
        fail(
            f"resume={run_dir}: engine={cfg.engine.name} cannot be resumed ({keepers[0]}): "
            "the server cannot read its clients' node state; inprocess and vectorized can"
        )
    try:
        state = run_checkpoint(run_dir, cfg)
    except CheckpointError as error:
        fail(str(error))
    execute(cfg, run_dir, multirun=False, resume=state)


def cli() -> None:
    if any(arg.startswith("resume=") for arg in sys.argv[1:]):
        resume_run(sys.argv[1:])
        return
    problem = plugin_error(sys.argv[1:], CONF_DIR)
    if problem:
        fail(problem)
    problem = run_dir_problem(sys.argv[1:])
    if problem:
        fail(problem)
    check_overrides(sys.argv[1:])
    sys.argv[1:] = open_arguments(sys.argv[1:])  # before Hydra reads them
    check_sweep(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
