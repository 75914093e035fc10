"""Clients' CNNs run as one grouped network give each client's own network's outputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import torch
from torch import nn

from fedbatch.config import ModelConfig
from fedbatch.local.grouped import Params, client_chunks, groupable, grouped_logits
from fedbatch.local.models import build_model

CNNS = {
    "cnn-group-norm": ("cnn", "group", (3, 9, 9)),
    "cnn-channels-last": ("cnn", "none", (2, 8, 8)),
    "cnn1d": ("cnn1d", "layer", (12,)),
}


@pytest.mark.parametrize("name, norm, shape", CNNS.values(), ids=CNNS.keys())
def test_grouped_logits_are_each_clients_own(name, norm, shape):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, channels=[4, 6], kernel_size=3, norm=norm, groups=2)
    models = [build_model(cfg, shape, 5) for _ in range(3)]
    if "channels-last" in name:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    assert groupable(models[0])
    x = torch.randn(3, 7, *shape)
    params = {key: torch.stack([dict(m.named_parameters())[key] for m in models])
              for key, _ in models[0].named_parameters()}  # fmt: skip
    logits = grouped_logits(models[0], params, x)
    assert logits.shape == (3, 7, 5)
    for c, model in enumerate(models):
        torch.testing.assert_close(logits[c], model(x[c]), rtol=1e-5, atol=1e-6)


def test_models_outside_the_grouped_layers_are_not_groupable():
    image = (1, 6, 6)
    mlp = build_model(ModelConfig(name="mlp", hidden=[8]), (6,), 3)  # vmap is as fast
    ghost = build_model(
        ModelConfig(name="cnn", channels=[4], norm="batch", ghost_batch=2), image, 3
    )
    dropout = build_model(ModelConfig(name="cnn", channels=[4], dropout=0.1), image, 3)
    residual = build_model(ModelConfig(name="resnet", channels=[4], norm="group"), image, 3)
    assert not any(groupable(m) for m in (mlp, ghost, dropout, residual))
    assert groupable(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)))
    assert groupable(build_model(ModelConfig(name="mlp", hidden=[8], norm="batch"), (6,), 3))


@pytest.mark.parametrize("name, shape", [("cnn", (2, 6, 6)), ("cnn1d", (8,)), ("mlp", (6,))])
def test_batch_norm_is_each_clients_own_over_its_real_rows(name, shape):
    """Client 0 has 5 real rows of 7, client 1 all 7, client 2 none (an idle step): each
    real row's logits and each running statistic are those of the client's own model in
    training mode on its real rows; the idle client's statistics stay."""
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, channels=[4], hidden=[8], kernel_size=3, norm="batch")
    models = [build_model(cfg, shape, 5).train() for _ in range(3)]
    with torch.no_grad():
        for model in models:
            for module in model.modules():
                if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                    module.weight.uniform_(0.5, 1.5), module.running_var.uniform_(0.5, 2)

    def stack(named: Callable[[nn.Module], Iterable[tuple[str, torch.Tensor]]]) -> Params:
        first = dict(named(models[0]))
        return {key: torch.stack([dict(named(m))[key] for m in models]) for key in first}

    params, buffers = stack(nn.Module.named_parameters), stack(nn.Module.named_buffers)
    buffers = {key: value.clone() for key, value in buffers.items()}
    x = torch.randn(3, 7, *shape)
    real = torch.tensor([[True] * 5 + [False] * 2, [True] * 7, [False] * 7])
    logits = grouped_logits(models[0], params, x, buffers, real)
    for c in (0, 1):
        rows = int(real[c].sum())
        torch.testing.assert_close(logits[c, :rows], models[c](x[c, :rows]), rtol=1e-5, atol=1e-5)
    for key, value in buffers.items():
        for c, model in enumerate(models):
            expected = dict(model.named_buffers())[key]  # client 2's never ran: unchanged
            torch.testing.assert_close(value[c], expected, rtol=1e-5, atol=1e-6)
    tracked = next(key for key in buffers if key.endswith("num_batches_tracked"))
    assert buffers[tracked].tolist() == [1, 1, 0]


def test_client_chunks_hold_a_few_clients_on_the_cpu_and_all_on_a_gpu():
    cpu = [(s.start, s.stop) for s in client_chunks(20, 10, torch.device("cpu"))]
    assert cpu == [(0, 6), (6, 12), (12, 18), (18, 20)]  # 64 // 10 = 6 clients a pass
    assert list(client_chunks(20, 10, torch.device("cuda"))) == [slice(0, 20)]
