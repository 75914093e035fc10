"""`python -m fedbatch.simulate [overrides]`: run one federated experiment (Hydra main).

validate → build → engine.run → summary. Bad input is reported as one line before any
work starts; outputs (`config.yaml`, `metrics.jsonl`, `summary.json`) go to the Hydra
run directory.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedbatch.config import ConfigError, RunConfig, build_config
from fedbatch.config.compose import CONF_DIR, OverrideError
from fedbatch.config.compose import check_overrides as check_config_overrides
from fedbatch.config.compose import fedbatch_overrides as _overrides
from fedbatch.sweep_plugins import plugin_error, register_resolvers

register_resolvers()  # before Hydra composes: conf/hydra/launcher/parallel.yaml uses one


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
    if not {"-m", "--multirun"} & set(argv) or any(
        a.startswith(("--config", "hydra/sweeper")) for a in argv
    ):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from fedbatch.compat import sweep_jobs

    own = [f"{k}={v}" for k, v in _overrides(argv)]
    try:
        jobs = sweep_jobs(own)
    except HydraException as error:  # e.g. interval(), which only Optuna-like sweepers take
        fail(f"{error} (the default sweeper takes lists a,b,c and range())")
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        for number, job in enumerate(jobs):
            raw = OmegaConf.to_container(compose("config", overrides=job), resolve=True)
            try:
                build_config(raw)  # type: ignore[arg-type]
            except ConfigError as error:
                fail(f"job {number} ({' '.join(job)}): {error}")


def validate(raw: dict[str, Any]) -> RunConfig:
    """Everything that can be checked before training: values first, then the data."""
    cfg = build_config(raw)  # cheap: no torch or Flower import before this passes
    from fedbatch.federated.strategies import check_strategy_params
    from fedbatch.federated.workload import workload_for

    check_strategy_params(cfg)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda", "auto or cpu (no CUDA device is visible)")
    workload = workload_for(cfg.to_json())  # loads data and partitions: too many clients
    if cfg.client.precision == "fp16" and workload.device.type != "cuda":
        raise ConfigError("client.precision", "fp16", "fp32 or bf16 without a CUDA device")
    smallest = min(len(p) for p in workload.partitions)
    if cfg.model.norm == "batch" and smallest < 2:
        raise ConfigError(
            "model.norm",
            "batch",
            f"none, group or layer here: a client holds only {smallest} "
            "sample and BatchNorm needs two (or use fewer clients)",
        )
    return cfg


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _progress_wanted(setting: str) -> bool:
    return setting == "on" or (setting == "auto" and sys.stderr.isatty())


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
    raw = OmegaConf.to_container(dcfg, resolve=True)
    assert isinstance(raw, dict)
    try:
        cfg = validate(raw)
    except ConfigError as error:
        fail(str(error))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(raw), encoding="utf-8")

    from fedbatch.engine import EngineError, run_engine

    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state DB, on import

    try:
        summary = run_engine(cfg, out_dir, progress=_progress_wanted(cfg.progress))
    except EngineError as error:
        fail(str(error))
    accuracy = summary.get("test_accuracy")
    print(
        f"fedbatch: stopped after {summary['rounds_completed']} rounds "
        f"({summary['stopped_because']}), test accuracy {_fmt(accuracy)} "
        f"(best {_fmt(summary['best_test_accuracy'])}), {summary['seconds']:.2f} s → {out_dir}"
    )
    if summary.get("client_error"):
        print(f"fedbatch: a client failed: {summary['client_error']}", file=sys.stderr)
    return objective(summary)


def cli() -> None:
    problem = plugin_error(sys.argv[1:], CONF_DIR)
    if problem:
        fail(problem)
    check_overrides(sys.argv[1:])
    check_sweep(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
