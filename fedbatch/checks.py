"""Small validators for configuration values: each raises ConfigError naming the key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar


class ConfigError(ValueError):
    """A bad configuration value, reported to the user as one line."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: allowed {allowed}")
        self.key = key


T = TypeVar("T")


def choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(allowed))
    return value


def boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
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


def optional(check: Callable[[str, object], T], key: str, value: object) -> T | None:
    return None if value is None else check(key, value)


def integers(key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(key, value, "a non-empty list of integers >= 1")
    return tuple(integer(f"{key}[{i}]", v, 1) for i, v in enumerate(value))


def on_off(value: object) -> object:
    """YAML reads a bare `on`/`off` as a boolean."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "a config group")
    return value


def check_known(section: str, raw: Mapping[str, Any], known: set[str]) -> None:
    for key in raw:
        if key not in known:
            allowed = "keys " + ", ".join(sorted(known))
            raise ConfigError(f"{section}.{key}" if section else key, raw[key], allowed)


class SectionReader:
    """Reads one config section's keys, each defaulting to the section dataclass's value."""

    def __init__(self, name: str, raw: Mapping[str, Any], defaults: object) -> None:
        self.name, self.raw, self.defaults = name, raw, defaults

    def value(self, key: str) -> object:
        return self.raw.get(key, getattr(self.defaults, key))

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def positive(self, key: str) -> float:
        return number(self.key(key), self.value(key), 0.0, open_low=True)

    def non_negative(self, key: str, high: float | None = None) -> float:
        return number(self.key(key), self.value(key), 0.0, high, open_low=False)

    def count(self, key: str, minimum: int) -> int:
        return integer(self.key(key), self.value(key), minimum)

    def named(self, key: str, allowed: tuple[str, ...]) -> str:
        return choice(self.key(key), self.value(key), allowed)

    def flag(self, key: str) -> bool:
        return boolean(self.key(key), self.value(key))
