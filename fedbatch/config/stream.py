"""Config of streaming partitions: arrivals over virtual time, buffers, batching, drift."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fedbatch.checks import (
    ConfigError,
    SectionReader,
    check_known,
    choice,
    integer,
    number,
    optional,
)

ARRIVALS = ("static", "constant", "poisson", "bursty")
PATTERNS = ("onoff", "diurnal")
BUFFERS = ("all", "window", "reservoir")
BATCHING = ("wait", "available")
DRIFTS = ("none", "label", "covariate", "concept")
DRIFT_MODES = ("sudden", "gradual", "recurrent")
COVARIATE_SHIFTS = ("noise", "scale", "rotation")


@dataclass(frozen=True)
class StreamConfig:
    name: str = "static"  # static: the whole partition is there at t = 0 (no streaming)
    rate: float = 5.0  # mean arrivals per virtual second, per client
    rate_spread: float = 0.0  # σ of a log-normal per-client rate multiplier (mean 1)
    pattern: str = "onoff"  # bursty: on/off square wave or diurnal sinusoid
    period: float = 60.0  # bursty: seconds per cycle
    duty: float = 0.5  # bursty onoff: fraction of each period that is on
    round_seconds: float = 10.0  # virtual seconds per round (until the real-time clock)
    buffer: str = "all"  # what a client keeps of its arrivals
    capacity: int = 1000  # window / reservoir size
    replay_ratio: float = 0.0  # online: fraction of each batch replayed from the buffer
    passes: int | None = None  # 1: online, each arrival trained on once; null: epochs over buffer
    batching: str = "wait"  # wait for B new samples, or train on what is available
    drift: str = "none"
    drift_at: float | None = None  # virtual seconds of the (first client's) onset
    drift_mode: str = "sudden"
    drift_window: float = 0.0  # gradual: ramp length; recurrent: seconds per concept
    drift_stagger: float = 0.0  # per-client onsets spread uniformly over this many seconds
    covariate: str = "noise"  # covariate drift: additive noise, scaling or a rotation
    drift_strength: float = 1.0  # noise σ, scale factor, or rotation mix
    label_alpha: float = 0.5  # label drift: Dirichlet concentration of the new class prior

    @property
    def streaming(self) -> bool:
        return self.name != "static"


def stream_config(raw: Mapping[str, Any], run_seconds: float | None = None) -> StreamConfig:
    """Validate the stream section; `run_seconds` (rounds · round_seconds) bounds drift."""
    d = StreamConfig()
    check_known("stream", raw, set(asdict(d)))

    r = SectionReader("stream", raw, d)
    positive, non_negative, named = r.positive, r.non_negative, r.named

    passes = raw.get("passes")
    if passes not in (None, 1):
        raise ConfigError("stream.passes", passes, "1 (online: each arrival trained once) or null")
    cfg = StreamConfig(
        name=choice("stream", raw.get("name", d.name), ARRIVALS),
        rate=positive("rate"),
        rate_spread=non_negative("rate_spread"),
        pattern=named("pattern", PATTERNS),
        period=positive("period"),
        duty=number("stream.duty", raw.get("duty", d.duty), 0.0, 1.0, open_low=True),
        round_seconds=positive("round_seconds"),
        buffer=named("buffer", BUFFERS),
        capacity=integer("stream.capacity", raw.get("capacity", d.capacity), 1),
        replay_ratio=non_negative("replay_ratio", 1.0),
        passes=passes,
        batching=named("batching", BATCHING),
        drift=named("drift", DRIFTS),
        drift_at=optional(
            lambda k, v: number(k, v, 0.0, open_low=False), "stream.drift_at", raw.get("drift_at")
        ),
        drift_mode=named("drift_mode", DRIFT_MODES),
        drift_window=non_negative("drift_window"),
        drift_stagger=non_negative("drift_stagger"),
        covariate=named("covariate", COVARIATE_SHIFTS),
        drift_strength=non_negative("drift_strength"),
        label_alpha=positive("label_alpha"),
    )
    if cfg.replay_ratio > 0 and cfg.passes != 1:
        raise ConfigError(
            "stream.replay_ratio", cfg.replay_ratio, "0 unless stream.passes=1 (online training)"
        )
    _check_drift(cfg, run_seconds)
    return cfg


def _check_drift(cfg: StreamConfig, run_seconds: float | None) -> None:
    if cfg.drift == "none":
        return
    if not cfg.streaming:
        raise ConfigError("stream.drift", cfg.drift, "none with stream=static (no arrival times)")
    if cfg.drift_at is None:
        raise ConfigError("stream.drift_at", None, "the onset in virtual seconds")
    if run_seconds is not None and cfg.drift_at >= run_seconds:
        allowed = f"a time before the run ends ({run_seconds:g} virtual seconds)"
        raise ConfigError("stream.drift_at", cfg.drift_at, allowed)
    if cfg.drift_mode != "sudden" and cfg.drift_window <= 0:
        raise ConfigError(
            "stream.drift_window", cfg.drift_window, f"> 0 with drift_mode={cfg.drift_mode}"
        )
    if run_seconds is not None and cfg.drift_window > run_seconds:
        allowed = f"at most the run's {run_seconds:g} virtual seconds"
        raise ConfigError("stream.drift_window", cfg.drift_window, allowed)
