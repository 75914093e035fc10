"""Flower's own strategy classes, by name, with their parameters exposed to config."""

from __future__ import annotations

import inspect

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from fedbatch.checks import ConfigError, number
from fedbatch.config import RunConfig
from fedbatch.federated.records import aggregate_client_metrics

STRATEGY_CLASSES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}

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


def tunable_parameters(name: str) -> list[str]:
    """The constructor parameters of strategy `name` that config may set."""
    signature = inspect.signature(STRATEGY_CLASSES[name].__init__)
    return [p for p in signature.parameters if p not in _MANAGED and p != "self"]


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
}
# Strategies whose server step would also move BatchNorm's running statistics.
_SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


def check_strategy_params(cfg: RunConfig) -> None:
    name = cfg.strategy.name
    allowed = tunable_parameters(name)
    for key, value in cfg.strategy.params.items():
        if key not in allowed:
            raise ConfigError(
                f"strategy.{key}", value, f"parameters of {name}: " + (", ".join(allowed) or "none")
            )
        if key in _RANGES:
            low, high, inclusive = _RANGES[key]
            number(f"strategy.{key}", value, low, high, open_low=not inclusive)
    if name in _SERVER_OPTIMIZERS and cfg.model.norm == "batch":
        raise ConfigError(
            "model.norm",
            "batch",
            f"none, group or layer with strategy={name} (its server "
            "optimizer would also step BatchNorm's running statistics; use fedavg or fedprox)",
        )


def build_strategy(cfg: RunConfig) -> FedAvg:
    """The configured Flower strategy, sampling exactly `clients_per_round` clients."""
    check_strategy_params(cfg)
    per_round = cfg.clients_per_round
    # The loop offers the strategy exactly the nodes it drew (see federated/sampling.py).
    evaluate_nodes = max(1, int(cfg.num_clients * cfg.strategy.fraction_evaluate))
    return STRATEGY_CLASSES[cfg.strategy.name](
        fraction_train=1.0,  # every offered node (more than K when over-selecting)
        fraction_evaluate=cfg.strategy.fraction_evaluate,
        min_train_nodes=per_round,
        min_evaluate_nodes=evaluate_nodes,
        min_available_nodes=min(per_round, evaluate_nodes),
        train_metrics_aggr_fn=aggregate_client_metrics,
        evaluate_metrics_aggr_fn=aggregate_client_metrics,
        **cfg.strategy.params,
    )
