"""`python -m fedbatch.simulate [overrides]`: run one federated experiment (Hydra main).

validate → build → engine.run → summary. Bad input is reported as one line before any
work starts; outputs (`config.yaml`, `metrics.jsonl`, `summary.json`) go to the Hydra
run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedbatch.config import ConfigError, RunConfig, build_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def fail(message: str) -> None:
    print(f"fedbatch: error: {message}", file=sys.stderr)
    sys.exit(2)


def _known_keys(conf_dir: Path) -> dict[str, set[str]]:
    """Keys each config section may have: `config.yaml`'s, and any option's of a group."""
    root = OmegaConf.load(conf_dir / "config.yaml")
    known = {"": {k for k in root if k not in ("defaults", "hydra")}}
    for name, section in root.items():
        if isinstance(section, DictConfig) and name != "hydra":
            known[str(name)] = set(section.keys())
    for group in (p for p in conf_dir.iterdir() if p.is_dir()):
        known[""].add(group.name)
        keys = known.setdefault(group.name, set())
        for option in group.glob("*.yaml"):
            keys.update(OmegaConf.load(option).keys())
    return known


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject unknown groups, options and keys with one line, before Hydra composes."""
    known = _known_keys(conf_dir)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.startswith(("hydra", "+", "~")) or key.count(".") > 1:
            continue
        section, _, name = key.rpartition(".")
        if section not in known:
            section, name = "", section
        if name not in known[section]:
            where = f"keys of {section}" if section else "top-level keys and groups"
            allowed_keys = ", ".join(sorted(known[section]))
            shown = f"{section}.{name}" if section else name
            fail(f"{shown} is not a known key: allowed {where}: {allowed_keys}")
        group = conf_dir / key
        if section or not group.is_dir() or "(" in value:
            continue
        allowed = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice and choice not in allowed:
                fail(f"{key}={choice!r} is invalid: allowed one of {', '.join(allowed)}")


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
    smallest = min(len(p) for p in workload.partitions)
    if cfg.model.norm == "batch" and smallest < 2:
        raise ConfigError(
            "model.norm",
            "batch",
            f"none, group or layer here: a client holds only {smallest} "
            "sample and BatchNorm needs two (or use fewer clients)",
        )
    return cfg


def _progress_wanted(setting: str) -> bool:
    return setting == "on" or (setting == "auto" and sys.stderr.isatty())


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> float | None:
    raw = OmegaConf.to_container(dcfg, resolve=True)
    assert isinstance(raw, dict)
    try:
        cfg = validate(raw)
    except ConfigError as error:
        fail(str(error))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(raw), encoding="utf-8")

    from fedbatch.engine import run_engine

    summary = run_engine(cfg, out_dir, progress=_progress_wanted(cfg.progress))
    accuracy = summary.get("test_accuracy")
    print(
        f"fedbatch: stopped after {summary['rounds_completed']} rounds "
        f"({summary['stopped_because']}), test accuracy {accuracy:.4f} "
        f"(best {summary['best_test_accuracy']:.4f}), {summary['seconds']:.2f} s → {out_dir}"
    )
    if summary.get("client_error"):
        print(f"fedbatch: a client failed: {summary['client_error']}", file=sys.stderr)
    return accuracy


def cli() -> None:
    check_overrides(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
