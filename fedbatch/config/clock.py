"""Config of the virtual clock: device classes, network, round policies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic.dataclasses import dataclass

from fedbatch.checks import ConfigError
from fedbatch.clock.devices import DeviceClass
from fedbatch.config.schema import SECTION, Float, Str, key

CLOCKS = ("off", "devices", "real")
POLICIES = ("wait_all", "deadline_drop", "deadline_partial")
ON_OOM = ("fail", "accumulate")
BATCH_POLICIES = ("same", "memory", "throughput", "equal_time")
TIMED = ("devices", "real")
MODELLED = ("devices",)  # the keys of the device model, which a measured clock lacks


@dataclass(frozen=True, config=SECTION)
class ClockConfig:
    name: Literal[CLOCKS] = key(
        "off", doc="off: untimed; devices: device and network model; real: measured"
    )
    devices: tuple[DeviceClass, ...] = key(
        (DeviceClass("laptop"),),
        only=MODELLED,
        min_length=1,
        doc="device classes with shares of the clients (clock=devices: phone, laptop, server)",
        allowed="a non-empty list of device classes",
    )
    policy: Literal[POLICIES] = key(
        "wait_all",
        only=TIMED,
        doc="wait_all, deadline_drop (stragglers dropped) or "
        "deadline_partial (as many steps as fit)",
    )
    deadline: Float | None = key(None, gt=0, only=TIMED, doc="virtual seconds a round waits")
    over_selection: Float = key(
        0.0,
        ge=0,
        le=100,  # beyond, every client is selected anyway (and K(1 + o) may overflow)
        only=TIMED,
        doc="select ⌈K(1 + o)⌉ clients, aggregate the first K to finish",
    )
    on_oom: Literal[ON_OOM] = key(
        "fail", only=MODELLED, doc="a B over a device's memory: fail, or accumulate micro-batches"
    )
    profile: Str | None = key(
        None, only=MODELLED, doc="a `python -m fedbatch.calibrate` device.json: its one device"
    )
    batch_policy: Literal[BATCH_POLICIES] = key(
        "same",
        only=MODELLED,
        doc="B per device: same, memory (capped), throughput (∝), or "
        "equal_time (every client computes for `deadline` seconds)",
    )
    spread: Float = key(
        0.0, ge=0, only=MODELLED, doc="σ: each client's throughput and bandwidth × log-normal"
    )
    dropout: Float = key(
        0.0, ge=0, le=1, only=MODELLED, doc="chance that a selected client is unavailable"
    )
    crash: Float = key(
        0.0, ge=0, le=1, only=MODELLED, doc="chance that a client crashes mid-round (work lost)"
    )
    night: Float = key(
        0.0, ge=0, le=1, only=MODELLED, doc="diurnal trace: fraction of each day a client is off"
    )
    day_seconds: Float = key(3600.0, gt=0, only=MODELLED, doc="virtual seconds per day")

    @property
    def on(self) -> bool:
        return self.name != "off"


def _profile_device(path: str) -> dict[str, Any]:
    try:
        device = json.loads(Path(path).read_text(encoding="utf-8"))["device"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            "clock.profile", path, "a device.json written by python -m fedbatch.calibrate"
        ) from None
    return dict(device)


def prepare_clock(raw: Mapping[str, Any]) -> dict[str, Any]:
    """YAML's bare `off` (false), a calibrated profile in place of the devices, and each
    unnamed device's name."""
    prepared = dict(raw)
    if prepared.get("name") is False:
        prepared["name"] = "off"
    if raw.get("profile") is not None:  # read here: the devices travel in the config
        prepared["devices"], prepared["profile"] = [_profile_device(str(raw["profile"]))], None
    devices = prepared.get("devices")
    if isinstance(devices, list | tuple):
        prepared["devices"] = [
            {"name": f"device{i}"} | dict(d) if isinstance(d, Mapping) else d
            for i, d in enumerate(devices)
        ]
    return prepared


def check_clock(cfg: ClockConfig) -> None:
    for i, device in enumerate(cfg.devices):
        if device.memory_cap < device.memory_base:
            allowed = f"at least memory_base={device.memory_base:g} MB (the model must fit)"
            raise ConfigError(f"clock.devices[{i}].memory_cap", device.memory_cap, allowed)
    if cfg.policy != "wait_all" and cfg.deadline is None:
        raise ConfigError("clock.deadline", None, f"> 0 virtual seconds with policy={cfg.policy}")
    if cfg.name == "real" and (cfg.policy == "deadline_partial" or cfg.batch_policy != "same"):
        raise ConfigError(
            "clock",
            "real",
            "devices for deadline_partial or a device batch_policy (they need the device model)",
        )
    if cfg.batch_policy == "equal_time" and cfg.deadline is None:
        raise ConfigError("clock.deadline", None, "the time budget, with batch_policy=equal_time")
