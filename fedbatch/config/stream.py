"""Config of streaming partitions: arrivals over virtual time, buffers, batching, drift."""

from __future__ import annotations

from typing import Literal

from pydantic.dataclasses import dataclass

from fedbatch.checks import ConfigError
from fedbatch.config.schema import SECTION, Float, Int, key

ARRIVALS = ("static", "constant", "poisson", "bursty")
PATTERNS = ("onoff", "diurnal")
BUFFERS = ("all", "window", "reservoir")
BATCHING = ("wait", "available")
DRIFTS = ("none", "label", "covariate", "concept")
DRIFT_MODES = ("sudden", "gradual", "recurrent")
COVARIATE_SHIFTS = ("noise", "scale", "rotation")


STREAMING = ("constant", "poisson", "bursty")
BURSTY = ("bursty",)


@dataclass(frozen=True, config=SECTION)
class StreamConfig:
    name: Literal[ARRIVALS] = key(
        "static", doc="arrivals; static: the whole partition is there at t = 0"
    )
    rate: Float = key(5.0, gt=0, only=STREAMING, doc="mean arrivals per virtual second, per client")
    rate_spread: Float = key(
        0.0, ge=0, only=STREAMING, doc="σ of a log-normal per-client rate multiplier (mean 1)"
    )
    pattern: Literal[PATTERNS] = key(
        "onoff", only=BURSTY, doc="on/off square wave or diurnal sinusoid"
    )
    period: Float = key(60.0, gt=0, only=BURSTY, doc="virtual seconds per cycle")
    duty: Float = key(0.5, gt=0, le=1, only=BURSTY, doc="onoff: fraction of each period on")
    round_seconds: Float = key(
        10.0, gt=0, only=STREAMING, doc="virtual seconds per round (without a clock)"
    )
    buffer: Literal[BUFFERS] = key(
        "all", only=STREAMING, doc="what a client keeps of its arrivals: all, window, reservoir"
    )
    capacity: Int = key(1000, ge=1, only=STREAMING, doc="window / reservoir size (samples)")
    replay_ratio: Float = key(
        0.0, ge=0, le=1, only=STREAMING, doc="online: fraction of each batch replayed"
    )
    passes: Literal[1] | None = key(
        None,
        only=STREAMING,
        doc="1: online, each arrival trained once; null: epochs over buffer",
        allowed="1 (online: each arrival trained once) or null",
    )
    batching: Literal[BATCHING] = key(
        "wait", only=STREAMING, doc="wait for B new samples, or train on what is available"
    )
    drift: Literal[DRIFTS] = key("none", only=STREAMING, doc="what changes over time")
    drift_at: Float | None = key(
        None, ge=0, only=STREAMING, doc="virtual seconds of the (first client's) onset"
    )
    drift_mode: Literal[DRIFT_MODES] = key(
        "sudden", only=STREAMING, doc="sudden, gradual (over drift_window), recurrent"
    )
    drift_window: Float = key(
        0.0, ge=0, only=STREAMING, doc="gradual: ramp length; recurrent: seconds per concept"
    )
    drift_stagger: Float = key(
        0.0, ge=0, only=STREAMING, doc="per-client onsets spread uniformly over this many s"
    )
    covariate: Literal[COVARIATE_SHIFTS] = key(
        "noise", only=STREAMING, doc="covariate drift: additive noise, scaling or a rotation"
    )
    drift_strength: Float = key(
        1.0, ge=0, only=STREAMING, doc="noise σ, scale factor, or rotation mix"
    )
    label_alpha: Float = key(
        0.5, gt=0, only=STREAMING, doc="label drift: Dirichlet concentration of the new prior"
    )

    @property
    def streaming(self) -> bool:
        return self.name != "static"


def check_stream(cfg: StreamConfig, run_seconds: float) -> None:
    """Checks across keys; `run_seconds` (rounds · round_seconds) bounds drift."""
    if cfg.replay_ratio > 0 and cfg.passes != 1:
        raise ConfigError(
            "stream.replay_ratio", cfg.replay_ratio, "0 unless stream.passes=1 (online training)"
        )
    _check_drift(cfg, run_seconds)


def _check_drift(cfg: StreamConfig, run_seconds: float) -> None:
    if cfg.drift == "none":
        return
    if not cfg.streaming:
        raise ConfigError("stream.drift", cfg.drift, "none with stream=static (no arrival times)")
    if cfg.drift_at is None:
        raise ConfigError("stream.drift_at", None, "the onset in virtual seconds")
    if cfg.drift_at >= run_seconds:
        allowed = f"a time before the run ends ({run_seconds:g} virtual seconds)"
        raise ConfigError("stream.drift_at", cfg.drift_at, allowed)
    if cfg.drift_mode != "sudden" and cfg.drift_window <= 0:
        raise ConfigError(
            "stream.drift_window", cfg.drift_window, f"> 0 with drift_mode={cfg.drift_mode}"
        )
    if cfg.drift_window > run_seconds:
        allowed = f"at most the run's {run_seconds:g} virtual seconds"
        raise ConfigError("stream.drift_window", cfg.drift_window, allowed)
