"""`_target_` in a config section: a class of the user's own instead of a built-in name.

In YAML and on the command line a section holds `_target_` beside the class's keyword
arguments; the JSON copy that travels to clients holds `target` and the arguments under
one key instead. Both forms come through `own_class`, which has the path checked by the
kind's registry (its form, that it imports, that it is the right kind of class) and
refuses the arguments fedbatch passes the class itself, each with one line. Only a
`_target_` imports anything here (its module, and torch or Flower for its base class).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedbatch.checks import ConfigError
from fedbatch.registry import TARGET, Registry


@dataclass(frozen=True)
class OwnClass:
    path: str  # the importable `module.Class`
    kwargs: dict[str, Any]  # the config's keyword arguments for it


def own_class(
    registry: Registry,
    raw: Mapping[str, Any],
    *,
    arguments: str = "kwargs",
    fedbatch_keys: tuple[str, ...] = (),
    passed: Mapping[str, str] | None = None,
) -> OwnClass | None:
    """The class section `raw` names by `_target_` (or, in the JSON copy, by `target`,
    its arguments under `arguments`), or None when `raw` names a built-in.

    `fedbatch_keys` sit beside `_target_` but are fedbatch's own, not the class's;
    `passed` maps each argument fedbatch gives the class itself to where it comes from,
    so the config may not set it.
    """
    if TARGET in raw:
        path = raw[TARGET]
        skip = {TARGET, *fedbatch_keys}
        kwargs = {str(k): v for k, v in raw.items() if k not in skip}
    elif raw.get("target") is not None:
        path, kwargs = raw["target"], dict(raw.get(arguments) or {})
    else:
        return None
    if "name" in kwargs:
        raise ConfigError(
            f"{registry.key}.name",
            kwargs["name"],
            f"no name beside {registry.target_key} (a built-in's name, or a class of your own)",
        )
    for argument, source in (passed or {}).items():
        if argument in kwargs:
            raise ConfigError(
                f"{registry.key}.{argument}",
                kwargs[argument],
                f"no {argument} here: fedbatch passes it to {registry.target_key} from {source}",
            )
    registry.target(path)
    return OwnClass(str(path), kwargs)
