"""The packaged Hydra configs (`fedbatch/conf/`) and composing a run's config from them.

The configs ship inside the package, so every install (editable, wheel, a Flower app
bundle) finds them beside this code, whatever the working directory. The command line
(`python -m fedbatch.simulate`) composes them through `@hydra.main`; everything without a
command line of its own composes here through Hydra's compose API: the ServerApp under
`flwr run` (its `overrides` run-config key), `fedbatch.calibrate`. Both pass the same
override checks first, so a misspelt key is one line wherever it is given. The checks
read the user's own config directories too (`--config-dir`, `hydra.searchpath`), where
a YAML with `_target_` names a class of theirs (README, "Extending fedbatch").
"""

from __future__ import annotations

import importlib.util
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fedbatch.config.run import RunConfig, build_config
from fedbatch.config.schema import applies, defaults, extra, fields, is_section
from fedbatch.config.sections import ModelConfig
from fedbatch.registry import TARGET

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "config"
CUSTOM = "custom"  # the option that takes a class of your own from the command line
CLIENTS_RESOLVER = "fedbatch_num_clients"


def register_schema() -> None:
    """Every key's default, from the schema, as the Hydra configs `schema/run` (the run's
    keys and every section but the model) and `schema/model` (which each built-in
    model's YAML starts from: a `_target_` model's arguments are its own). The YAML
    files then hold only what differs, yet every key can be set on the command line."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    run = defaults(RunConfig)
    run.pop("model")
    # A natural partition's num_clients comes from the data: unset (null) unless given.
    if not OmegaConf.has_resolver(CLIENTS_RESOLVER):
        default = run["num_clients"]
        OmegaConf.register_new_resolver(
            CLIENTS_RESOLVER, lambda partition: None if partition == "natural" else default
        )
    run["num_clients"] = f"${{{CLIENTS_RESOLVER}:${{partition.name}}}}"
    store.store(group="schema", name="run", node=run)
    store.store(group="schema", name="model", node=defaults(ModelConfig))


class OverrideError(ValueError):
    """An override naming no group, option or key of the config, reported as one line."""


def fedbatch_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """`key=value` arguments that Hydra would apply to fedbatch's own config. `+key` and
    `++key` (add, force-add) name the same keys as `key`, so they are checked the same."""
    pairs = [arg.partition("=") for arg in argv]
    named = [(k.lstrip("+"), v) for k, sep, v in pairs if sep and not k.startswith(("~", "-"))]
    return [(k, v) for k, v in named if not k.startswith("hydra")]


def search_dirs(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> list[Path]:
    """The config directories Hydra reads for `argv`, in its order: the packaged configs
    (whose options win a name clash), `--config-dir`/`-cd`, then `hydra.searchpath`'s
    `file://` and `pkg://` entries."""
    dirs, extra = [conf_dir], []
    for i, arg in enumerate(argv):
        flag, sep, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            dirs.append(Path(value if sep else argv[i + 1] if i + 1 < len(argv) else "."))
        elif flag == "hydra.searchpath":
            from hydra.core.override_parser.overrides_parser import OverridesParser

            extra += [str(v) for v in OverridesParser.create().parse_override(arg).value()]
    for entry in extra:
        scheme, _, where = entry.rpartition("://")
        if scheme == "pkg":
            spec = importlib.util.find_spec(where)
            dirs += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        else:
            dirs.append(Path(where))
    return [d.resolve() for d in dirs]


def _option_file(dirs: Sequence[Path], group: str, option: str) -> Path:
    """The first `group/option.yaml` along the search path (Hydra's pick)."""
    files = (d / group / f"{option}.yaml" for d in dirs)
    return next((f for f in files if f.is_file()), dirs[0] / group / f"{option}.yaml")


def _refuse_deletions(argv: Sequence[str]) -> None:
    """`~key` would drop a key or section, which then falls back to defaults no YAML
    shows: one line naming the plain form instead."""
    sections = {name for name, info in fields(RunConfig).items() if is_section(info.annotation)}
    for key in (arg.partition("=")[0] for arg in argv):
        plain = key.lstrip("~")
        if key.startswith("~") and not plain.startswith("hydra"):
            instead = f"{plain}.<key>=<value>" if plain in sections else f"{plain}=<value>"
            raise OverrideError(
                f"{key} is not allowed: every fedbatch key has a value (its default is in "
                f"python -m fedbatch.config); set {instead} instead"
            )


def _refuse_additions(argv: Sequence[str], addable: set[str]) -> None:
    """Every fedbatch key is in the composed config already (the schema's defaults), so
    `+key` (add) can only collide with it (`++key` sets it like `key`): one line naming the
    plain form. Only the `addable` (a `_target_` class's new arguments, a study's own
    config group) are added, and keys of a list's
    elements, which Hydra does not merge with the schema (`+clock.devices.0.scaling=0.5`)."""
    for key, _, value in (arg.partition("=") for arg in argv):
        plain = key.lstrip("+")
        adds = key.startswith("+") and not key.startswith("++")
        in_list = any(part.isdigit() for part in plain.split("."))  # a YAML list's element
        if adds and not plain.startswith("hydra") and plain not in addable and not in_list:
            raise OverrideError(
                f"{key} is not allowed: {plain} exists already; set it with {plain}={value}"
            )


def _default_choices(dirs: Sequence[Path]) -> dict[str, list[str]]:
    """The config groups fedbatch's config.yaml selects, each with its default option."""
    entries = OmegaConf.load(dirs[0] / f"{CONFIG_NAME}.yaml").defaults
    return {str(k): _options(v) for entry in entries if isinstance(entry, DictConfig)
            for k, v in entry.items()}  # fmt: skip


def _options(value: object) -> list[str]:
    """A group's option, or options: `logger: [tensorboard, mlflow]` in YAML, or on the
    command line `logger=[tensorboard,mlflow]`, a sweep over lists `logger=[csv],[mlflow]`."""
    if isinstance(value, ListConfig | list):
        return [str(v) for v in value]
    names = str(value).replace("[", ",").replace("]", ",").split(",")
    return [name.strip() for name in names if name.strip()]


def _selected_options(argv: Sequence[str], dirs: Sequence[Path]) -> dict[str, list[str]]:
    """Each config group's chosen option(s): the defaults list, overridden by argv."""
    chosen = _default_choices(dirs)
    for key, value in fedbatch_overrides(argv):
        if any((d / key).is_dir() for d in dirs) and "(" not in value:
            allowed = sorted({p.stem for d in dirs for p in (d / key).glob("*.yaml")})
            for option in _options(value):
                if option not in allowed:
                    raise OverrideError(
                        f"{key}={option!r} is invalid: allowed one of {', '.join(allowed)}"
                    )
            chosen[key] = _options(value)
    return chosen


def _group_keys(group: str, options: Sequence[str], dirs: Sequence[Path]) -> set[str]:
    """The keys of a config group with these options chosen: the schema's keys that apply
    to each option's `name` (none for a `_target_` class), and the option file's own (a
    strategy's parameters, a `_target_` class's arguments)."""
    section = fields(RunConfig)[group].annotation
    if not options:  # a group that chose none (`logger: []`): its schema keys
        return {k for k, info in fields(section).items() if not extra(info, "internal")}
    keys: set[str] = set()
    for option in options:
        loaded = OmegaConf.load(_option_file(dirs, group, option))
        keys |= {str(k) for k in loaded if k != "defaults"}
        if TARGET not in loaded:
            name = loaded.get("name")
            keys |= {k for k, info in fields(section).items()
                     if not extra(info, "internal") and applies(info, name)}  # fmt: skip
    return keys


def check_overrides(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject unknown groups, options and keys with one line, before Hydra composes.

    A group's keys are the schema's keys for the option(s) selected, so
    `partition.alpha=0.1` with `partition=iid` is caught here rather than ignored. `+key`,
    `++key` and `~key` go through the same checks; an option with `_target_` also takes
    new arguments for its class with `+key`/`++key`.
    """
    _refuse_deletions(argv)
    dirs = search_dirs(argv, conf_dir)
    chosen = _selected_options(argv, dirs)
    run_keys = fields(RunConfig)
    top_level = set(run_keys) | set(chosen)
    arguments: set[str] = set()  # new arguments of a `_target_` class
    for given, _, _ in (arg.partition("=") for arg in argv if "=" in arg):
        key = given.lstrip("+")
        head, _, name = key.partition(".")
        if given.startswith(("~", "-")) or key.startswith("hydra"):
            continue
        if head not in top_level:
            raise OverrideError(
                f"{head} is not a known key: allowed {', '.join(sorted(top_level))}"
            )
        if name.endswith(f".{TARGET}") and chosen.get(head):
            _check_nested_target(key, OmegaConf.load(_option_file(dirs, head, chosen[head][0])))
        name = name.partition(".")[0]  # `clock.devices.0.throughput`: is `devices` a key here?
        if not name:
            continue
        if head in chosen:
            options = chosen[head]
            where = f"{head}={','.join(options)}" if options else head
            keys = _group_keys(head, options, dirs)
        else:
            section = run_keys[head].annotation
            where, keys = head, set(fields(section)) if is_section(section) else set()
        if name in keys:
            continue
        if TARGET in keys and (given.startswith("+") or head in _open_groups(chosen, dirs)):
            arguments.add(key)
            continue
        hint = ""
        if TARGET in keys:
            hint = f" (a new argument of its {TARGET} class: ++{key}=...)"
        elif name == TARGET and (dirs[0] / head / f"{CUSTOM}.yaml").is_file():
            hint = f" (a class of your own: {head}={CUSTOM} {key}=module.Class)"
        elif name == TARGET:
            hint = f" (a class of your own: a {head}/<name>.yaml with {TARGET}, see README)"
        allowed = ", ".join(sorted(keys))
        raise OverrideError(f"{key} is not a key of {where}: allowed {allowed}{hint}")
    # A group only a study's --config-dir has (`+row=small`) is not in the defaults list:
    # Hydra's `+` adds it.
    _refuse_additions(argv, arguments | (set(chosen) - set(_default_choices(dirs))))


def _open_groups(chosen: dict[str, list[str]], dirs: Sequence[Path]) -> set[str]:
    """The groups whose one chosen option names its class on the command line: its YAML
    holds `_target_: null` (`model=custom`)."""
    open_options = set()
    for group, options in chosen.items():
        if len(options) == 1:
            loaded = OmegaConf.load(_option_file(dirs, group, options[0]))
            if TARGET in loaded and loaded[TARGET] is None:
                open_options.add(group)
    return open_options


def open_arguments(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """`argv` ready for Hydra: an option that takes its class from the command line
    (`model=custom model._target_=mypkg.nets.Net`) has no YAML keys for that class's
    arguments, so `model.width=32` beside it becomes Hydra's `++model.width=32`."""
    dirs = search_dirs(argv, conf_dir)
    try:
        opened = _open_groups(_selected_options(argv, dirs), dirs)
    except OverrideError:  # check_overrides says what is wrong
        return list(argv)
    ready = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        head, _, name = key.partition(".")
        plain = sep and not key.startswith(("+", "~", "-"))
        ready.append(f"++{arg}" if plain and head in opened and name not in ("", TARGET) else arg)
    return ready


def _check_nested_target(key: str, option: DictConfig) -> None:
    """`client.optimizer._target_=...` where the option holds a name there: one line
    giving the mapping to write instead of Hydra's multi-line struct error."""
    parent = key.removesuffix(f".{TARGET}")
    if not isinstance(OmegaConf.select(option, parent.partition(".")[2]), DictConfig):
        raise OverrideError(
            f"{key} is not a key: {parent} holds a name; a class of your own is "
            f"{parent}={{{TARGET}:module.Class}}"
        )


def split_overrides(text: str) -> list[str]:
    """Overrides written as on a command line, `rounds=3 client.batch_size=16` (shell
    quoting for a value with spaces), as a list. One composed config is one run, so a
    sweep (`a=1,2`), a Hydra flag or a `hydra.*` setting is refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = shlex.split(text)
    except ValueError as error:  # an unclosed quote
        raise OverrideError(f"overrides={text!r} is invalid: {error}") from None
    allowed = "allowed key=value pairs of fedbatch's config, one value each"
    for override in overrides:
        if override.startswith("-"):
            raise OverrideError(f"overrides: {override!r} is invalid: {allowed}")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise OverrideError(f"overrides={text!r} is invalid: {_first_line(error)}") from None
    for override, given in zip(parsed, overrides, strict=True):
        if override.is_hydra_override() or override.is_sweep_override():
            raise OverrideError(f"overrides: {given!r} is invalid: {allowed}")
    return overrides


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def compose_raw(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The resolved config for `overrides`, as plain data (what `build_config` takes).

    Only outside a running Hydra app: inside `@hydra.main`, Hydra already holds its one
    global instance (and has composed the config).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fedbatch.sweep_plugins import register_resolvers

    check_overrides(overrides, conf_dir)
    overrides = open_arguments(overrides, conf_dir)
    register_resolvers()
    register_schema()
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            composed = compose(CONFIG_NAME, overrides=list(overrides))
        raw = OmegaConf.to_container(composed, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise OverrideError(f"overrides {' '.join(overrides)!r}: {_first_line(error)}") from None
    assert isinstance(raw, dict)
    return {str(k): v for k, v in raw.items()}


def compose_config(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> RunConfig:
    """The validated run config for `overrides`: OverrideError or ConfigError otherwise."""
    return build_config(compose_raw(overrides, conf_dir))
