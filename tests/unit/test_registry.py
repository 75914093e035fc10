"""Registries of built-in names, and `_target_` classes checked before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedbatch import registry
from fedbatch.config import (
    DATASETS,
    MODELS,
    OPTIMIZERS,
    STRATEGIES,
    ConfigError,
    build_config,
    config_from_json,
)
from fedbatch.config.compose import CONF_DIR, OverrideError, check_overrides, compose_config
from fedbatch.config.training import BATCH_SCHEDULES
from tests.conftest import tiny_raw

EXTENDING = Path(__file__).resolve().parent.parent / "extending"  # README's example files
OWN_CONF = EXTENDING / "conf"


@pytest.fixture(autouse=True)
def own_modules_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXTENDING))


def _raw(**sections):
    """tiny_raw with whole sections replaced (a `_target_` section has no built-in keys)."""
    return tiny_raw() | sections


@pytest.mark.parametrize(
    ("table", "group", "names"),
    [
        (registry.MODELS, "model", MODELS),
        (registry.STRATEGIES, "strategy", STRATEGIES),
        (registry.DATASETS, "data", DATASETS),
        (registry.BATCH_SCHEDULES, "batch", BATCH_SCHEDULES),
        (registry.OPTIMIZERS, None, OPTIMIZERS),
    ],
)
def test_each_built_in_name_has_one_yaml_and_resolves(table, group, names):
    assert table.names() == names  # config validation lists the registry's names
    if group is not None:
        files = {p.stem: OmegaConf.load(p) for p in (CONF_DIR / group).glob("*.yaml")}
        files = {k: v for k, v in files.items() if "_target_" not in v}  # model=custom
        assert set(files) == set(names)
        assert all(files[name].name == name for name in names)
    assert all(callable(table.resolve(name)) for name in names)


def test_validating_built_in_names_imports_neither_torch_nor_flower():
    code = (
        "import sys\n"
        "from fedbatch.config import ConfigError, build_config\n"
        "import fedbatch.simulate\n"
        "build_config({'model': {'name': 'cnn1d'}, 'client': {'optimizer': 'lars'}})\n"
        "try:\n"
        "    build_config({'model': {'name': 'vgg'}})\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "print(sorted(m for m in ('torch', 'flwr') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "model='vgg' is invalid: allowed one of logreg, mlp, cnn1d, cnn, resnet, gru, transformer",
        "[]",
    ]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"model": {"_target_": "nowhere.Net"}},
            "model._target_='nowhere.Net' cannot be imported: "
            "ModuleNotFoundError: No module named 'nowhere'",
        ),
        (
            {"model": {"_target_": "mynets.TinyNett"}},
            "model._target_='mynets.TinyNett' cannot be imported: "
            "AttributeError: module 'mynets' has no attribute 'TinyNett'",
        ),
        (
            {"model": {"_target_": "collections.OrderedDict"}},
            "model._target_='collections.OrderedDict' is not a torch.nn.Module subclass",
        ),
        (
            {"model": {"_target_": "TinyNet"}},
            "model._target_='TinyNet' is invalid: allowed an importable dotted path "
            "module.Class, e.g. mypkg.nets.TinyNet",
        ),
        (
            {"model": {"_target_": "mynets.TinyNet", "hidden": [8], "num_classes": 3}},
            "model.num_classes=3 is invalid: allowed no num_classes here: fedbatch passes it "
            "to model._target_ from the dataset",
        ),
        (
            {"model": {"_target_": "mynets.TinyNet", "hidden": [8], "name": "mlp"}},
            "model.name='mlp' is invalid: allowed no name beside model._target_",
        ),
        (
            {"strategy": {"_target_": "torch.nn.Linear"}},
            "strategy._target_='torch.nn.Linear' is not a "
            "flwr.serverapp.strategy.Strategy subclass",
        ),
        (
            {"client": {"optimizer": {"_target_": "torch.nn.Linear"}}},
            "client.optimizer._target_='torch.nn.Linear' is not a torch.optim.Optimizer subclass",
        ),
        (
            {"client": {"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.5}}},
            "client.optimizer.lr=0.5 is invalid: allowed no lr here: fedbatch passes it to "
            "client.optimizer._target_ from client.lr",
        ),
    ],
)
def test_a_bad_target_is_one_line_naming_key_and_path(sections, message):
    with pytest.raises(ConfigError) as info:
        build_config(_raw(**sections))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_targets_travel_to_clients_as_json_and_back():
    cfg = build_config(
        _raw(
            model={"_target_": "mynets.TinyNet", "hidden": [8, 4]},
            strategy={"_target_": "mystrategy.DampedFedAvg", "step": 0.25},
            client={"optimizer": {"_target_": "torch.optim.SGD", "momentum": 0.5}, "lr": 0.2},
        )
    )
    assert (cfg.model.name, cfg.model.target, cfg.model.kwargs) == (
        "mynets.TinyNet",
        "mynets.TinyNet",
        {"hidden": [8, 4]},
    )
    assert (cfg.strategy.target, cfg.strategy.params) == ("mystrategy.DampedFedAvg", {"step": 0.25})
    assert (cfg.client.optimizer_target, cfg.client.optimizer_kwargs) == (
        "torch.optim.SGD",
        {"momentum": 0.5},
    )
    assert config_from_json(cfg.to_json()) == cfg
    assert config_from_json(build_config(tiny_raw()).to_json()).model.target is None


def test_a_users_config_dir_adds_options_with_target():
    for where in (["--config-dir", str(OWN_CONF)], [f"hydra.searchpath=[file://{OWN_CONF}]"]):
        check_overrides([*where, "model=tiny", "model.hidden=[8]", "++model.extra=1"])
        check_overrides([*where, "strategy=damped", "strategy.step=0.1", "+strategy.other=2"])
    with pytest.raises(OverrideError) as info:
        check_overrides(["model=tiny"])
    assert (
        str(info.value)
        == "model='tiny' is invalid: allowed one of cnn, cnn1d, custom, gru, logreg, mlp, resnet, "
        "transformer"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-cd", str(OWN_CONF), "model=tiny", "model.hiden=[8]"],
            "model.hiden is not a key of model=tiny: allowed _target_, hidden "
            "(a new argument of its _target_ class: ++model.hiden=...)",
        ),
        (
            ["model._target_=mynets.TinyNet"],
            "model._target_ is not a key of model=mlp: allowed ",
        ),
        (["-cd", str(OWN_CONF), "model=tiny", "+model.hidden=[8]"], "model.hidden exists already"),
        (
            ["client.optimizer._target_=torch.optim.Adam"],
            "client.optimizer._target_ is not a key: client.optimizer holds a name; a class of "
            "your own is client.optimizer={_target_:module.Class}",
        ),
    ],
)
def test_overrides_of_a_target_section_are_checked(argv, message):
    with pytest.raises(OverrideError) as info:
        check_overrides(argv)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_users_yaml_composes_into_the_run_config():
    searchpath = f"hydra.searchpath=[file://{OWN_CONF}]"
    cfg = compose_config([searchpath, "model=tiny", "strategy=damped", "model.hidden=[8]"])
    assert (cfg.model.target, dict(cfg.model.kwargs)) == ("mynets.TinyNet", {"hidden": [8]})
    assert (cfg.strategy.target, dict(cfg.strategy.params)) == (
        "mystrategy.DampedFedAvg",
        {"step": 0.5},
    )
