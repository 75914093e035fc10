"""Batched local SGD over clients (vmap) against the trainer, and when the engine uses it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedbatch.config import ClientConfig
from fedbatch.engine.vectorized import ineligible
from fedbatch.local.minibatches import batch_schedule
from fedbatch.local.optim import build_optimizer
from fedbatch.local.stacked_optim import AdaptiveRule, SGDRule
from fedbatch.local.trainer import train_local
from fedbatch.local.vectorized import ClientSteps, stack_params, train_clients
from tests.conftest import tiny_config


def test_eligible_config_has_no_reasons():
    round_config = {"probes": [], "layer-norms": False, "grad-norms": True}
    assert ineligible(tiny_config()) == []
    assert ineligible(tiny_config(clock={"name": "devices"}), round_config) == []
    stream = {"name": "poisson", "drift": "covariate", "drift_at": 5.0}
    assert ineligible(tiny_config(stream=stream)) == []
    for optimizer in ("momentum", "adam", "adamw", "rmsprop", "adagrad"):
        assert ineligible(tiny_config(client={"optimizer": optimizer}), round_config) == []


def test_ineligible_config_lists_every_reason():
    cfg = tiny_config(
        client={"optimizer": "lars", "precision": "bf16", "accumulate": 2},
        model={"norm": "batch", "ghost_batch": 4, "dropout": 0.1, "checkpointing": True},
        stream={"name": "poisson", "rate": 4.0},
        clock={"name": "real"},
        monitor={"timing": True},
    )
    round_config = {"probes": ["noise_scale", "sharpness"], "layer-norms": True,
                    "proximal-mu": 0.1}  # fmt: skip
    assert ineligible(cfg, round_config) == [
        "client.optimizer=lars",
        "client.precision=bf16",
        "client.accumulate=2",
        "model.ghost_batch (ghost BatchNorm)",
        "model.dropout=0.1",
        "model.checkpointing=true",
        "clock=real (each client's measured time)",
        "monitor.timing=true",
        "probes due this round: noise_scale, sharpness",
        "per-layer gradient norms due",
        "a proximal term (FedProx)",
    ]


RULES = {
    "sgd": SGDRule(),
    "nesterov": SGDRule(0.9, nesterov=True),
    **{name: AdaptiveRule(name) for name in ("adam", "adamw", "rmsprop", "adagrad")},
}


@pytest.mark.parametrize("optimizer", RULES)
def test_batched_clients_train_as_the_trainer_does(optimizer):
    """Two clients with different data sizes, B, step counts, LR schedules and weight
    decay: each ends with the trainer's weights and measurements."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    setups = [(23, 4, 0.0), (50, 7, 0.01)]  # (samples, B, weight decay)
    clients, expected = [], []
    for seed, (n, batch_size, decay) in enumerate(setups):
        x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
        batches = list(batch_schedule(n, batch_size, torch.Generator().manual_seed(seed), epochs=2))
        lrs = [0.1 / (1 + s) for s in range(len(batches))]
        clients.append(ClientSteps(x, y, batches, lrs, decay))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(start[name])
        cfg = ClientConfig(optimizer=optimizer, momentum=0.9, weight_decay=decay)
        result = train_local(
            model, build_optimizer(model.parameters(), cfg), x, y,
            generator=torch.Generator().manual_seed(seed), batch_size=batch_size, epochs=2,
            lr_at=lambda s: 0.1 / (1 + s),
        )  # fmt: skip
        expected.append(({k: p.detach().clone() for k, p in model.named_parameters()}, result))
    assert len(clients[0].batches) != len(clients[1].batches)
    params, results = train_clients(model, stack_params([start, start]), clients, RULES[optimizer])
    for c, (weights, want) in enumerate(expected):
        for name, value in weights.items():
            torch.testing.assert_close(params[name][c], value, rtol=1e-5, atol=1e-6)
        got = results[c]
        assert (got.steps, got.examples_seen) == (want.steps, want.examples_seen)
        assert got.accuracy == want.accuracy
        for field in ("loss", "grad_norm_mean", "grad_norm_max", "lr_mean"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-5), field
