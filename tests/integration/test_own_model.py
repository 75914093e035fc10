"""model=custom: a model class of your own named on the command line, no YAML needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedbatch.config import ConfigError
from fedbatch.config.compose import compose_config, compose_raw, open_arguments
from fedbatch.engine import run_engine
from fedbatch.simulate import validate
from tests.conftest import read_rows, simulate, without_measured

ROOT = Path(__file__).resolve().parents[2]  # `python -m` from here imports tests.extending
TINY = "tests.extending.mynets.TinyNet"  # README's example model, from the test tree
CONV = "tests.extending.convnet.ConvNet"  # for (C, H, W) images only
FAST = ["rounds=2", "num_clients=4", "clients_per_round=2", "progress=off"]


def test_the_arguments_beside_the_class_are_its_keyword_arguments():
    cfg = compose_config(["model=custom", f"model._target_={TINY}", "model.hidden=[8,4]"])
    assert (cfg.model.target, dict(cfg.model.kwargs)) == (TINY, {"hidden": [8, 4]})
    # Hydra adds them (the option has no keys for a class it does not know yet) ...
    given = ["model=custom", f"model._target_={CONV}", "model.width=3", "seed=1"]
    assert open_arguments(given) == [*given[:2], "++model.width=3", "seed=1"]
    # ... and only for model=custom: a built-in's keys stay as they are.
    assert open_arguments(["model=mlp", "model.hidden=[8]"]) == ["model=mlp", "model.hidden=[8]"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model._target_=collections.OrderedDict"],
            "model._target_='collections.OrderedDict' is not a torch.nn.Module subclass",
        ),
        (
            [f"model._target_={CONV}"],
            f"model._target_='{CONV}' fails on inputs of shape (2, 64): RuntimeError: "
            "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
            "[2, 64]",
        ),
        (
            [f"model._target_={CONV}", "model.depth=2"],
            f"model._target_='{CONV}' cannot be built with input_shape=(64,), num_classes=10, "
            "depth=2: TypeError: ConvNet.__init__() got an unexpected keyword argument 'depth'",
        ),
        ([], "model._target_=None is invalid: allowed an importable dotted path module.Class"),
    ],
)
def test_a_class_that_is_no_module_or_does_not_take_the_data_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_raw(["model=custom", *overrides]))
    assert str(info.value) == message or str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_the_command_line_refuses_it_before_any_work(tmp_path):
    run = tmp_path / "run"
    result = simulate(
        "model=custom", f"model._target_={CONV}", f"hydra.run.dir={run}", *FAST, cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"fedbatch: error: model._target_='{CONV}' fails on inputs of shape (2, 64): "
        "RuntimeError: Expected 3D (unbatched) or 4D (batched) input to conv2d, but got "
        "input of size: [2, 64]"
    ]
    assert not run.exists()


@pytest.mark.slow
def test_a_custom_model_trains_as_the_built_in_it_mirrors(tmp_path):
    own = simulate(
        "model=custom", f"model._target_={TINY}", "model.hidden=[16]", *FAST,
        f"hydra.run.dir={tmp_path / 'own'}", cwd=ROOT,
    )  # fmt: skip
    assert own.returncode == 0, own.stderr
    mlp = compose_config(["model=mlp", "model.hidden=[16]", *FAST])
    run_engine(mlp, tmp_path / "mlp", progress=False)
    rows = without_measured(read_rows(tmp_path / "own"))
    assert rows == without_measured(read_rows(tmp_path / "mlp"))
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]


@pytest.mark.slow
def test_readme_command_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Your own model\n", 1)[1].split("\n### ", 1)[0]
    (command,) = re.findall(r"^PYTHONPATH=\$PWD python -m fedbatch\.simulate .*$", section, re.M)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run(
        # two rounds, not thirty: the command as written, in suite time
        ["bash", "-c", f"{command} rounds=2 hydra.run.dir={tmp_path / 'run'} progress=off"],
        cwd=ROOT / "tests" / "extending",  # README: from the directory holding mynets.py
        env=os.environ | {"PATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = read_rows(tmp_path / "run")
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]
