"""Flower's robust and fair aggregators (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan,
QFedAvg) and its differential-privacy wrappers, with the combinations that cannot work
refused before any round as one line.

Byzantine-robust rules need enough honest clients among those aggregated: Krum and
MultiKrum score each update by its n − f − 2 nearest neighbours (n ≥ 2f + 3), Bulyan runs
Krum repeatedly and trims 2f per coordinate (n ≥ 4f + 3), where n is `clients_per_round`
and f is `strategy.num_malicious_nodes`. QFedAvg estimates the Lipschitz constant as
1 / client.lr, which is one number only when every client steps with the same LR all run.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp import strategy as flower

from fedbatch.checks import ConfigError
from fedbatch.config import RunConfig

# Needed clients per round as a function of f = num_malicious_nodes.
_HONEST_MAJORITY = {"krum": (2, 3), "multikrum": (2, 3), "bulyan": (4, 3)}
_COUNTS = {"num_malicious_nodes": 0, "num_nodes_to_select": 1}  # integers, lowest allowed


def check_robust(cfg: RunConfig) -> None:
    name, params, k = cfg.strategy.name, cfg.strategy.set_params, cfg.clients_per_round
    for key, low in _COUNTS.items():
        value = params.get(key)
        if value is not None and (type(value) is not int or value < low):
            raise ConfigError(f"strategy.{key}", value, f"an integer >= {low}")
    if name in _HONEST_MAJORITY:
        times, plus = _HONEST_MAJORITY[name]
        f = params.get("num_malicious_nodes", 0)
        if k < times * f + plus:
            most = max(0, (k - plus) // times)
            raise ConfigError(
                "strategy.num_malicious_nodes",
                f,
                f"at most {most} with clients_per_round={k} ({name} needs at least "
                f"{times}f + {plus} clients per round)",
            )
        select = params.get("num_nodes_to_select", 1)
        if name == "multikrum" and select > k - f:
            allowed = f"an integer from 1 to clients_per_round − num_malicious_nodes = {k - f}"
            raise ConfigError("strategy.num_nodes_to_select", select, allowed)
    beta = params.get("beta")
    if name == "fedtrimmedavg" and beta is not None and not 0 <= beta < 0.5:
        raise ConfigError("strategy.beta", beta, "a number >= 0 and < 0.5 (cut at each end)")
    if name == "qfedavg":
        _check_qfedavg(cfg)


def _check_qfedavg(cfg: RunConfig) -> None:
    client, batch = cfg.client, cfg.batch
    varying = [
        (client.lr_scaling != "none", "client.lr_scaling", client.lr_scaling, "none"),
        (client.lr_schedule != "constant", "client.lr_schedule", client.lr_schedule, "constant"),
        (client.warmup_steps > 0, "client.warmup_steps", client.warmup_steps, "0"),
        (client.warmup_epochs > 0, "client.warmup_epochs", client.warmup_epochs, "0"),
        (batch.adascale, "batch.adascale", True, "false"),
    ]
    for varies, key, value, allowed in varying:
        if varies:
            raise ConfigError(
                key,
                value,
                f"{allowed} with strategy=qfedavg (its Lipschitz estimate 1/client.lr "
                "needs one LR for every client and round)",
            )
    q = cfg.strategy.set_params.get("q")
    if q is not None and q < 0:
        raise ConfigError("strategy.q", q, "a number >= 0")


def robust_arguments(cfg: RunConfig) -> dict[str, Any]:
    """Constructor arguments fedbatch fills in: QFedAvg's client LR is client.lr."""
    if cfg.strategy.name == "qfedavg":
        return {"client_learning_rate": cfg.client.lr}
    return {}


def with_privacy(strategy: flower.Strategy, cfg: RunConfig) -> flower.Strategy:
    """`strategy` inside the configured differential-privacy wrapper, if any."""
    privacy = cfg.privacy
    if privacy.clipping == "none":
        return strategy
    side = "ServerSide" if privacy.side == "server" else "ClientSide"
    kind = "Fixed" if privacy.clipping == "fixed" else "Adaptive"
    wrapper = getattr(flower, f"DifferentialPrivacy{side}{kind}Clipping")
    arguments: dict[str, Any] = {
        "noise_multiplier": privacy.noise_multiplier,
        "num_sampled_clients": cfg.clients_per_round,
    }
    if privacy.clipping == "fixed":
        arguments["clipping_norm"] = privacy.clipping_norm
    else:
        arguments |= {
            "initial_clipping_norm": privacy.clipping_norm,
            "target_clipped_quantile": privacy.target_quantile,
            "clip_norm_lr": privacy.clip_norm_lr,
        }
    return wrapper(strategy, **arguments)
