"""The config schema's building blocks: each key's type, default, range and meaning, once.

Every config section is a frozen pydantic dataclass whose fields are declared with `key`:
its type annotation (with its range) and `key(default, doc=...)` are the one source of
truth. From them come the validation (`validate`, which turns pydantic's errors into one
`ConfigError` line naming the key, the value and what is allowed), Hydra's defaults
(`defaults`, so the YAML files hold only what differs) and the key reference
(`python -m fedbatch.config`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    AllowInfNan,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo

from fedbatch.checks import ConfigError

SECTION = ConfigDict(extra="forbid")  # a misspelt key is an error, never ignored

# Strict scalars: YAML's `1` is a fine float, but `true` is not a number nor `"1"` an int.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]  # inf, nan and 1e999 are no settings
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Count = Annotated[int, Strict(), Field(ge=1)]
Rounds = Annotated[tuple[Count, ...], AfterValidator(lambda rounds: tuple(sorted(rounds)))]


def key(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    factory: Any = None,
    only: tuple[str, ...] = (),
    not_for: tuple[str, ...] = (),
    allowed: str | None = None,
    internal: bool = False,
    **constraints: Any,
) -> Any:
    """A config key: its default (or `factory`), meaning, range (`gt`, `ge`, `le`, ...),
    the section `name`s it applies to (`only`; all when empty, but those in `not_for`),
    the allowed text when the type does not say it well, and `internal` for a key
    fedbatch fills in itself (from `_target_`), which no YAML sets."""
    extra = {"only": list(only), "not_for": list(not_for), "allowed": allowed}
    extra["internal"] = internal
    if factory is not None:
        return Field(default_factory=factory, description=doc, json_schema_extra=extra)
    return Field(default, description=doc, json_schema_extra=extra, **constraints)


def fields(section: type) -> dict[str, FieldInfo]:
    return dict(section.__pydantic_fields__)  # type: ignore[attr-defined]


def extra(info: FieldInfo, name: str) -> Any:
    values = info.json_schema_extra
    return values.get(name) if isinstance(values, dict) else None


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__")


# --- what is allowed, in words ---------------------------------------------------------


def _bounds(constraints: list[Any], number: type) -> str:
    words = []
    for c in constraints:
        for attribute, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(c, attribute, None)
            if bound is not None:
                words.append(f"{symbol} {number(bound)}")
    return " " + " and ".join(words) if words else ""


def describe(annotation: Any, constraints: Sequence[Any] = ()) -> str:
    """`annotation` (with its constraints) as the words after "allowed"."""
    constraints = list(constraints)
    if get_origin(annotation) is Annotated:
        base, *metadata = get_args(annotation)
        for item in metadata:
            constraints += item.metadata if isinstance(item, FieldInfo) else [item]
        return describe(base, constraints)
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        words = [describe(a, constraints if len(options) == 1 else []) for a in options]
        nullable = len(options) < len(get_args(annotation))
        return " or ".join(words + ["null"] * nullable)
    if get_origin(annotation) is Literal:
        names = get_args(annotation)
        return f"{names[0]!r}" if len(names) == 1 else "one of " + ", ".join(map(str, names))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer" + _bounds(constraints, int)
    if annotation is float:
        return "a number" + _bounds(constraints, float)
    if get_origin(annotation) is tuple:
        non_empty = any(getattr(c, "min_length", 0) for c in constraints)
        return f"a {'non-empty ' * non_empty}list, each " + describe(get_args(annotation)[0])
    if annotation is str:
        return "a string"
    return "a " + getattr(annotation, "__name__", str(annotation))


def allowed(info: FieldInfo) -> str:
    return extra(info, "allowed") or describe(info.annotation, info.metadata)


# --- validating ------------------------------------------------------------------------


def _where(section: type, loc: tuple[Any, ...], prefix: str) -> tuple[str, FieldInfo | None, Any]:
    """The dotted key of pydantic's error location, the field it names, and the type it
    reached: a list's element type inside a list (`model.hidden[1]`), a section's class."""
    path, info, current = prefix, None, section
    for part in loc:
        if isinstance(part, int) and info is not None:
            path += f"[{part}]"
            args = get_args(info.annotation)
            current = args[0] if get_origin(info.annotation) is tuple and args else None
        elif isinstance(part, str) and is_section(current) and part in fields(current):
            info = fields(current)[part]
            path = f"{path}.{part}" if path else part
            current = info.annotation
        else:  # a union member's tag: the field itself is what was wrong
            break
    if path.count(".") == 1 and path.endswith(".name"):
        path = path.removesuffix(".name")  # a section's `name` is its group: `model=...`
    return path, info, current


def validate(section: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """`raw` as a `section`, or the first problem as one ConfigError line."""
    try:
        return TypeAdapter(section).validate_python(dict(raw))
    except ValidationError as error:
        first = error.errors()[0]
        loc, value = tuple(first["loc"]), first.get("input")
        if first["type"] == "unexpected_keyword_argument":
            parent, _, container = _where(section, loc[:-1], prefix)
            names = fields(container) if is_section(container) else {}
            known = sorted(n for n, info in names.items() if not extra(info, "internal"))
            where = f"{parent}.{loc[-1]}" if parent else str(loc[-1])
            raise ConfigError(where, value, "keys " + ", ".join(known)) from None
        key, info, reached = _where(section, loc, prefix)
        if info is None or (is_section(reached) and not isinstance(value, Mapping)):
            raise ConfigError(key or prefix, value, "a config group (a mapping of keys)") from None
        text = allowed(info) if reached is info.annotation else describe(reached)
        raise ConfigError(key, value, text) from None


# --- Hydra's defaults and the reference ------------------------------------------------


def plain(value: Any) -> Any:
    """A default as YAML data: tuples as lists, dataclasses as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def default(info: FieldInfo) -> Any:
    return plain(info.get_default(call_default_factory=True))


def defaults(section: type, *, skip: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """The section's keys with their defaults, as Hydra composes them under each option:
    nested sections too, but not `name` (each option's own) nor internal keys."""
    values = {}
    for name, info in fields(section).items():
        if name in skip or extra(info, "internal"):
            continue
        nested = is_section(info.annotation)
        values[name] = defaults(info.annotation, skip=skip) if nested else default(info)
    return values


def applies(info: FieldInfo, option: str | None) -> bool:
    """Whether a key applies to the section's option named `option` (its `name`)."""
    only, not_for = extra(info, "only") or [], extra(info, "not_for") or []
    return (not only or option in only) and option not in not_for


def ignored(config: Any) -> dict[str, Any]:
    """The keys that do not apply to `config`'s `name`, at their defaults: what a cache
    keyed by the config resets, so a key its option ignores does not split it."""
    return {
        name: info.get_default(call_default_factory=True)
        for name, info in fields(type(config)).items()
        if not applies(info, config.name)
    }
