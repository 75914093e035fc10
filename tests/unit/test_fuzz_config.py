"""Bad configs, generated from the schema: every one refused with one line naming its key.

Most cases go through the checks `python -m fedbatch.simulate` runs, in this process
(`compose_raw` composes and checks the overrides as Hydra would, `validate` checks values,
then what needs the data); a few end to end, where nothing may be left behind.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Annotated, Literal

import pytest
from pydantic.fields import FieldInfo

from fedbatch.config import ConfigError, RunConfig
from fedbatch.config.compose import OverrideError, compose_raw
from fedbatch.config.run import IMAGE_MODELS
from fedbatch.config.schema import extra, fields, is_section
from fedbatch.simulate import validate
from tests.conftest import FAST, simulate


def _base(annotation: object) -> object:
    """The scalar type of a key: int, float, bool, str or a Literal (None dropped)."""
    if typing.get_origin(annotation) is Annotated:
        return _base(typing.get_args(annotation)[0])
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _base(options[0]) if len(options) == 1 else None
    return annotation


def _keys(section: type = RunConfig, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, info in fields(section).items():
        if extra(info, "internal") or name == "name":
            continue
        if is_section(info.annotation):
            yield from _keys(info.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _option_for(key: str, info: FieldInfo) -> list[str]:
    """The group option a key applies to (and the data it needs), so the refusal is about
    its value."""
    only = extra(info, "only") or []
    section = key.partition(".")[0]
    if not (only and "." in key):
        return []
    return [f"{section}={only[0]}"] + (["data=images"] if only[0] in IMAGE_MODELS else [])


# Each key gets one of its type's bad values, in turn.
BAD_VALUES = {
    float: ["inf", "-inf", "nan", "1e999", "abc", "true", "[1]"],
    int: ["abc", "1.5", "true", "inf", "1e999"],
    bool: ["maybe", "2"],
}


def _value_cases() -> Iterator[tuple[list[str], str]]:
    for number, (key, info) in enumerate(_keys()):
        base = _base(info.annotation)
        if typing.get_origin(base) is Literal:
            yield [*_option_for(key, info), f"{key}=no_such_option"], key
        values = BAD_VALUES.get(base)  # type: ignore[call-overload]
        if values:
            yield [*_option_for(key, info), f"{key}={values[number % len(values)]}"], key


OTHER_CASES = [
    (["client.lr=${oops}"], "client.lr"),  # an interpolation to nothing
    (["client.lr=${client.nope}"], "client.lr"),
    (["client.lr="], "client.lr"),  # empty
    (["client.batch_size="], "client.batch_size"),
    (["+client.bogus=1"], "client.bogus"),
    (["++client.bogus=1"], "client.bogus"),
    (["client.bogus=1"], "client.bogus"),
    (["+client.lr=0.1"], "client.lr"),  # exists already
    (["~client"], "~client"),
    (["~client.lr"], "~client.lr"),
    (["bogus=1"], "bogus"),
    (["model=nope"], "model"),
    (["clock.over_selection=1e308", "clock=devices"], "clock.over_selection"),
    (["clock.profile=/no/such/device.json", "clock=devices"], "clock.profile"),
    (["client.batch_size=0"], "client.batch_size"),
    (["num_clients=5000"], "num_clients"),  # more clients than samples: needs the data
    (["model.hidden=[200000,200000]"], "model.hidden"),  # 4e10 parameters: no memory has it
    (["data=synthetic", "data.num_samples=1000000000000"], "data.num_samples"),  # 14.6 TiB
    (["clock=devices", "clock.devices.0.throughput=1e-300"], "throughput"),  # 1e302 s rounds
    (["clock=devices", "clock.devices.0.latency=1e300"], "latency"),
    (["rounds=[1,2]"], "rounds"),
    (["model.hidden=abc"], "model.hidden"),
    (["model.hidden=[16,-1]"], "model.hidden"),
]

CASES = [*_value_cases(), *OTHER_CASES]


def test_there_are_more_than_a_hundred_cases():
    assert len(CASES) > 100


@pytest.mark.parametrize(("overrides", "key"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_config_is_one_line_naming_its_key(overrides, key):
    # FAST sizes the default mlp: another model option takes none of its model keys.
    other_model = any(o.startswith("model=") for o in overrides)
    fast = [o for o in FAST if not (other_model and o.startswith("model."))]
    with pytest.raises((ConfigError, OverrideError)) as refused:
        validate(compose_raw([*fast, *overrides]))
    message = str(refused.value)
    assert "\n" not in message and key in message, message


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["client.lr=inf"], ["client.lr=${oops}"], ["clock=devices", "clock.over_selection=1e308"]],
    ids=["inf", "interpolation", "overflow"],
)
def test_end_to_end_one_line_exit_2_and_nothing_left(overrides, tmp_path):
    result = simulate(*FAST, *overrides, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
