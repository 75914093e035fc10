"""`python -m fedbatch.config [section ...]`: every config key, from the schema.

Each line: the key, its default, what is allowed, the options it applies to, and what it
means. The YAML files hold only what differs from these defaults.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from typing import get_args, get_origin

from fedbatch.config.run import RunConfig
from fedbatch.config.schema import allowed, default, extra, fields, is_section


def _applies_to(info: object) -> str:
    only, not_for = extra(info, "only"), extra(info, "not_for")  # type: ignore[arg-type]
    if only:
        return "only " + ", ".join(only)
    return "not " + ", ".join(not_for) if not_for else ""


def _yaml(value: object) -> str:
    """A default as it is written in YAML or on the command line."""
    return json.dumps(value) if value is None or isinstance(value, bool | list) else str(value)


def _lines(section: type, prefix: str) -> Iterator[tuple[str, ...]]:
    for name, info in fields(section).items():
        if extra(info, "internal"):
            continue
        key = f"{prefix}.{name}" if prefix else name
        if is_section(info.annotation):
            continue
        group = name == "name" and prefix.isidentifier()
        shown = prefix if group else key  # a section's name is its group: `model=cnn`
        element = get_args(info.annotation)[0] if get_origin(info.annotation) is tuple else None
        value = default(info)
        if is_section(element):  # a list of sections (the clock's devices): their keys below
            value = f"[{len(value)} {element.__name__}]"
        yield shown, _yaml(value), allowed(info), _applies_to(info), info.description or ""
        if is_section(element):
            yield from _lines(element, f"{key}[]")


def reference(sections: Sequence[str] = ()) -> str:
    """The reference of `sections` (all when empty) as aligned text."""
    run_fields = fields(RunConfig)
    unknown = [
        s for s in sections if s not in run_fields or not is_section(run_fields[s].annotation)
    ]
    if unknown:
        names = ", ".join(n for n, f in run_fields.items() if is_section(f.annotation))
        raise ValueError(f"section={unknown[0]!r} is invalid: allowed one of {names}")
    blocks = [] if sections else [("run", list(_lines(RunConfig, "")))]
    for name, info in run_fields.items():
        if is_section(info.annotation) and (not sections or name in sections):
            title = f"{name}: {info.description}"
            blocks.append((title, list(_lines(info.annotation, name))))
    out = []
    for title, rows in blocks:
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        out.append(title)
        for row in rows:
            cells = [c.ljust(w) for c, w in zip(row[:4], widths, strict=True)]
            out.append("  " + "  ".join([*cells, row[4]]).rstrip())
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        print(reference(list(sys.argv[1:] if argv is None else argv)))
    except ValueError as error:
        print(f"fedbatch: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
