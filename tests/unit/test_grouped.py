"""Clients' CNNs run as one grouped network give each client's own network's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedbatch.config import ModelConfig
from fedbatch.local.grouped import client_chunks, groupable, grouped_logits
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
    mlp = build_model(ModelConfig(name="mlp", hidden=[8]), (6,), 3)  # no convolution
    batch_norm = build_model(ModelConfig(name="cnn", channels=[4], norm="batch"), (1, 6, 6), 3)
    dropout = build_model(ModelConfig(name="cnn", channels=[4], dropout=0.1), (1, 6, 6), 3)
    residual = build_model(ModelConfig(name="resnet", channels=[4], norm="group"), (1, 6, 6), 3)
    assert not any(groupable(m) for m in (mlp, batch_norm, dropout, residual))
    assert groupable(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)))


def test_client_chunks_hold_a_few_clients_on_the_cpu_and_all_on_a_gpu():
    cpu = [(s.start, s.stop) for s in client_chunks(20, 10, torch.device("cpu"))]
    assert cpu == [(0, 6), (6, 12), (12, 18), (18, 20)]  # 64 // 10 = 6 clients a pass
    assert list(client_chunks(20, 10, torch.device("cuda"))) == [slice(0, 20)]
