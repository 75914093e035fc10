"""Flower's own strategy classes, by name, with their parameters exposed to config, or a
Flower Strategy of the user's own named by `_target_`.

Every synchronous strategy is built here with what fedbatch's round loop needs (`_MANAGED`:
it takes every node the loop offers, and combines client metrics correctly), plus the
config's parameters; `fedbatch.registry.STRATEGIES` names the classes.
"""

from __future__ import annotations

import inspect
from typing import Any

from flwr.serverapp import strategy as flower

from fedbatch.checks import ConfigError, number
from fedbatch.compat import FedAvgWithMeanHook
from fedbatch.config import RunConfig
from fedbatch.federated.records import aggregate_arrayrecords, aggregate_client_metrics
from fedbatch.federated.robust import check_robust, robust_arguments, with_privacy
from fedbatch.registry import STRATEGIES, TargetError, one_line


class FedAvg(FedAvgWithMeanHook):
    """Flower's FedAvg, averaging client weights with fedbatch's `aggregate_arrayrecords`:
    Flower's arithmetic without `.npy` header parsing, the same bytes out, ~5% of a small
    run saved. Only fedbatch's strategies get it; Flower's own classes are left as they are.
    """

    average_arrays = staticmethod(aggregate_arrayrecords)


# Each of Flower's FedAvg family, with fedbatch's FedAvg right after it in the MRO: its
# own `aggregate_train` (FedAvgM's momentum, FedOpt's server optimizer) still runs, and its
# `super().aggregate_train()` reaches the fast mean above instead of Flower's FedAvg. The
# names stay Flower's, so logs and `summary()` read the same.
class FedAvgM(flower.FedAvgM, FedAvg):
    """Flower's FedAvgM on fedbatch's FedAvg."""


class FedProx(flower.FedProx, FedAvg):
    """Flower's FedProx on fedbatch's FedAvg."""


class FedAdam(flower.FedAdam, FedAvg):
    """Flower's FedAdam (a FedOpt) on fedbatch's FedAvg."""


class FedYogi(flower.FedYogi, FedAvg):
    """Flower's FedYogi (a FedOpt) on fedbatch's FedAvg."""


class FedAdagrad(flower.FedAdagrad, FedAvg):
    """Flower's FedAdagrad (a FedOpt) on fedbatch's FedAvg."""


# Set by fedbatch from top-level keys, so they cannot be overridden per strategy.
_MANAGED = {
    "fraction_train",
    "fraction_evaluate",
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "weighted_by_key",
    "arrayrecord_key",
    "configrecord_key",
    "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn",
}


# Asynchronous strategies run fedbatch's event loop (federated/async_loop.py), not a class.
ASYNC_PARAMETERS: dict[str, tuple[str, ...]] = {
    "fedbuff": ("buffer_size", "concurrency", "server_learning_rate", "staleness_exponent",
                "hinge_cutoff"),
    "fedasync": ("concurrency", "mixing", "staleness_exponent", "hinge_cutoff"),
}  # fmt: skip


def strategy_class(cfg: RunConfig) -> type:
    """The class `strategy` names: a built-in (a Flower strategy, or for the asynchronous
    ones fedbatch's event loop) or its `_target_` (a Flower strategy)."""
    if cfg.strategy.target is not None:
        return STRATEGIES.target(cfg.strategy.target)
    return STRATEGIES.resolve(cfg.strategy.name)


def _takes_any_keyword(signature: inspect.Signature) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def tunable_parameters(cfg: RunConfig) -> list[str] | None:
    """The constructor parameters of the configured strategy that config may set (None:
    any, for a `_target_` taking **kwargs)."""
    name = cfg.strategy.name
    if name in ASYNC_PARAMETERS:
        return list(ASYNC_PARAMETERS[name])
    signature = inspect.signature(strategy_class(cfg))
    if cfg.strategy.target is not None and _takes_any_keyword(signature):
        return None
    named = (p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD)
    return [p.name for p in named if p.name not in _MANAGED and p.kind is not p.VAR_POSITIONAL]


# Ranges of the strategies' parameters: (lowest, highest, lowest allowed itself).
_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "proximal_mu": (0.0, None, True),
    "server_learning_rate": (0.0, None, False),
    "server_momentum": (0.0, 1.0, True),
    "eta": (0.0, None, False),
    "eta_l": (0.0, None, False),
    "tau": (0.0, None, False),
    "beta_1": (0.0, 1.0, True),
    "beta_2": (0.0, 1.0, True),
    "mixing": (0.0, 1.0, False),
    "staleness_exponent": (0.0, None, True),
    "hinge_cutoff": (0.0, None, True),
}
# Strategies whose server step would also move BatchNorm's running statistics.
_SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


def check_strategy_params(cfg: RunConfig) -> None:
    name = cfg.strategy.name
    allowed = tunable_parameters(cfg)
    for key, value in cfg.strategy.params.items():
        if allowed is not None and key not in allowed:
            raise ConfigError(
                f"strategy.{key}", value, f"parameters of {name}: " + (", ".join(allowed) or "none")
            )
        if cfg.strategy.target is None and key in _RANGES and value is not None:
            low, high, inclusive = _RANGES[key]
            number(f"strategy.{key}", value, low, high, open_low=not inclusive)
    if name in ASYNC_PARAMETERS:
        _check_async(cfg)
    if cfg.strategy.target is None:
        check_robust(cfg)
    if name in _SERVER_OPTIMIZERS and cfg.model.norm == "batch":
        raise ConfigError(
            "model.norm",
            "batch",
            f"none, group or layer with strategy={name} (its server "
            "optimizer would also step BatchNorm's running statistics; use fedavg or fedprox)",
        )


def _check_async(cfg: RunConfig) -> None:
    name, params = cfg.strategy.name, cfg.strategy.set_params
    if not cfg.clock.on:
        allowed = f"devices with strategy={name} (updates arrive in virtual-time order)"
        raise ConfigError("clock", "off", allowed)
    concurrency = params.get("concurrency", cfg.clients_per_round)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= cfg.num_clients:
        allowed = f"an integer from 1 to num_clients={cfg.num_clients}"
        raise ConfigError("strategy.concurrency", concurrency, allowed)
    for key in ("dropout", "crash", "night"):
        if getattr(cfg.clock, key) > 0:
            allowed = f"0 with strategy={name} (availability applies to synchronous rounds)"
            raise ConfigError(f"clock.{key}", getattr(cfg.clock, key), allowed)
    buffer_size = params.get("buffer_size", 1)
    if not isinstance(buffer_size, int) or not 1 <= buffer_size <= concurrency:
        allowed = f"an integer from 1 to strategy.concurrency={concurrency}"
        raise ConfigError("strategy.buffer_size", buffer_size, allowed)


def build_strategy(cfg: RunConfig) -> flower.Strategy:
    """The configured Flower strategy, sampling exactly `clients_per_round` clients. A
    `_target_` gets those of fedbatch's arguments its constructor names (all of them if it
    takes **kwargs) and its config's parameters."""
    check_strategy_params(cfg)
    per_round = cfg.clients_per_round
    # The loop offers the strategy exactly the nodes it drew (see federated/sampling.py).
    evaluate_nodes = max(1, int(cfg.num_clients * cfg.strategy.fraction_evaluate))
    managed: dict[str, Any] = dict(
        fraction_train=1.0,  # every offered node (more than K when over-selecting)
        fraction_evaluate=cfg.strategy.fraction_evaluate,
        min_train_nodes=per_round,
        min_evaluate_nodes=evaluate_nodes,
        min_available_nodes=min(per_round, evaluate_nodes),
        train_metrics_aggr_fn=aggregate_client_metrics,
        evaluate_metrics_aggr_fn=aggregate_client_metrics,
    )
    strategy = strategy_class(cfg)
    if cfg.strategy.target is None:
        params = robust_arguments(cfg) | cfg.strategy.set_params
        return with_privacy(strategy(**managed, **params), cfg)
    signature = inspect.signature(strategy)
    if not _takes_any_keyword(signature):
        managed = {k: v for k, v in managed.items() if k in signature.parameters}
    try:
        return with_privacy(strategy(**managed, **cfg.strategy.set_params), cfg)
    except Exception as error:  # the user's constructor: one line, whatever it raised
        given = ", ".join(f"{k}={v!r}" for k, v in cfg.strategy.set_params.items())
        problem = "cannot be built" + (given and f" with {given}") + f": {one_line(error)}"
        raise TargetError(STRATEGIES.target_key, cfg.strategy.target, problem) from None
