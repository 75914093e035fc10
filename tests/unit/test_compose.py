"""Composing the packaged config without a command line: the ServerApp under `flwr run`
(its `overrides` run-config key) and `fedbatch.calibrate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fedbatch
from fedbatch.config import ConfigError, build_config
from fedbatch.config.compose import (
    CONF_DIR,
    OverrideError,
    check_overrides,
    compose_config,
    split_overrides,
)
from fedbatch.federated.run_config import (
    CONFIG_KEY,
    OUTPUT_KEY,
    OVERRIDES_KEY,
    config_from_run_config,
    output_dir,
)


def test_the_configs_ship_inside_the_package():
    assert Path(fedbatch.__file__).resolve().parent / "conf" == CONF_DIR
    assert (CONF_DIR / "config.yaml").is_file()
    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
    for entry in defaults:
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            for name in option if isinstance(option, list) else [option]:  # `logger: []`
                assert (CONF_DIR / group / f"{name}.yaml").is_file()


def test_overrides_split_as_on_a_command_line():
    assert split_overrides("") == []
    assert split_overrides("rounds=3  client.batch_size=16") == ["rounds=3", "client.batch_size=16"]
    assert split_overrides("model.hidden='[64, 32]'") == ["model.hidden=[64, 32]"]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("client.batch_size=8,16", "'client.batch_size=8,16'"),  # a sweep: one run only
        ("-m rounds=2", "'-m'"),
        ("hydra.run.dir=/tmp/x", "'hydra.run.dir=/tmp/x'"),
        ("rounds=3 model.hidden='[1", "No closing quotation"),
    ],
)
def test_what_one_run_cannot_take_is_one_line(text, named):
    with pytest.raises(OverrideError) as info:
        split_overrides(text)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_composing_applies_overrides_to_the_packaged_defaults():
    default = compose_config([])
    cfg = compose_config(["rounds=3", "client.batch_size=16", "data=synthetic"])
    assert (cfg.rounds, cfg.client.batch_size, cfg.data.name) == (3, 16, "synthetic")
    assert (default.rounds, default.client.batch_size, default.data.name) == (30, 32, "digits")
    assert cfg.client.lr == default.client.lr and cfg.model == default.model


@pytest.mark.parametrize(
    ("overrides", "error", "start"),
    [
        (["client.batch_sise=4"], OverrideError, "client.batch_sise is not a key of client"),
        (["data=cifar"], OverrideError, "data='cifar' is invalid: allowed one of arrays, digits"),
        (["roundz=3"], OverrideError, "roundz is not a known key: allowed batch"),
        (["client.batch_size=0"], ConfigError, "client.batch_size=0 is invalid: allowed"),
        (["model.hidden=[1"], OverrideError, "overrides 'model.hidden=[1'"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(overrides, error, start):
    with pytest.raises(error) as info:
        compose_config(overrides)
    message = str(info.value)
    assert message.startswith(start) and "\n" not in message


def test_an_empty_run_config_means_the_packaged_default_behind_a_superlink():
    cfg = config_from_run_config({CONFIG_KEY: "", OVERRIDES_KEY: "", OUTPUT_KEY: ""})
    assert cfg == compose_config(["engine=deployment"])
    assert cfg.engine.name == "deployment" and cfg.rounds == 30
    assert output_dir({OUTPUT_KEY: ""}) is None
    assert output_dir({OUTPUT_KEY: "/tmp/run"}) == Path("/tmp/run")


def test_run_config_overrides_compose_what_the_deployment_engine_sends(tmp_path):
    """`flwr run . --run-config "overrides='X'"` trains the config that
    `python -m fedbatch.simulate engine=deployment X` composes and sends as JSON."""
    overrides = ["rounds=3", "client.batch_size=16", "partition=dirichlet", "partition.alpha=0.3"]
    command = [sys.executable, "-m", "fedbatch.simulate", "engine=deployment", *overrides]
    cli = subprocess.run(
        [*command, "--cfg", "job", "--resolve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    sent = build_config(yaml.safe_load(cli.stdout))
    cfg = config_from_run_config({CONFIG_KEY: "", OVERRIDES_KEY: " ".join(overrides)})
    assert cfg == sent
    assert config_from_run_config({CONFIG_KEY: sent.to_json(), OVERRIDES_KEY: ""}) == sent


def test_a_whole_config_and_overrides_together_are_refused():
    whole = compose_config([]).to_json()
    with pytest.raises(OverrideError) as info:
        config_from_run_config({CONFIG_KEY: whole, OVERRIDES_KEY: "rounds=3"})
    assert str(info.value).startswith("overrides='rounds=3' is invalid: fedbatch-config")
    assert json.loads(whole)["rounds"] == 30


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["++clock.crash=0.5"], "clock.crash is not a key of clock=off: allowed name"),
        (["++client.batch_sise=3"], "client.batch_sise is not a key of client=default"),
        (["+client.lr=0.2"], "+client.lr is not allowed: client.lr exists already; "
                             "set it with client.lr=0.2"),
        (["+bogus=1"], "bogus is not a known key"),
        (["~client"], "~client is not allowed: every fedbatch key has a value (its default "
                      "is in python -m fedbatch.config); set client.<key>=<value> instead"),
        (["~client.lr"], "set client.lr=<value> instead"),
        (["~rounds"], "set rounds=<value> instead"),
        (["rounds.x=1"], "rounds.x is not a key of rounds: allowed "),
        (["clock.devices.0.throughput=5"], "clock.devices.0.throughput is not a key of "
                                           "clock=off: allowed name"),
        (["model=logreg", "model.hidden.0=8"], "model.hidden.0 is not a key of model=logreg"),
        (["clock=devices", "~clock.crash"], "~clock.crash is not allowed"),
    ],
)  # fmt: skip
def test_add_force_add_and_delete_overrides_go_through_the_same_checks(argv, message):
    with pytest.raises(OverrideError) as error:
        check_overrides(argv)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_force_add_of_a_key_of_the_chosen_option_sets_it():
    check_overrides(["++client.lr=0.05", "clock=devices", "++clock.crash=0.1", "+hydra.job.x=1"])
    assert compose_config(["++client.lr=0.05"]).client.lr == 0.05


def test_a_key_a_list_element_leaves_out_is_added_with_plus():
    """Hydra does not merge list elements with the schema: a device's `scaling`, which
    clock=devices' YAML leaves at its default, is added with `+`."""
    cfg = compose_config(["clock=devices", "+clock.devices.0.scaling=0.5"])
    assert [d.scaling for d in cfg.clock.devices] == [0.5, 0.0, 0.0]


def test_a_studys_own_config_group_is_added_with_plus(tmp_path):
    """A group only a study's --config-dir has (`row/`) is not in fedbatch's defaults list:
    Hydra adds it with `+row=...`; a fedbatch group still takes the plain form."""
    (tmp_path / "row").mkdir()
    (tmp_path / "row" / "small.yaml").write_text("# @package _global_\nrounds: 2\n")
    check_overrides(["--config-dir", str(tmp_path), "+row=small"])
    with pytest.raises(OverrideError, match="set it with batch=ramp"):
        check_overrides(["--config-dir", str(tmp_path), "+batch=ramp"])
    with pytest.raises(OverrideError, match=r"row='big' is invalid: allowed one of small"):
        check_overrides(["--config-dir", str(tmp_path), "+row=big"])
