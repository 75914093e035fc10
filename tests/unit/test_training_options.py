"""train_local's options, on numbers: accumulation, precision, norms, timing, prefetch, LR."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.config import ModelConfig
from fedbatch.federated.records import load_arrays, model_to_arrays
from fedbatch.local.models import GhostBatchNorm1d, GhostBatchNorm2d, build_model, memory_format
from fedbatch.local.trainer import TrainOptions, train_local


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = 108, features: int = 10, classes: int = 3, seed: int = 1):
    g = _generator(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _mlp(features: int = 10, classes: int = 3, seed: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def _sgd_round(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **options):
    """One round of local training with plain SGD at lr 0.1 and the test's shuffle seed."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_local(model, optimizer, x, y, generator=_generator(), **options)


def _assert_same_weights(a: nn.Module, b: nn.Module, rtol: float = 1e-5, atol: float = 1e-7):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=rtol, atol=atol, msg=key)


# --- gradient accumulation -----------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_accumulating_four_micro_batches_equals_one_big_batch(momentum):
    x, y = _data(n=108)  # 3 steps of 32 and a last one of 12 (micro-batches 8 and 4)
    big, micro = _mlp(), _mlp()
    start = copy.deepcopy(big.state_dict())
    opt_big = torch.optim.SGD(big.parameters(), lr=0.1, momentum=momentum)
    opt_micro = torch.optim.SGD(micro.parameters(), lr=0.1, momentum=momentum)
    one = train_local(big, opt_big, x, y, generator=_generator(5), batch_size=32, epochs=3)
    many = train_local(
        micro, opt_micro, x, y, generator=_generator(5), batch_size=8, accumulate=4, epochs=3
    )
    assert one.steps == many.steps == 3 * 4
    assert one.examples_seen == many.examples_seen == 3 * 108
    assert many.loss == pytest.approx(one.loss, rel=1e-5)
    assert many.accuracy == pytest.approx(one.accuracy, abs=1e-12)
    assert many.grad_norm_mean == pytest.approx(one.grad_norm_mean, rel=1e-5)
    assert many.grad_norm_max == pytest.approx(one.grad_norm_max, rel=1e-5)
    _assert_same_weights(big, micro)
    assert not torch.equal(big.state_dict()["0.weight"], start["0.weight"])  # it trained


def test_accumulation_differs_from_small_steps():
    """Sanity: the match above is not trivial; B=8 without accumulation ends elsewhere."""
    x, y = _data(n=108)
    big, small = _mlp(), _mlp()
    train_local(
        big, torch.optim.SGD(big.parameters(), lr=0.1), x, y, generator=_generator(5), batch_size=32
    )
    result = train_local(
        small,
        torch.optim.SGD(small.parameters(), lr=0.1),
        x,
        y,
        generator=_generator(5),
        batch_size=8,
    )
    assert result.steps == math.ceil(108 / 8)
    assert not torch.allclose(big[0].weight, small[0].weight, rtol=1e-3)


# --- ghost batch norm ----------------------------------------------------------------------


def _randomize_affine(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = _generator(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


def test_ghost_batchnorm1d_normalizes_each_chunk_on_its_own():
    ghost = GhostBatchNorm1d(5, ghost=4)
    _randomize_affine(ghost, 0)
    reference = nn.BatchNorm1d(5)
    reference.load_state_dict(ghost.state_dict())
    x = torch.randn(16, 5, generator=_generator(1)) * 3 + 1
    out = ghost(x)
    expected = torch.cat([reference(chunk) for chunk in x.split(4)])
    torch.testing.assert_close(out, expected)
    # running statistics: one momentum update per chunk, in order
    torch.testing.assert_close(ghost.running_mean, reference.running_mean)
    torch.testing.assert_close(ghost.running_var, reference.running_var)
    assert int(ghost.num_batches_tracked) == int(reference.num_batches_tracked) == 4
    # and it is not plain BatchNorm over the whole batch
    whole = nn.BatchNorm1d(5)
    whole.load_state_dict(reference.state_dict())
    assert not torch.allclose(out, whole(x), atol=1e-3)


def test_ghost_batchnorm1d_in_eval_is_plain_batchnorm_eval():
    ghost = GhostBatchNorm1d(5, ghost=4)
    _randomize_affine(ghost, 0)
    with torch.no_grad():  # running statistics away from their initial 0 and 1
        ghost.running_mean.copy_(torch.randn(5, generator=_generator(2)))
        ghost.running_var.copy_(torch.rand(5, generator=_generator(2)) + 0.5)
    reference = nn.BatchNorm1d(5)
    reference.load_state_dict(ghost.state_dict())
    ghost.eval()
    reference.eval()
    x = torch.randn(16, 5, generator=_generator(3))
    torch.testing.assert_close(ghost(x), reference(x))
    expected = (x - ghost.running_mean) / torch.sqrt(ghost.running_var + ghost.eps)
    torch.testing.assert_close(ghost(x), expected * ghost.weight + ghost.bias)


def test_ghost_batchnorm_folds_a_single_sample_tail():
    ghost = GhostBatchNorm1d(3, ghost=4)
    reference = nn.BatchNorm1d(3)
    x = torch.randn(9, 3, generator=_generator(4))
    out = ghost(x)
    expected = torch.cat([reference(x[:4]), reference(x[4:])])  # chunks of 4 and 4 + 1
    torch.testing.assert_close(out, expected)
    assert int(ghost.num_batches_tracked) == 2


def test_ghost_batch_at_most_ghost_samples_is_plain_batchnorm():
    ghost = GhostBatchNorm1d(3, ghost=8)
    reference = nn.BatchNorm1d(3)
    x = torch.randn(8, 3, generator=_generator(5))
    torch.testing.assert_close(ghost(x), reference(x))
    assert int(ghost.num_batches_tracked) == 1


def test_ghost_batchnorm2d_normalizes_each_chunk_on_its_own():
    ghost = GhostBatchNorm2d(3, ghost=2)
    _randomize_affine(ghost, 6)
    reference = nn.BatchNorm2d(3)
    reference.load_state_dict(ghost.state_dict())
    x = torch.randn(8, 3, 4, 4, generator=_generator(7))
    expected = torch.cat([reference(chunk) for chunk in x.split(2)])
    torch.testing.assert_close(ghost(x), expected)
    torch.testing.assert_close(ghost.running_mean, reference.running_mean)
    torch.testing.assert_close(ghost.running_var, reference.running_var)


def test_training_a_model_with_ghost_batch_norm():
    cfg = ModelConfig(name="mlp", hidden=(8,), norm="batch", ghost_batch=4)
    model = build_model(cfg, (10,), 3)
    x, y = _data(n=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_local(model, opt, x, y, generator=_generator(), batch_size=16)
    assert result.steps == 2
    bn = next(m for m in model.modules() if isinstance(m, GhostBatchNorm1d))
    assert int(bn.num_batches_tracked) == 2 * 4  # four ghost batches per step


def test_model_ghost_batch_builds_ghost_layers():
    mlp = build_model(ModelConfig(name="mlp", hidden=(8,), norm="batch", ghost_batch=4), (5,), 3)
    assert [m.ghost for m in mlp.modules() if isinstance(m, GhostBatchNorm1d)] == [4]
    cnn_cfg = ModelConfig(name="cnn", channels=(4,), norm="batch", ghost_batch=2)
    cnn = build_model(cnn_cfg, (1, 8, 8), 3)
    assert [m.ghost for m in cnn.modules() if isinstance(m, GhostBatchNorm2d)] == [2]


# --- activation checkpointing --------------------------------------------------------------


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # dropout masks: the same draws with and without checkpointing
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("raw", "shape"),
    [
        ({"name": "mlp", "hidden": (16, 8), "norm": "group", "dropout": 0.2}, (10,)),
        ({"name": "mlp", "hidden": (16,), "norm": "batch"}, (10,)),
        ({"name": "cnn1d", "channels": (4, 4), "norm": "layer", "kernel_size": 3}, (10,)),
        ({"name": "cnn", "channels": (4,), "norm": "batch", "kernel_size": 3}, (1, 6, 6)),
    ],
)
def test_checkpointing_keeps_keys_and_gradients(raw, shape):
    plain = build_model(ModelConfig(**raw), shape, 3)
    saving = build_model(ModelConfig(**raw, checkpointing=True), shape, 3)
    assert plain.state_dict().keys() == saving.state_dict().keys()
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(12, *shape, generator=_generator(8))
    y = torch.randint(0, 3, (12,), generator=_generator(9))
    expected, got = _gradients(plain, x, y), _gradients(saving, x, y)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_updates_batchnorm_running_stats_once():
    raw = {"name": "mlp", "hidden": (8,), "norm": "batch"}
    plain = build_model(ModelConfig(**raw), (5,), 3)
    saving = build_model(ModelConfig(**raw, checkpointing=True), (5,), 3)
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(16, 5, generator=_generator(10))
    y = torch.randint(0, 3, (16,), generator=_generator(11))
    _gradients(plain, x, y)
    _gradients(saving, x, y)
    _assert_same_weights(plain, saving)  # num_batches_tracked 2 vs 1, running stats differ


# --- precision -----------------------------------------------------------------------------


def test_bf16_on_cpu_trains_and_keeps_float32_weights():
    g = _generator(12)
    y = torch.randint(0, 2, (128,), generator=g)
    x = torch.randn(128, 6, generator=g) * 0.5 + (2.0 * y - 1.0).unsqueeze(1)  # two blobs
    model = _mlp(features=6, classes=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = _generator(13)
    losses = []
    for _ in range(4):
        result = train_local(model, opt, x, y, generator=gen, batch_size=16, precision="bf16")
        losses.append(result.loss)
        assert math.isfinite(result.loss) and math.isfinite(result.grad_norm_mean)
    assert losses[-1] < 0.5 * losses[0]
    assert result.accuracy > 0.95
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


def test_bf16_differs_from_fp32_but_only_slightly():
    """The autocast really runs: the weights move differently, within bf16 precision."""
    x, y = _data(n=64)
    a, b = _mlp(), _mlp()
    for model, precision in ((a, "fp32"), (b, "bf16")):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_local(model, opt, x, y, generator=_generator(14), batch_size=16, precision=precision)
    assert not torch.equal(a[0].weight, b[0].weight)
    torch.testing.assert_close(a[0].weight, b[0].weight, rtol=0.05, atol=0.01)


# --- gradient norms ------------------------------------------------------------------------


def test_grad_norms_off_reports_nan():
    x, y = _data(n=40)
    model = _mlp()
    result = _sgd_round(model, x, y, batch_size=8, grad_norms=False)
    assert result.steps == 5
    assert math.isnan(result.grad_norm_mean) and math.isnan(result.grad_norm_max)
    assert result.layer_grad_norms == {}
    assert math.isfinite(result.loss)


def test_layer_norms_match_a_hand_computation_on_one_step():
    x, y = _data(n=40)
    model = _mlp()
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    names = [n for n, _ in model.named_parameters()]
    result = _sgd_round(model, x, y, batch_size=len(x), layer_norms=True)
    assert result.steps == 1
    assert list(result.layer_grad_norms) == names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, grad in zip(names, grads, strict=True):
        assert result.layer_grad_norms[name] == pytest.approx(float(grad.norm()), rel=1e-5)
    total = math.sqrt(sum(float(g.norm()) ** 2 for g in grads))
    assert result.grad_norm_mean == pytest.approx(total, rel=1e-5)


def test_layer_norms_are_means_over_steps():
    x, y = _data(n=40)
    model = _mlp()
    reference = copy.deepcopy(model)
    result = train_local(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        x,
        y,
        generator=_generator(3),
        batch_size=20,
        layer_norms=True,
    )
    assert result.steps == 2
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    sums = dict.fromkeys(result.layer_grad_norms, 0.0)
    for index in torch.randperm(40, generator=_generator(3)).split(20):
        opt.zero_grad()
        F.cross_entropy(reference(x[index]), y[index]).backward()
        for name, p in reference.named_parameters():
            sums[name] += float(p.grad.norm())
        opt.step()
    assert result.layer_grad_norms == pytest.approx({k: v / 2 for k, v in sums.items()}, rel=1e-5)


# --- timing and prefetch -------------------------------------------------------------------


def test_timing_reports_data_and_compute_seconds():
    x, y = _data(n=64)
    model = _mlp()
    result = _sgd_round(model, x, y, batch_size=8, timing=True)
    assert result.times is not None
    assert result.times.data >= 0.0
    assert result.times.compute > 0.0
    untimed = train_local(
        _mlp(),
        torch.optim.SGD(_mlp().parameters(), lr=0.1),
        x,
        y,
        generator=_generator(),
        batch_size=8,
    )
    assert untimed.times is None


@pytest.mark.parametrize("accumulate", [1, 2])
def test_prefetch_gives_bit_identical_weights(accumulate):
    x, y = _data(n=100)
    results, models = [], []
    for prefetch in (False, True):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        options = TrainOptions(batch_size=8, epochs=2, accumulate=accumulate, prefetch=prefetch)
        results.append(train_local(model, opt, x, y, generator=_generator(6), options=options))
        models.append(model)
    for key, value in models[0].state_dict().items():
        assert torch.equal(value, models[1].state_dict()[key]), key
    assert results[0].loss == results[1].loss
    assert results[0].steps == results[1].steps == 2 * math.ceil(100 / (8 * accumulate))
    assert results[0].grad_norm_mean == results[1].grad_norm_mean


# --- LR per step ---------------------------------------------------------------------------


def test_lr_at_is_applied_per_step():
    x, y = _data(n=30, features=4)
    torch.manual_seed(3)
    model = nn.Linear(4, 3)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    schedule = {0: 0.5, 1: 0.1}

    def step(w: torch.Tensor, b: torch.Tensor, lr: float):
        w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
        gw, gb = torch.autograd.grad(F.cross_entropy(x @ w.T + b, y), [w, b])
        return (w - lr * gw).detach(), (b - lr * gb).detach()

    w1, b1 = step(w0, b0, 0.5)
    w2, b2 = step(w1, b1, 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=99.0)  # overridden by lr_at at every step
    result = train_local(
        model,
        opt,
        x,
        y,
        generator=_generator(),
        batch_size=len(x),
        epochs=2,
        lr_at=schedule.__getitem__,
    )
    assert result.steps == 2
    torch.testing.assert_close(model.weight.detach(), w2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.bias.detach(), b2, rtol=1e-5, atol=1e-7)
    assert result.lr_mean == pytest.approx(0.3)
    assert opt.param_groups[0]["lr"] == 0.1
    constant = step(*step(w0, b0, 0.1), 0.1)[0]  # the schedule mattered
    assert not torch.allclose(constant, w2, rtol=1e-3)


# --- memory format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "device", "expected"),
    [
        ("auto", "cpu", torch.channels_last),
        ("auto", "cuda", torch.contiguous_format),
        ("channels_last", "cuda", torch.channels_last),
        ("contiguous", "cpu", torch.contiguous_format),
    ],
)
def test_memory_format_auto_is_channels_last_on_the_cpu_only(wanted, device, expected, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    cfg = ModelConfig(name="cnn", memory_format=wanted)
    assert memory_format(cfg, torch.device(device)) == expected


def test_memory_format_auto_keeps_nchw_on_a_cpu_without_onednn(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    cpu = torch.device("cpu")
    assert memory_format(ModelConfig(name="cnn"), cpu) == torch.contiguous_format
    explicit = ModelConfig(name="cnn", memory_format="channels_last")
    assert memory_format(explicit, cpu) == torch.channels_last


@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_channels_last_cnn_trains_to_the_same_weights_and_records(norm):
    """Only the layout changes: a round of SGD gives the same weights (to float rounding)
    and the same records, which carry every tensor in PyTorch's default (NCHW) order."""
    g = _generator(4)
    x = torch.randn(40, 3, 12, 12, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    torch.manual_seed(6)
    nchw = build_model(ModelConfig(name="cnn", channels=(4, 8), norm=norm), (3, 12, 12), 5)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    assert nhwc[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not nchw[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    a = _sgd_round(nchw, x, y, batch_size=8)
    b = _sgd_round(nhwc, x, y, batch_size=8)
    _assert_same_weights(nchw, nhwc)
    assert b.loss == pytest.approx(a.loss, rel=1e-5)
    assert nhwc[0][0].weight.is_contiguous(memory_format=torch.channels_last)  # kept
    records = model_to_arrays(nchw), model_to_arrays(nhwc)
    for key, array in records[0].items():
        np.testing.assert_allclose(array.numpy(), records[1][key].numpy(), rtol=1e-5, atol=1e-7)
    load_arrays(nhwc, records[0])  # back into the channels_last model, in its layout
    assert nhwc[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in nchw.state_dict().items():
        assert torch.equal(nhwc.state_dict()[name], value)
