"""Step profiles: memory counted where it is decided, so the numbers are exact."""

from __future__ import annotations

import torch
from torch import nn

from fedbatch.config import ModelConfig
from fedbatch.local.models import build_model
from fedbatch.local.profile import (
    StepProfile,
    activation_bytes,
    largest_batch_within,
    profile_step,
    state_bytes,
)

FLOAT = 4


def _data(batch: int, features: int = 10, classes: int = 3):
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, features, generator=g), torch.randint(
        0, classes, (batch,), generator=g
    )


def test_state_counts_weights_gradients_and_momentum_buffers():
    model = nn.Linear(10, 3)  # 33 parameters
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert state_bytes(model, optimizer) == 2 * 33 * FLOAT  # no momentum buffer before a step
    x, y = _data(8)
    profile = profile_step(model, optimizer, x, y, repeats=1, warmup=0)
    assert profile.state_bytes == 3 * 33 * FLOAT  # + one momentum buffer per parameter


def test_activation_bytes_of_a_linear_relu_network_are_the_saved_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    x, y = _data(4)
    counted = activation_bytes(model, x, y, "fp32")
    # Saved for backward: the input (4×10), ReLU's output (4×20, also the second linear's
    # input: one storage), the log-softmax output (4×3), the targets (4 int64) and the
    # loss's total weight (a float scalar). The weights are state, not activations.
    assert counted == (4 * 10 + 4 * 20 + 4 * 3) * FLOAT + 4 * 8 + FLOAT


def test_activations_grow_linearly_with_the_batch_and_checkpointing_shrinks_them():
    def counted(batch: int, checkpointing: bool) -> int:
        torch.manual_seed(0)
        # Conv blocks save several tensors each (conv input, norm, ReLU, pool indices);
        # checkpointed, only each block's input is kept.
        cfg = ModelConfig(name="cnn1d", norm="layer", checkpointing=checkpointing)
        x, y = _data(batch, features=32)
        return activation_bytes(build_model(cfg, (32,), 3), x, y, "fp32")

    # Exactly linear in B (plus the loss's scalar).
    assert counted(64, False) - counted(32, False) == 2 * (counted(32, False) - counted(16, False))
    assert counted(64, True) < counted(64, False) / 2


def test_largest_batch_within_a_budget():
    profiles = [StepProfile(b, 0.001, 100 * b, 1000, None) for b in (1, 8, 64)]
    assert largest_batch_within(profiles, 1000 + 100 * 8) == 8
    assert largest_batch_within(profiles, 10**9) == 64
    assert largest_batch_within(profiles, 500) is None


def test_bf16_autocast_saves_fewer_activation_bytes_on_a_wide_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    x, y = _data(128, features=256, classes=10)
    assert activation_bytes(model, x, y, "bf16") < activation_bytes(model, x, y, "fp32")
