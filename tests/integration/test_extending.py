"""Classes of the user's own (`_target_`) trained end to end, and README's example as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbatch.config import ConfigError, build_config, config_from_json
from fedbatch.engine import run_engine
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.client_app import app as real_client_app
from fedbatch.federated.server_app import run_experiment
from fedbatch.federated.workload import workload_for
from fedbatch.metrics.callbacks import Callback, RoundState, RunOutcome
from fedbatch.simulate import validate
from tests.conftest import read_rows, tiny_raw, without_measured

ROOT = Path(__file__).resolve().parents[2]
EXTENDING = ROOT / "tests" / "extending"  # README's example files, quoted there verbatim
TINY = {"_target_": "mynets.TinyNet", "hidden": [16]}


@pytest.fixture(autouse=True)
def own_modules_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(EXTENDING))


def _rows(tmp_path: Path, name: str, **sections: Any) -> list[dict[str, Any]]:
    """metrics.jsonl of a tiny in-process run, `sections` replacing tiny_raw's."""
    cfg = build_config(tiny_raw(rounds=2) | sections)
    run_engine(cfg, tmp_path / name, progress=False)
    return without_measured(read_rows(tmp_path / name))


def test_a_target_model_trains_exactly_as_the_built_in_it_mirrors(tmp_path):
    # TinyNet builds mlp's layers in mlp's order: the same seeded init, the same numbers.
    own = _rows(tmp_path, "own", model=TINY)
    built_in = _rows(tmp_path, "mlp", model={"name": "mlp", "hidden": [16]})
    assert own == built_in
    assert own[-1]["test_accuracy"] > own[0]["test_accuracy"]


def test_flowers_own_fedavg_as_a_target_gives_fedavgs_numbers(tmp_path):
    flowers = _rows(tmp_path, "flower", strategy={"_target_": "flwr.serverapp.strategy.FedAvg"})
    assert flowers == _rows(tmp_path, "fedavg", strategy={"name": "fedavg"})


def test_a_target_strategy_gets_its_parameters_and_fedbatchs_metrics(tmp_path):
    frozen = _rows(tmp_path, "step0", strategy={"_target_": "mystrategy.DampedFedAvg", "step": 0})
    # step 0: clients train (metrics aggregated by fedbatch's function), the model stays put.
    assert all(row["steps"] == 3 * 15 and row["train_loss"] > 0 for row in frozen[1:])
    assert {row["test_loss"] for row in frozen} == {frozen[0]["test_loss"]}
    full = _rows(tmp_path, "step1", strategy={"_target_": "mystrategy.DampedFedAvg", "step": 1})
    fedavg = _rows(tmp_path, "fedavg", strategy={"name": "fedavg"})
    for mine, theirs in zip(full, fedavg, strict=True):  # old + 1·(new − old) ≈ new
        assert mine["test_loss"] == pytest.approx(theirs["test_loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("own", "built_in"),
    [
        ({"_target_": "torch.optim.SGD"}, {"optimizer": "sgd"}),
        ({"_target_": "torch.optim.SGD", "momentum": 0.9}, {"optimizer": "momentum"}),
        ({"_target_": "torch.optim.Adam"}, {"optimizer": "adam", "lr": 0.01}),
    ],
)
def test_a_target_optimizer_trains_exactly_as_the_built_in(tmp_path, own, built_in):
    client = {"batch_size": 16, "epochs": 1, "lr": built_in.get("lr", 0.1), "weight_decay": 0.01}
    mine = _rows(tmp_path, "own", client=client | {"optimizer": own})
    assert mine == _rows(tmp_path, "built-in", client=client | built_in)


def _without_module(name: str):
    """The real ClientApp on a node that cannot import `name` (fresh per-process caches,
    as in another process; the server's own are untouched)."""

    def client_app(msg, context):
        saved = sys.modules.get(name)
        sys.modules[name] = None  # type: ignore[assignment]  # import now fails
        workload_for.cache_clear()
        config_from_json.cache_clear()
        try:
            return real_client_app(msg, context)
        finally:
            if saved is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = saved
            workload_for.cache_clear()

    return client_app


class RowsSeen(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.outcome: RunOutcome | None = None

    def on_round_end(self, state: RoundState) -> None:
        self.rows.append(dict(state.row))

    def on_run_end(self, outcome: RunOutcome) -> None:
        self.outcome = outcome


@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
def test_a_callers_callbacks_see_each_complete_row_and_the_end(tmp_path, engine):
    seen = RowsSeen()
    cfg = build_config(tiny_raw(rounds=2) | {"engine": {"name": engine}})
    summary = run_engine(cfg, tmp_path, progress=False, callbacks=[seen])
    # After the standard callbacks: each row as metrics.jsonl has it, evaluation included.
    assert seen.rows == read_rows(tmp_path)
    assert [row["round"] for row in seen.rows] == [0, 1, 2]
    assert all("test_accuracy" in row for row in seen.rows)
    assert seen.outcome is not None and seen.outcome.rounds_completed == 2
    assert summary["rounds_completed"] == 2


def test_nodes_that_cannot_import_the_target_fail_with_one_line_and_end_the_run(tmp_path):
    cfg = build_config(tiny_raw(rounds=3) | {"model": TINY})
    grid = InProcessGrid(cfg.num_clients, client_app=_without_module("mynets"))  # type: ignore[arg-type]
    summary = run_experiment(grid, cfg, tmp_path, progress=False)
    assert (summary["rounds_completed"], summary["stopped_because"]) == (1, "all_clients_failed")
    reason = summary["client_error"]
    assert reason.startswith(
        "TargetImportError: model._target_='mynets.TinyNet' cannot be imported: "
        "ModuleNotFoundError: import of mynets halted"
    )
    assert reason.endswith(
        "(on this node: every SuperNode must import it, installed or on PYTHONPATH)"
    )
    assert "\n" not in reason
    assert read_rows(tmp_path)[1]["clients_failed"] == 3


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"model": {"_target_": "mynets.TinyNet", "hiden": [8]}},
            "model._target_='mynets.TinyNet' cannot be built with input_shape=(64,), "
            "num_classes=10, hiden=[8]: TypeError: TinyNet.__init__() got an unexpected "
            "keyword argument 'hiden'",
        ),
        (
            {"model": {"_target_": "torch.nn.Identity"}},
            "model._target_='torch.nn.Identity' returns shape (2, 64) for inputs of shape "
            "(2, 64): allowed (2, 10), logits for num_classes=10",
        ),
        (
            {"strategy": {"_target_": "mystrategy.DampedFedAvg", "stepp": 0.1}},
            "strategy._target_='mystrategy.DampedFedAvg' cannot be built with stepp=0.1: "
            "TypeError: FedAvg.__init__() got an unexpected keyword argument 'stepp'",
        ),
        (
            {"strategy": {"_target_": "flwr.serverapp.strategy.FedAvg", "step": 0.1}},
            "strategy.step=0.1 is invalid: allowed parameters of "
            "flwr.serverapp.strategy.FedAvg: none",
        ),
        (
            {"client": {"optimizer": {"_target_": "torch.optim.SGD", "betas": [0.9, 0.9]}}},
            "client.optimizer._target_='torch.optim.SGD' cannot be built with lr=0.1, "
            "betas=[0.9, 0.9]: TypeError: SGD.__init__() got an unexpected keyword argument",
        ),
    ],
)
def test_a_target_that_cannot_be_built_is_one_line_before_any_round(sections, message):
    with pytest.raises(ConfigError) as info:
        validate(tiny_raw() | sections)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_command_line_names_a_missing_target_in_one_line(tmp_path):
    # Run from elsewhere: `python -m` puts the working directory on sys.path.
    command = ["--config-dir", str(EXTENDING / "conf"), "model=tiny", "hydra.run.dir=run"]
    result = subprocess.run(
        [sys.executable, "-m", "fedbatch.simulate", *command],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "fedbatch: error: model._target_='mynets.TinyNet' cannot be imported: "
        "ModuleNotFoundError: No module named 'mynets'"
    ]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_sweep_over_a_users_config_dir_checks_every_job_first(tmp_path):
    command = ["-m", "--config-dir", str(EXTENDING / "conf"), "model=tiny", "client.lr=0.1,0"]
    result = subprocess.run(
        [sys.executable, "-m", "fedbatch.simulate", *command, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(EXTENDING)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "fedbatch: error: job 1 (model=tiny client.lr=0): client.lr=0 is invalid: "
        "allowed a number > 0.0"
    ]
    assert not (tmp_path / "sweep").exists()


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("\n## Extending fedbatch\n", 1)[1].split("\n## ", 1)[0]


def test_readme_quotes_the_example_files_verbatim():
    blocks = re.findall(r"```(?:python|yaml)\n(# (\S+)\n.*?)```", _readme_section(), re.S)
    quoted = {path: text for text, path in blocks if (EXTENDING / path).is_file()}
    assert set(quoted) == {"mynets.py", "conf/model/tiny.yaml", "mystrategy.py"} | {
        "conf/strategy/damped.yaml"
    }
    for path, text in quoted.items():
        assert (EXTENDING / path).read_text(encoding="utf-8") == text, path


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    commands = re.findall(
        r"^((?:PYTHONPATH=\$PWD )?python -m fedbatch\.simulate .*)$", _readme_section(), re.M
    )
    assert len(commands) == 3
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    for number, command in enumerate(commands):
        run_dir = tmp_path / str(number)
        result = subprocess.run(
            # two rounds, not README's thirty: the commands run as written, in suite time
            ["bash", "-c", f"{command} rounds=2 hydra.run.dir={run_dir} progress=off"],
            cwd=EXTENDING,
            env=os.environ | {"PATH": path},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (command, result.stderr)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = read_rows(run_dir)
        assert summary["rounds_completed"] == 2, command
        assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"], command  # it learns
