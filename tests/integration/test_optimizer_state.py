"""client.optimizer_state: a client's optimizer state across rounds (Flower's context.state).

The reference is a plain torch loop: with one client, FedAvg and full-batch steps, R rounds
of S steps with `keep` are one optimizer's R·S steps; with `reset`, R fresh optimizers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from torch.nn import functional as F

from fedbatch.config import RunConfig
from fedbatch.engine import vectorized
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated import client_app
from fedbatch.federated.client_optimizer import load_optimizer_state, save_optimizer_state
from fedbatch.federated.records import array_to_tensor
from fedbatch.federated.server_app import run_experiment
from fedbatch.local.optim import LARS
from tests.conftest import read_rows, tiny_config, without_measured

ROUNDS, STEPS = 3, 4
Weights = dict[str, torch.Tensor]
Factory = Callable[[Iterator[torch.nn.Parameter], float], torch.optim.Optimizer]
OPTIMIZERS: dict[str, tuple[float, Factory]] = {
    "momentum": (0.1, lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)),
    "adam": (0.01, lambda p, lr: torch.optim.Adam(p, lr=lr)),
    "adagrad": (0.1, lambda p, lr: torch.optim.Adagrad(p, lr=lr)),
}


def _one_client(optimizer: str, state: str, **client: Any) -> RunConfig:
    lr = OPTIMIZERS[optimizer][0]
    settings = {"batch_size": "full", "steps": STEPS, "optimizer": optimizer, "lr": lr}
    return tiny_config(
        rounds=ROUNDS,
        num_clients=1,
        clients_per_round=1,
        device="cpu",
        client=settings | {"optimizer_state": state} | client,
    )


def _start_and_final(cfg: RunConfig, tmp_path) -> tuple[Weights, Weights]:
    """The weights the client received in round 1 and the global weights after the run
    (FedAvg over one client: its reply)."""
    received: dict[int, Weights] = {}
    replied: dict[int, Weights] = {}
    recorder = ClientApp()

    @recorder.train()
    def _train(msg, context):
        server_round = int(msg.content["config"]["server-round"])
        received[server_round] = _weights(msg)
        reply = client_app.app(msg, context)
        replied[server_round] = _weights(reply)
        return reply

    run_experiment(InProcessGrid(1, recorder), cfg, tmp_path, progress=False)
    assert sorted(replied) == list(range(1, ROUNDS + 1))
    return received[1], replied[ROUNDS]


def _weights(msg) -> Weights:
    return {key: array_to_tensor(a).clone() for key, a in msg.content["arrays"].items()}


def _plain_loop(
    cfg: RunConfig, start: Weights, optimizer: str, lrs: list[float], fresh_every: int
) -> Weights:
    """Full-batch steps at the given LRs, with a new optimizer every `fresh_every` steps."""
    workload = client_app.workload_for(cfg.to_json())
    x, y = workload.client_data(0)
    model = copy.deepcopy(workload.model())
    model.load_state_dict(start)
    make = OPTIMIZERS[optimizer][1]
    for step, lr in enumerate(lrs):
        if step % fresh_every == 0:
            opt = make(model.parameters(), lr)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {key: value.detach() for key, value in model.state_dict().items()}


def _max_difference(a: Weights, b: Weights) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_kept_state_trains_as_one_optimizer_and_reset_as_fresh_ones(tmp_path, optimizer):
    lrs = [OPTIMIZERS[optimizer][0]] * (ROUNDS * STEPS)
    kept = _one_client(optimizer, "keep")
    start, final = _start_and_final(kept, tmp_path / "keep")
    one_optimizer = _plain_loop(kept, start, optimizer, lrs, fresh_every=len(lrs))
    # The trainer shuffles each full batch's rows: only the summation order differs.
    assert _max_difference(final, one_optimizer) < 1e-5

    start_reset, final_reset = _start_and_final(_one_client(optimizer, "reset"), tmp_path / "reset")
    assert _max_difference(start, start_reset) == 0.0
    fresh_each_round = _plain_loop(kept, start, optimizer, lrs, fresh_every=STEPS)
    # A fresh Adagrad's first step is lr·g/(|g| + 1e-10) per coordinate: on gradients near
    # 1e-10 the summation order's last digits move it by a relative amount far above
    # float32's (1.3e-5 = 1.3e-4·lr measured on this CPU, under 1e-5 on CI's); a kept
    # state's steps are damped by earlier ones. Still 10× under the state's own effect.
    tolerance = 1e-4 if optimizer == "adagrad" else 1e-5
    assert _max_difference(final_reset, fresh_each_round) < tolerance
    assert _max_difference(final_reset, final) > 1e-3  # the state matters


def test_the_round_s_lr_comes_from_its_plan_not_the_kept_state(tmp_path):
    # A step schedule: LR 0.1 in round 1, 0.01 from round 2 on.
    cfg = _one_client("momentum", "keep", lr_schedule="step", lr_milestones=[2])
    start, final = _start_and_final(cfg, tmp_path)
    lrs = [0.1] * STEPS + [0.01] * (ROUNDS - 1) * STEPS
    assert _max_difference(final, _plain_loop(cfg, start, "momentum", lrs, len(lrs))) < 1e-5


def _context() -> Context:
    return Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})


@pytest.mark.parametrize(
    "make",
    [
        lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
        lambda p, lr, wd: LARS(p, lr=lr, weight_decay=wd),
    ],
    ids=["adam", "lars"],
)
def test_saved_state_loads_into_this_round_s_optimizer(make):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    context = _context()
    before = make(model.parameters(), 0.1, 0.0)
    load_optimizer_state(before, context)  # nothing saved yet: stays fresh
    assert not before.state
    for _ in range(2):
        before.zero_grad()
        F.cross_entropy(model(x), y).backward()
        before.step()
    save_optimizer_state(before, context)
    after = make(model.parameters(), 0.5, 0.01)
    load_optimizer_state(after, context)
    assert (after.param_groups[0]["lr"], after.param_groups[0]["weight_decay"]) == (0.5, 0.01)
    saved, loaded = before.state_dict()["state"], after.state_dict()["state"]
    assert saved.keys() == loaded.keys() == {0, 1}
    for index, values in saved.items():
        assert values.keys() == loaded[index].keys()
        for name, value in values.items():
            assert torch.equal(loaded[index][name], value), (index, name)
    after.zero_grad()
    F.cross_entropy(model(x), y).backward()
    after.step()  # the loaded tensors are the optimizer's own, writable copies
    stepped = after.state_dict()["state"]
    assert any(not torch.equal(stepped[1][name], value) for name, value in saved[1].items())


def test_vectorized_engine_keeps_the_state_through_the_client_app(tmp_path):
    raw = {"rounds": 3, "num_clients": 4, "clients_per_round": 4, "device": "cpu"}
    client = {"optimizer": "momentum", "optimizer_state": "keep"}
    cfg = tiny_config(**raw, client=client, engine={"name": "vectorized"})
    assert "client.optimizer_state=keep" in vectorized.ineligible(cfg)
    grid = vectorized.VectorizedGrid(cfg)
    run_experiment(grid, cfg, tmp_path / "vectorized", progress=False)
    assert grid.batched == 0
    for name, state in (("inprocess", "keep"), ("reset", "reset")):
        other = tiny_config(**raw, client=client | {"optimizer_state": state})
        run_experiment(InProcessGrid(4), other, tmp_path / name, progress=False)
    rows = {
        name: without_measured(read_rows(tmp_path / name))
        for name in ("vectorized", "inprocess", "reset")
    }
    assert rows["vectorized"] == rows["inprocess"]
    assert rows["inprocess"][-1]["test_loss"] != rows["reset"][-1]["test_loss"]
