"""Differential privacy: Flower's clipping wrappers around the configured strategy."""

from __future__ import annotations

from typing import Literal

from pydantic.dataclasses import dataclass

from fedbatch.config.schema import SECTION, Float, key

CLIPPING = ("none", "fixed", "adaptive")
SIDES = ("server", "client")


@dataclass(frozen=True, config=SECTION)
class PrivacyConfig:
    """Central DP (McMahan et al. 2018; Andrew et al. 2021 for adaptive clipping): each
    update's norm is clipped, by the server or by the client, and the server adds Gaussian
    noise of σ = noise_multiplier · clipping norm / clients_per_round to their mean."""

    clipping: Literal[CLIPPING] = key(
        "none", doc="none, fixed (clipping_norm) or adaptive (towards target_quantile)"
    )
    side: Literal[SIDES] = key(
        "server", doc="who clips: the server, or each client (the ClientApp's Flower mod)"
    )
    noise_multiplier: Float = key(1.0, ge=0, doc="σ / clipping norm of the added noise")
    clipping_norm: Float = key(1.0, gt=0, doc="the clipping norm (adaptive: its start)")
    target_quantile: Float = key(
        0.5, ge=0, le=1, doc="adaptive: the share of updates left unclipped it aims for"
    )
    clip_norm_lr: Float = key(0.2, gt=0, doc="adaptive: the clipping norm's learning rate")
