"""Small validators for configuration values: each raises ConfigError naming the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value, reported to the user as one line."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: allowed {allowed}")
        self.key = key


def choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(allowed))
    return value


def integer(key: str, value: object, minimum: int, maximum: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(key, value, f"an integer >= {minimum}{upper}")
    return int(value)  # type: ignore[arg-type]


def number(
    key: str, value: object, low: float, high: float | None = None, *, open_low: bool
) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and (value > low if open_low else value >= low)  # type: ignore[operator]
    ok = ok and (high is None or value <= high)  # type: ignore[operator]
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        upper = f" and <= {high}" if high is not None else ""
        raise ConfigError(key, value, f"a number {bound}{upper}")
    return float(value)  # type: ignore[arg-type]


def on_off(value: object) -> object:
    """YAML reads a bare `on`/`off` as a boolean."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "a config group")
    return value
