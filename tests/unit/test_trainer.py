"""The seed's workflow, checked on numbers: batches, reshuffling, updates, norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.config import NORMS, OPTIMIZERS, ClientConfig, ModelConfig
from fedbatch.local.minibatches import batch_schedule, epoch_batches
from fedbatch.local.models import build_model
from fedbatch.local.optim import build_optimizer
from fedbatch.local.trainer import evaluate, train_local


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _toy_data(n: int = 40, features: int = 5, classes: int = 3):
    g = _generator(1)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def test_epoch_uses_every_sample_once_in_batches_of_b():
    batches = epoch_batches(103, 10, _generator())
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert sorted(torch.cat(batches).tolist()) == list(range(103))


def test_epochs_are_reshuffled():
    schedule = list(batch_schedule(50, 50, _generator(), epochs=3))
    assert len(schedule) == 3
    for epoch in schedule:
        assert sorted(epoch.tolist()) == list(range(50))
    assert not torch.equal(schedule[0], schedule[1])
    assert not torch.equal(schedule[1], schedule[2])


def test_steps_mode_runs_exact_steps_across_epochs():
    batches = list(batch_schedule(25, 10, _generator(), epochs=1, steps=7))
    assert [len(b) for b in batches] == [10, 10, 5, 10, 10, 5, 10]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(25))
    assert sorted(torch.cat(batches[3:6]).tolist()) == list(range(25))


def test_single_sample_tail_is_folded_for_batchnorm():
    batches = epoch_batches(21, 10, _generator(), min_batch=2)
    assert [len(b) for b in batches] == [10, 11]


def test_full_batch_sgd_is_one_exact_gradient_step():
    x, y = _toy_data()
    model = nn.Linear(5, 3)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    expected_loss = F.cross_entropy(x @ w.T + b, y)
    gw, gb = torch.autograd.grad(expected_loss, [w, b])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = train_local(model, opt, x, y, batch_size=len(x), generator=_generator())
    assert result.steps == 1 and result.examples_seen == len(x)
    torch.testing.assert_close(model.weight.detach(), w0 - 0.5 * gw)
    torch.testing.assert_close(model.bias.detach(), b0 - 0.5 * gb)
    assert result.loss == pytest.approx(expected_loss.item(), rel=1e-6)
    norm = torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())
    assert result.grad_norm_mean == pytest.approx(float(norm), rel=1e-5)
    assert result.grad_norm_max == pytest.approx(float(norm), rel=1e-5)


def test_batch_size_one_takes_one_step_per_sample():
    x, y = _toy_data(n=12)
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    result = train_local(model, opt, x, y, batch_size=1, generator=_generator(), epochs=2)
    assert result.steps == 24 and result.examples_seen == 24
    assert result.grad_norm_max >= result.grad_norm_mean > 0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_reduces_training_loss(name):
    x, y = _toy_data(n=64)
    model = nn.Linear(5, 3)
    lr = 0.05 if name in ("adam", "rmsprop", "adagrad") else 0.3
    opt = build_optimizer(model.parameters(), ClientConfig(optimizer=name, lr=lr))
    before, _ = evaluate(model, x, y)
    train_local(model, opt, x, y, batch_size=16, generator=_generator(), epochs=10)
    after, _ = evaluate(model, x, y)
    assert after < before


def test_proximal_term_pulls_towards_anchor():
    x, y = _toy_data(n=64)
    distances = []
    for mu in (0.0, 100.0):
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        anchor = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.005)
        train_local(
            model,
            opt,
            x,
            y,
            batch_size=8,
            generator=_generator(),
            epochs=5,
            prox_mu=mu,
            anchor=anchor,
        )
        distances.append(
            sum(
                float((p.detach() - a).pow(2).sum())
                for p, a in zip(model.parameters(), anchor, strict=True)
            )
        )
    assert distances[1] < 0.5 * distances[0]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
def test_models_with_each_norm_train_on_small_batches(name, norm):
    model = build_model(ModelConfig(name=name, norm=norm, hidden=(12, 6)), (40,), 10)
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert has_bn == (norm == "batch")
    x = torch.randn(9, 40)
    y = torch.randint(0, 10, (9,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_local(model, opt, x, y, batch_size=4, generator=_generator())
    assert result.examples_seen == 9
    assert model(x).shape == (9, 10)


@pytest.mark.parametrize("norm", NORMS)
def test_image_cnn_with_each_norm_trains(norm):
    model = build_model(ModelConfig(name="cnn", norm=norm, channels=(4, 8)), (3, 32, 32), 5)
    x = torch.randn(6, 3, 32, 32)
    y = torch.randint(0, 5, (6,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_local(model, opt, x, y, batch_size=3, generator=_generator())
    assert result.steps == 2 and model(x).shape == (6, 5)


def test_logreg_is_one_linear_layer():
    model = build_model(ModelConfig(name="logreg"), (8, 8), 10)
    assert sum(p.numel() for p in model.parameters()) == 64 * 10 + 10
