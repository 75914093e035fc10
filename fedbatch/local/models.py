"""Models by name, with a choice of normalization layer (pure torch, no Flower)."""

from __future__ import annotations

from torch import nn

from fedbatch.config import ModelConfig


def _norm(kind: str, channels: int, groups: int, spatial_dims: int = 1) -> nn.Module:
    """A normalization layer over `channels` features of (N, C), (N, C, L) or (N, C, H, W)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(_divisor_at_most(channels, groups), channels)
    if kind == "layer":
        # GroupNorm with one group normalizes over all of a sample's features,
        # i.e. LayerNorm, for both dense and convolutional activations.
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _divisor_at_most(channels: int, groups: int) -> int:
    """The largest group count <= `groups` that divides `channels` (GroupNorm needs one)."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def _mlp(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), _norm(cfg.norm, hidden, cfg.groups), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn1d(cfg: ModelConfig, length: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
    width = 1
    for channels in cfg.channels:
        layers += [
            nn.Conv1d(width, channels, cfg.kernel_size, padding=cfg.kernel_size // 2),
            _norm(cfg.norm, channels, cfg.groups),
            nn.ReLU(),
            nn.MaxPool1d(2, ceil_mode=True),
        ]
        width = channels
        length = (length + 1) // 2
    layers += [nn.Flatten(), nn.Linear(width * length, num_classes)]
    return nn.Sequential(*layers)


def _cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 2-D CNN for (C, H, W) images: conv → norm → ReLU → 2×2 max-pool per block."""
    width, height, breadth = input_shape
    layers: list[nn.Module] = []
    for channels in cfg.channels:
        layers += [
            nn.Conv2d(width, channels, cfg.kernel_size, padding=cfg.kernel_size // 2),
            _norm(cfg.norm, channels, cfg.groups, spatial_dims=2),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        width, height, breadth = channels, (height + 1) // 2, (breadth + 1) // 2
    layers += [nn.Flatten(), nn.Linear(width * height * breadth, num_classes)]
    return nn.Sequential(*layers)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the configured model for inputs of `input_shape` (without the batch axis)."""
    features = 1
    for size in input_shape:
        features *= size
    if cfg.name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    if cfg.name == "mlp":
        return _mlp(cfg, features, num_classes)
    if cfg.name == "cnn1d":
        return _cnn1d(cfg, features, num_classes)
    if cfg.name == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"model=cnn needs (C, H, W) images, got input shape {input_shape}")
        return _cnn(cfg, input_shape, num_classes)
    raise ValueError(f"unknown model {cfg.name!r}")
