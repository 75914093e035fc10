"""What each config name builds, and the user's own classes named by `_target_`.

Every kind of component a config picks by name (model, strategy, optimizer, dataset, batch
schedule) has one table here from its names to "module:attribute" strings. Strings, not
objects, so that this module and `fedbatch/config/` stay free of torch and Flower: a
built-in name is validated by looking it up, and its object is imported only when a run
builds it (`Registry.resolve`). A built-in is added by one entry here and one YAML file
in `fedbatch/conf/<group>/`.

Models, strategies and optimizers also take a class of the user's own, named by `_target_`
(an importable dotted path `package.module.Class`, as in Hydra). `Registry.target` imports
it and checks that it subclasses the kind's base class, so a typo or the wrong kind of
class is one line before any work; it is the only import of torch or Flower here, and only
for a `_target_`. How each kind's class is constructed is the builder's business
(`local/models.py`, `local/optim.py`, `federated/strategies.py`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from fedbatch.checks import ConfigError

TARGET = "_target_"
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class TargetError(ConfigError):
    """A `_target_` that cannot be imported, is the wrong kind of class, or cannot be
    built: one line naming the key and the path."""

    def __init__(self, key: str, path: str, problem: str) -> None:
        ValueError.__init__(self, f"{key}={path!r} {problem}")
        self.key, self.path, self.problem = key, path, problem


class TargetImportError(TargetError):
    """A `_target_` this process cannot import (its module is not installed here, or
    not on PYTHONPATH, or fails when imported)."""


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, for errors raised by the user's code."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@cache
def _load(ref: str) -> Any:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Registry:
    key: str  # the config key that names an entry, e.g. `model` or `client.optimizer`
    entries: Mapping[str, str]  # built-in name → "module:attribute"
    base: str | None = None  # "module:Class" a `_target_` must subclass; None: names only

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def resolve(self, name: str) -> Any:
        """The built-in `name`'s object, imported on first use."""
        if name not in self.entries:
            raise ConfigError(self.key, name, "one of " + ", ".join(self.entries))
        return _load(self.entries[name])

    @property
    def target_key(self) -> str:
        return f"{self.key}.{TARGET}"

    def check_path(self, path: object) -> str:
        """`path` if it has the form of an importable `module.Class` (nothing imported)."""
        if not isinstance(path, str) or not _DOTTED.fullmatch(path):
            allowed = "an importable dotted path module.Class, e.g. mypkg.nets.TinyNet"
            raise ConfigError(self.target_key, path, allowed)
        return path

    def target(self, path: object) -> type:
        """The class `path` names, imported now (not cached: a node that cannot import it
        fails each time, with the reason) and checked to subclass `base`."""
        assert self.base is not None, f"{self.key} takes built-in names only"
        path = self.check_path(path)
        module, _, name = path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name)
        except Exception as error:  # missing module or attribute, or the module's own error
            problem = f"cannot be imported: {one_line(error)}"
            raise TargetImportError(self.target_key, path, problem) from None
        if not (isinstance(found, type) and issubclass(found, _load(self.base))):
            base = self.base.replace(":", ".")
            raise TargetError(self.target_key, path, f"is not a {base} subclass")
        return found


MODELS = Registry(
    "model",
    {
        "logreg": "fedbatch.local.models:logreg",
        "mlp": "fedbatch.local.models:mlp",
        "cnn1d": "fedbatch.local.models:cnn1d",
        "cnn": "fedbatch.local.models:cnn",
        "resnet": "fedbatch.local.resnet:resnet",
        "gru": "fedbatch.local.sequence_models:gru",
        "transformer": "fedbatch.local.sequence_models:transformer",
    },
    base="torch.nn:Module",
)
STRATEGIES = Registry(
    "strategy",
    {
        "fedavg": "fedbatch.federated.strategies:FedAvg",
        "fedavgm": "fedbatch.federated.strategies:FedAvgM",
        "fedprox": "fedbatch.federated.strategies:FedProx",
        "fedadam": "fedbatch.federated.strategies:FedAdam",
        "fedyogi": "fedbatch.federated.strategies:FedYogi",
        "fedadagrad": "fedbatch.federated.strategies:FedAdagrad",
        # robust and fair aggregation (federated/robust.py checks what each needs)
        "fedmedian": "flwr.serverapp.strategy:FedMedian",
        "fedtrimmedavg": "flwr.serverapp.strategy:FedTrimmedAvg",
        "krum": "flwr.serverapp.strategy:Krum",
        "multikrum": "flwr.serverapp.strategy:MultiKrum",
        "bulyan": "flwr.serverapp.strategy:Bulyan",
        "qfedavg": "flwr.serverapp.strategy:QFedAvg",
        # asynchronous: fedbatch's event loop in virtual time, not a Flower strategy
        "fedbuff": "fedbatch.federated.async_loop:FedBuff",
        "fedasync": "fedbatch.federated.async_loop:FedAsync",
    },
    base="flwr.serverapp.strategy:Strategy",
)
OPTIMIZERS = Registry(
    "client.optimizer",
    {
        "sgd": "fedbatch.local.optim:sgd",
        "momentum": "fedbatch.local.optim:momentum",
        "nesterov": "fedbatch.local.optim:nesterov",
        "adam": "fedbatch.local.optim:adam",
        "adamw": "fedbatch.local.optim:adamw",
        "rmsprop": "fedbatch.local.optim:rmsprop",
        "adagrad": "fedbatch.local.optim:adagrad",
        "lars": "fedbatch.local.optim:lars",
    },
    base="torch.optim:Optimizer",
)
# Datasets and batch schedules are names only: their functions work on fedbatch's own
# config sections and server state (README, "Extending fedbatch", says why).
DATASETS = Registry(
    "data",
    {
        "synthetic": "fedbatch.data.datasets:synthetic",
        "mnist1d": "fedbatch.data.datasets:mnist1d",
        "digits": "fedbatch.data.datasets:digits",
        "images": "fedbatch.data.datasets:images",
        "text": "fedbatch.data.text:text",
        "hf": "fedbatch.data.files:hf",
        "arrays": "fedbatch.data.files:arrays",
    },
)
BATCH_SCHEDULES = Registry(
    "batch",
    {
        "constant": "fedbatch.local.batch_sizing:constant_batch",
        "step": "fedbatch.local.batch_sizing:step_batch",
        "ramp": "fedbatch.local.batch_sizing:ramp_batch",
        "adaptive": "fedbatch.local.batch_sizing:adaptive_batch",
    },
)
