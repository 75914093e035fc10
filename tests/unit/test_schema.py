"""The config schema: one source of truth per key, which the YAML files and Hydra agree with."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from fedbatch.config import ConfigError, RunConfig, build_config
from fedbatch.config.compose import CONF_DIR, compose_config, compose_raw
from fedbatch.config.schema import applies, defaults, extra, fields, is_section, plain

SECTIONS = {n: f.annotation for n, f in fields(RunConfig).items() if is_section(f.annotation)}


def _all_fields(section: type, prefix: str = ""):
    for name, info in fields(section).items():
        yield f"{prefix}{name}", info
        if is_section(info.annotation):
            yield from _all_fields(info.annotation, f"{prefix}{name}.")


def test_every_key_says_what_it_means():
    undocumented = [k for k, info in _all_fields(RunConfig) if not (info.description or "").strip()]
    assert undocumented == []


def test_the_composed_default_config_is_the_schemas_defaults():
    """Hydra's YAML and the schema agree: no YAML default drifts from the schema's."""
    assert compose_config([]) == RunConfig()


@pytest.mark.parametrize("group", sorted(SECTIONS))
def test_option_files_hold_only_what_differs_from_the_schema(group):
    section = SECTIONS[group]
    schema_defaults = defaults(section)
    for path in sorted((CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []:
        option = OmegaConf.to_container(OmegaConf.load(path)) or {}
        repeated = {
            k: v
            for k, v in option.items()
            if k in schema_defaults and plain(v) == schema_defaults[k]
        }
        assert repeated == {}, f"{path.relative_to(CONF_DIR)} repeats schema defaults"


def test_option_keys_apply_to_the_option_they_sit_in():
    """A key an option sets must be one the schema says applies to it."""
    for group, section in SECTIONS.items():
        directory = CONF_DIR / group
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            option = OmegaConf.to_container(OmegaConf.load(path)) or {}
            name = option.get("name")
            for key in set(option) & set(fields(section)):
                assert applies(fields(section)[key], name), f"{path.name}: {key}"


def test_keys_that_do_not_apply_are_refused_on_the_command_line():
    from fedbatch.config.compose import OverrideError, check_overrides

    with pytest.raises(OverrideError, match=r"^partition\.alpha is not a key of partition=iid"):
        check_overrides(["partition.alpha=0.1"])
    with pytest.raises(OverrideError, match=r"^model\.channels is not a key of model=mlp"):
        check_overrides(["model.channels=[8]"])
    check_overrides(["partition=dirichlet", "partition.alpha=0.1", "model=cnn1d"])


def test_a_key_no_yaml_names_can_still_be_set():
    """`client/default.yaml` lists no key: every one comes from the schema, and each can be set."""
    raw = compose_raw(["client.lr=0.05", "model=cnn1d", "model.kernel_size=3", "eval.every=2"])
    cfg = build_config(raw)
    assert (cfg.client.lr, cfg.model.kernel_size, cfg.eval.every) == (0.05, 3, 2)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"client": {"lr": 0}}, "client.lr=0 is invalid: allowed a number > 0.0"),
        ({"client": {"lr": True}}, "client.lr=True is invalid: allowed a number > 0.0"),
        ({"client": {"epochs": 1.5}}, "client.epochs=1.5 is invalid: allowed an integer >= 1"),
        ({"client": {"steps": 0}}, "client.steps=0 is invalid: allowed an integer >= 1 or null"),
        ({"client": {"batch_size": "all"}}, "client.batch_size='all' is invalid: "
         "allowed an integer >= 1 or 'full'"),
        ({"model": {"name": "mlp", "hidden": [8, 0]}}, "model.hidden[1]=0 is invalid: "
         "allowed an integer >= 1"),
        ({"partition": {"name": "pathological"}}, "partition='pathological' is invalid: "
         "allowed one of iid, dirichlet, shards, quantity, natural"),
        ({"stream": {"name": "poisson", "duty": 1.5}}, "stream.duty=1.5 is invalid: "
         "allowed a number > 0.0 and <= 1.0"),
        ({"clock": {"name": "devices", "devices": [{"throughput": 0}]}},
         "clock.devices[0].throughput=0 is invalid: allowed a number >= 0.001"),
        ({"eval": {"evry": 2}}, "eval.evry=2 is invalid: allowed keys batch_size, every, "
         "follow_drift, initial, train_samples"),
        ({"eval": 3}, "eval=3 is invalid: allowed a config group (a mapping of keys)"),
        ({"batch": {"per_client": []}}, "batch.per_client=[] is invalid: allowed one of same, "
         "equal_steps, or a list of batch sizes"),
        ({"model": {"name": "mlp", "hidden": []}}, "model.hidden=[] is invalid: "
         "allowed a non-empty list, each an integer >= 1"),
        ({"clock": {"name": "devices", "devices": [{"scaling": 3}]}},
         "clock.devices[0].scaling=3 is invalid: allowed a number >= 0.0 and <= 1.0"),
        ({"device": "gpu"}, "device='gpu' is invalid: allowed one of auto, cpu, cuda, "
         "or cuda:<index>"),
        ({"stop": {"target_train_loss": 0.1}, "eval": {"train_samples": 0}},
         "stop.target_train_loss=0.1 is invalid: allowed null unless eval.train_samples >= 1 "
         "(not measured in a deployment)"),
        ({"monitor": {"final": True}, "engine": {"name": "deployment"}},
         "monitor.final=True is invalid: allowed false unless eval.train_samples >= 2 "
         "(not measured in a deployment)"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(raw, message):
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    assert str(info.value) == message


def test_a_node_may_name_one_gpu_of_several():
    """A SuperNode's own device (`--node-config device=cuda:1`) replaces the run's."""
    assert dataclasses.replace(RunConfig(), device="cuda:1").device == "cuda:1"


def test_sections_are_frozen_dataclasses_that_validate_on_replace():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.client.lr = 1.0  # type: ignore[misc]
    assert dataclasses.replace(cfg.client, lr=0.5).lr == 0.5
    with pytest.raises(ValueError, match="lr"):
        dataclasses.replace(cfg.client, lr=-1.0)


def test_internal_keys_are_not_yaml_keys():
    """`_target_`'s path and arguments are filled in by fedbatch, never set in YAML."""
    internal = {k for k, info in _all_fields(RunConfig) if extra(info, "internal")}
    assert internal == {
        "model.target", "model.kwargs", "strategy.params", "strategy.target",
        "client.optimizer_target", "client.optimizer_kwargs", "data.ids",
    }  # fmt: skip
    assert not internal & {f"{g}.{k}" for g in SECTIONS for k in defaults(SECTIONS[g])}


def test_the_reference_lists_every_key_with_default_range_and_meaning():
    done = subprocess.run(
        [sys.executable, "-m", "fedbatch.config", "client", "partition"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("  ")}
    assert set(lines) == {f"client.{k}" for k in defaults(SECTIONS["client"])} | {
        "partition",
        *(f"partition.{k}" for k in defaults(SECTIONS["partition"])),
    }
    assert lines["client.lr"].split()[1:5] == ["0.1", "a", "number", ">"]
    assert "only dirichlet, quantity" in lines["partition.alpha"]
    bad = subprocess.run(
        [sys.executable, "-m", "fedbatch.config", "clients"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "section='clients' is invalid" in bad.stderr


def test_pydantic_dataclasses_expose_their_fields_as_the_schema_reads_them():
    """Guard: `schema.fields` reads pydantic's documented `__pydantic_fields__`; each entry
    must keep the default, the description, the range and our extra keys."""
    from annotated_types import Gt

    from fedbatch.config import ClientConfig

    lr = fields(ClientConfig)["lr"]
    assert (lr.default, lr.description) == (
        0.1,
        "learning rate (at base_batch_size, before warmup)",
    )
    assert any(isinstance(c, Gt) and c.gt == 0 for c in lr.metadata)
    assert extra(fields(ClientConfig)["optimizer_target"], "internal") is True
