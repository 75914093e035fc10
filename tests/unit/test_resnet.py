"""model=resnet: He et al.'s CIFAR ResNets, sized and wired as the paper's arithmetic says."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedbatch.config import ConfigError, build_config
from fedbatch.config.compose import OverrideError, check_overrides
from fedbatch.local.models import GhostBatchNorm2d, build_model, norm_state_keys, set_dropout
from fedbatch.local.resnet import BasicBlock
from fedbatch.sizes import check_model_fits, parameter_count
from tests.conftest import tiny_raw

IMAGES = {"name": "images", "num_samples": 200}


def _config(**model):
    section = {"name": "resnet", "channels": [16, 32, 64], "kernel_size": 3} | model
    return build_config(tiny_raw() | {"data": IMAGES, "model": section})


def _resnet(**model) -> nn.Module:
    return build_model(_config(**model).model, (3, 32, 32), 10)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_block(w_in: int, w: int) -> int:
    """Two 3×3 convolutions and two norms' scale and shift, no biases."""
    return 9 * w_in * w + 9 * w * w + 4 * w


def test_resnet8_and_resnet20_have_the_papers_parameter_counts():
    stem = 9 * 3 * 16 + 2 * 16
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1×1 conv and norm, stages 2, 3
    first_blocks = _conv_block(16, 16) + _conv_block(16, 32) + _conv_block(32, 64)
    head = 64 * 10 + 10
    resnet8 = stem + first_blocks + projections + head
    assert resnet8 == 78_042
    assert _count(_resnet(norm="batch")) == resnet8
    # ResNet-20: two more w→w blocks per stage; He et al. give 0.27M parameters.
    more = 2 * sum(_conv_block(w, w) for w in (16, 32, 64))
    assert _count(_resnet(norm="batch", blocks=3)) == resnet8 + more == 272_474
    # Without a norm the convolutions carry biases instead of the norms' parameters.
    norms = 2 * (16 + 2 * 16 + (2 * 32 + 32) + (2 * 64 + 64))
    biases = 16 + 2 * 16 + (2 * 32 + 32) + (2 * 64 + 64)
    assert _count(_resnet(norm="none")) == resnet8 - norms + biases


def test_each_later_stage_halves_the_image_and_the_head_pools_it():
    model = _resnet(norm="group")
    shapes = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, out, name=name: shapes.update({name: out.shape}))
    assert model(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    blocks = [shapes[name] for name, m in model.named_children() if isinstance(m, BasicBlock)]
    assert [tuple(s[1:]) for s in blocks] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_a_block_adds_its_input_to_its_body():
    torch.manual_seed(0)
    cfg = _config(norm="none").model
    block = BasicBlock(cfg, 4, 4, stride=1)
    x = torch.randn(2, 4, 6, 6)
    body = block.body(x)
    assert torch.allclose(block(x), torch.relu(body + x))
    with torch.no_grad():  # a silent body leaves relu(x): the identity shortcut
        block.body[3].weight.zero_()
        block.body[3].bias.zero_()
    assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize(
    ("model", "layer", "groups"),
    [
        ({"norm": "batch"}, nn.BatchNorm2d, None),
        ({"norm": "batch", "ghost_batch": 4}, GhostBatchNorm2d, None),
        ({"norm": "group", "groups": 8}, nn.GroupNorm, {8}),
        ({"norm": "layer"}, nn.GroupNorm, {1}),
    ],
)
def test_model_norm_picks_every_normalization_layer(model, layer, groups):
    norms = [m for m in _resnet(**model).modules() if isinstance(m, nn.GroupNorm | nn.BatchNorm2d)]
    assert len(norms) == 1 + 2 * 3 + 2  # stem, two per block, the two projections
    assert all(type(m) is layer for m in norms)
    if groups is not None:
        assert {m.num_groups for m in norms} == groups


def test_fedbn_keeps_every_batchnorm_and_dropout_follows_each_block():
    model = _resnet(norm="batch", dropout=0.2)
    # weight, bias, running mean, running var, batches tracked: per BatchNorm layer
    assert len(norm_state_keys(model)) == 5 * 9
    set_dropout(model, 0.4)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.4] * 3


def test_checkpointing_gives_the_same_gradients_and_statistics():
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    grads, stats = [], []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = _resnet(norm="batch", channels=[4, 8], checkpointing=checkpointing)
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
        stats.append([b for name, b in model.named_buffers() if "running" in name])
    for plain, recomputed in zip(*grads, strict=True):
        assert torch.allclose(plain, recomputed, atol=1e-6)
    for plain, recomputed in zip(*stats, strict=True):
        assert torch.allclose(plain, recomputed)


def test_its_size_is_known_on_the_meta_device_and_a_huge_one_is_refused():
    cfg = _config(norm="group")
    assert parameter_count(cfg, (3, 32, 32), 10) == _count(_resnet(norm="group"))
    huge = _config(channels=[16, 100_000, 100_000])
    with pytest.raises(ConfigError) as info:
        check_model_fits(huge, (3, 32, 32), 10, memory=2**30)
    assert str(info.value).startswith("model.channels=[16, 100000, 100000] is invalid")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            tiny_raw() | {"model": {"name": "resnet"}},
            "model='resnet' is invalid: allowed one of logreg, mlp, cnn1d with data=digits "
            "(resnet needs data=images)",
        ),
        (
            tiny_raw() | {"data": IMAGES, "model": {"name": "resnet", "kernel_size": 4}},
            "model.kernel_size=4 is invalid: allowed an odd number with model=resnet",
        ),
    ],
)
def test_what_a_resnet_cannot_take_is_one_line(raw, message):
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_command_line_refuses_a_key_the_resnet_ignores():
    check_overrides(["data=images", "model=resnet", "model.blocks=3", "model.norm=group"])
    with pytest.raises(OverrideError) as info:
        check_overrides(["data=images", "model=resnet", "model.hidden=[8]"])
    assert str(info.value).startswith("model.hidden is not a key of model=resnet: allowed blocks")
