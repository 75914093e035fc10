"""Sweeps that scale out: Hydra's joblib and submitit launchers and its Optuna sweeper.

fedbatch's own options for them live in `fedbatch/conf/hydra/launcher/` (`parallel`, `slurm`) and
`fedbatch/conf/hydra/sweeper/` (`lr_tuning`); the plugins come with `pip install "fedbatch[sweep]"`.
This module holds what those configs need before Hydra composes them: the OmegaConf
resolver `${fedbatch.jobs:THREADS}` (jobs that fit this machine's cores) and a one-line
check that a chosen launcher or sweeper exists and that its plugin is installed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fedbatch.checks import ConfigError, integer

JOBS_RESOLVER = "fedbatch.jobs"

GROUPS = ("hydra/launcher", "hydra/sweeper")  # each also has Hydra's own `basic`


@dataclass(frozen=True)
class Plugin:
    """A Hydra plugin: its module, its group and the options that need it installed."""

    module: str
    group: str
    options: tuple[str, ...]  # the plugin's own options and fedbatch's configs on it

    @property
    def package(self) -> str:
        return self.module.rpartition(".")[2].replace("_", "-")


PLUGINS = (
    Plugin("hydra_plugins.hydra_joblib_launcher", "hydra/launcher", ("joblib", "parallel")),
    Plugin(
        "hydra_plugins.hydra_submitit_launcher",
        "hydra/launcher",
        ("submitit_local", "submitit_slurm", "slurm"),
    ),
    Plugin("hydra_plugins.hydra_optuna_sweeper", "hydra/sweeper", ("optuna", "lr_tuning")),
)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or SLURM's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_jobs(threads: object, cores: int | None = None) -> int:
    """Jobs that run at once without oversubscribing: cores // threads, at least 1."""
    per_job = integer("engine.threads", threads, 1)
    return max(1, (cores if cores is not None else available_cores()) // per_job)


def register_resolvers() -> None:
    """Register fedbatch's OmegaConf resolvers (idempotent); call before Hydra composes."""
    if not OmegaConf.has_resolver(JOBS_RESOLVER):
        OmegaConf.register_new_resolver(JOBS_RESOLVER, parallel_jobs)


def group_options(group: str, conf_dir: Path) -> tuple[str, ...]:
    """Every option of `hydra/launcher` or `hydra/sweeper`, installed or not."""
    own = (path.stem for path in (conf_dir / group).glob("*.yaml"))
    plugins = (option for plugin in PLUGINS if plugin.group == group for option in plugin.options)
    return tuple(sorted({"basic", *plugins, *own}))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no hydra_plugins namespace at all
        return False


def plugin_error(argv: list[str], conf_dir: Path) -> str | None:
    """One line on an unknown launcher or sweeper, or one whose plugin is missing; else None."""
    for arg in argv:
        group, sep, option = arg.partition("=")
        if not sep or group not in GROUPS:
            continue
        allowed = group_options(group, conf_dir)
        if option not in allowed:
            return str(ConfigError(group, option, "one of " + ", ".join(allowed)))
        for plugin in PLUGINS:
            if option in plugin.options and not _installed(plugin.module):
                return f"{group}={option} needs {plugin.package}: pip install 'fedbatch[sweep]'"
    return None
