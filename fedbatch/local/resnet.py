"""A small ResNet for (C, H, W) images: the CIFAR ResNets of He et al. (2016), the model of
the batch-size papers (Goyal et al. 2017, Shallue et al. 2019), at laptop scale.

A 3×3 stem convolution, then one stage per `model.channels` entry (the first at full
resolution, each later one halving it with a stride-2 first block), each of
`model.blocks` basic blocks (conv → norm → ReLU → conv → norm, plus the shortcut, then
ReLU), then global average pooling and a linear layer. With channels [16, 32, 64],
blocks=1 is ResNet-8 and blocks=3 ResNet-20. The shortcut is the identity, or a 1×1
convolution and norm where the width or resolution changes (He et al.'s option B).
`model.norm` picks the normalization as for the other models (BatchNorm, GroupNorm with
`model.groups`, layer norm or none; ghost batches with `model.ghost_batch`).
"""

from __future__ import annotations

import torch
from torch import nn

from fedbatch.config import ModelConfig
from fedbatch.local.models import Block, _norm


def _conv(cfg: ModelConfig, width: int, channels: int, stride: int = 1) -> nn.Conv2d:
    # A bias before a normalization layer is subtracted away again.
    bias = cfg.norm == "none"
    kernel = cfg.kernel_size
    return nn.Conv2d(width, channels, kernel, stride, padding=kernel // 2, bias=bias)


def _norm2d(cfg: ModelConfig, channels: int) -> nn.Module:
    return _norm(cfg.norm, channels, cfg.groups, spatial_dims=2, ghost=cfg.ghost_batch)


class BasicBlock(nn.Module):
    """relu(body(x) + shortcut(x)), then dropout when `model.dropout` > 0; the body is a
    `Block`, so `model.checkpointing` recomputes its activations in backward."""

    def __init__(self, cfg: ModelConfig, width: int, channels: int, stride: int) -> None:
        super().__init__()
        self.body = Block(
            _conv(cfg, width, channels, stride),
            _norm2d(cfg, channels),
            nn.ReLU(),
            _conv(cfg, channels, channels),
            _norm2d(cfg, channels),
            checkpointing=cfg.checkpointing,
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or width != channels:
            projection = nn.Conv2d(width, channels, 1, stride, bias=cfg.norm == "none")
            self.shortcut = nn.Sequential(projection, _norm2d(cfg, channels))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.body(x) + self.shortcut(x)))


def resnet(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The ResNet of `cfg` for (C, H, W) inputs of `input_shape`."""
    if len(input_shape) != 3:
        raise ValueError(f"model=resnet needs (C, H, W) images, got input shape {input_shape}")
    first = cfg.channels[0]
    layers: list[nn.Module] = [_conv(cfg, input_shape[0], first), _norm2d(cfg, first), nn.ReLU()]
    width = first
    for stage, channels in enumerate(cfg.channels):
        for block in range(cfg.blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(cfg, width, channels, stride))
            width = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)
