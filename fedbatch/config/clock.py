"""Config of the virtual clock: device classes, network, round policies."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedbatch.checks import ConfigError, SectionReader, check_known, choice, number, optional
from fedbatch.clock.devices import DeviceClass

CLOCKS = ("off", "devices", "real")
POLICIES = ("wait_all", "deadline_drop", "deadline_partial")
ON_OOM = ("fail", "accumulate")
BATCH_POLICIES = ("same", "memory", "throughput", "equal_time")


@dataclass(frozen=True)
class ClockConfig:
    name: str = "off"  # off: untimed; devices: device and network model; real: measured
    devices: tuple[DeviceClass, ...] = field(default_factory=lambda: (DeviceClass("laptop"),))
    policy: str = "wait_all"
    deadline: float | None = None  # virtual seconds a round waits (deadline policies)
    over_selection: float = 0.0  # select ⌈K(1 + o)⌉ clients, aggregate the first K to finish
    on_oom: str = "fail"  # a B that does not fit a device: the client fails, or accumulates
    profile: str | None = None  # a `python -m fedbatch.calibrate` device.json: its one device
    batch_policy: str = "same"  # B per device: same, capped by memory, ∝ throughput; or
    # equal_time: every client computes for `deadline` seconds (its step count fills it)
    spread: float = 0.0  # σ: each client's throughput and bandwidth × a log-normal factor
    dropout: float = 0.0  # probability that a selected client is unavailable in a round
    crash: float = 0.0  # probability that a client crashes mid-round (its work is lost)
    night: float = 0.0  # diurnal trace: fraction of each day a client is offline
    day_seconds: float = 3600.0  # virtual seconds per day of the diurnal trace

    @property
    def on(self) -> bool:
        return self.name != "off"


def _device(index: int, raw: object) -> DeviceClass:
    where = f"clock.devices[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(where, raw, "a mapping of device parameters")
    defaults = DeviceClass(str(raw.get("name", f"device{index}")))
    check_known(where, raw, set(asdict(defaults)))
    r = SectionReader(where, raw, defaults)
    values: dict[str, Any] = {"name": defaults.name}
    for key in ("share", "throughput", "memory_cap", "bandwidth_down", "bandwidth_up"):
        values[key] = r.positive(key)
    for key in ("step_overhead", "memory_base", "memory_per_sample", "power", "latency"):
        values[key] = r.non_negative(key)
    values["saturation"] = r.count("saturation", 1)
    values["scaling"] = r.non_negative("scaling", 1.0)
    device = dataclasses.replace(defaults, **values)
    if device.memory_cap < device.memory_base:
        allowed = f"at least memory_base={device.memory_base:g} MB (the model must fit)"
        raise ConfigError(f"{where}.memory_cap", device.memory_cap, allowed)
    return device


def _profile_device(path: str) -> dict[str, Any]:
    try:
        device = json.loads(Path(path).read_text(encoding="utf-8"))["device"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            "clock.profile", path, "a device.json written by python -m fedbatch.calibrate"
        ) from None
    return dict(device)


def clock_config(raw: Mapping[str, Any]) -> ClockConfig:
    d = ClockConfig()
    check_known("clock", raw, set(asdict(d)))
    name = raw.get("name", d.name)
    name = "off" if name is False else name  # YAML reads a bare `off` as false
    devices = raw.get("devices", [asdict(x) for x in d.devices])
    profile = raw.get("profile")
    if profile is not None:
        devices = [_profile_device(str(profile))]
    if not isinstance(devices, list | tuple) or not devices:
        raise ConfigError("clock.devices", devices, "a non-empty list of device classes")
    cfg = ClockConfig(
        name=choice("clock", name, CLOCKS),
        devices=tuple(_device(i, x) for i, x in enumerate(devices)),
        policy=choice("clock.policy", raw.get("policy", d.policy), POLICIES),
        deadline=optional(
            lambda k, v: number(k, v, 0.0, open_low=True), "clock.deadline", raw.get("deadline")
        ),
        over_selection=number(
            "clock.over_selection", raw.get("over_selection", 0.0), 0.0, open_low=False
        ),
        on_oom=choice("clock.on_oom", raw.get("on_oom", d.on_oom), ON_OOM),
        profile=None,  # read here: the devices travel in the config, not the file
        batch_policy=choice(
            "clock.batch_policy", raw.get("batch_policy", d.batch_policy), BATCH_POLICIES
        ),
        spread=number("clock.spread", raw.get("spread", 0.0), 0.0, open_low=False),
        dropout=number("clock.dropout", raw.get("dropout", 0.0), 0.0, 1.0, open_low=False),
        crash=number("clock.crash", raw.get("crash", 0.0), 0.0, 1.0, open_low=False),
        night=number("clock.night", raw.get("night", 0.0), 0.0, 1.0, open_low=False),
        day_seconds=number(
            "clock.day_seconds", raw.get("day_seconds", d.day_seconds), 0.0, open_low=True
        ),
    )
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
    return cfg
