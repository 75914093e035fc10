"""Models by name, with a choice of normalization layer, or the user's own (pure torch).

Each built-in is a builder `(cfg, input_shape, num_classes) -> nn.Module` named in
`fedbatch.registry.MODELS`; a `_target_` model is its class, called with `input_shape`,
`num_classes` and the config's other keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fedbatch.config import ModelConfig
from fedbatch.registry import MODELS, TargetError, one_line


class _GhostBatchNorm:
    """Ghost batch norm (Hoffer et al. 2017): in training, normalize each virtual batch of
    `ghost` samples with its own statistics, so BatchNorm behaves the same at any B."""

    ghost: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or len(x) <= self.ghost:  # type: ignore[attr-defined]
            return super().forward(x)  # type: ignore[misc]
        normalize = super().forward  # type: ignore[misc]  # (bound here: no super() in comprehensions before 3.12)
        chunks = list(x.split(self.ghost))
        if len(chunks[-1]) < 2:  # BatchNorm cannot normalize a single sample
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return torch.cat([normalize(chunk) for chunk in chunks])


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    def __init__(self, channels: int, ghost: int) -> None:
        super().__init__(channels)
        self.ghost = ghost


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    def __init__(self, channels: int, ghost: int) -> None:
        super().__init__(channels)
        self.ghost = ghost


class Block(nn.Sequential):
    """A hidden block; with `checkpointing` its activations are recomputed in backward
    instead of stored (torch.utils.checkpoint): less memory for a large B, more time."""

    def __init__(self, *layers: nn.Module, checkpointing: bool = False) -> None:
        super().__init__(*layers)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(
                super().forward,
                x,
                use_reentrant=False,
                context_fn=lambda: (nullcontext(), _statistics_kept(self)),
            )
        return super().forward(x)


@contextmanager
def _statistics_kept(module: nn.Module) -> Iterator[None]:
    """Undo what a checkpointed block's recomputation in backward does to BatchNorm
    running statistics, so they are updated once per step, as without checkpointing."""
    buffers = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in m.buffers()]  # fmt: skip
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def _block(cfg: ModelConfig, *layers: nn.Module) -> Block:
    extra = [nn.Dropout(cfg.dropout)] if cfg.dropout > 0 else []
    return Block(*layers, *extra, checkpointing=cfg.checkpointing)


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout layer's probability (client.regularization scales it with B)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def _norm(
    kind: str, channels: int, groups: int, spatial_dims: int = 1, ghost: int | None = None
) -> nn.Module:
    """A normalization layer over `channels` features of (N, C), (N, C, L) or (N, C, H, W)."""
    if kind == "batch" and ghost is not None:
        return (
            GhostBatchNorm2d(channels, ghost)
            if spatial_dims == 2
            else GhostBatchNorm1d(channels, ghost)
        )
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


def logreg(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: one linear layer on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden in cfg.hidden:
        norm = _norm(cfg.norm, hidden, cfg.groups, ghost=cfg.ghost_batch)
        layers.append(_block(cfg, nn.Linear(width, hidden), norm, nn.ReLU()))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn1d(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 1-D CNN over the flattened input: conv → norm → ReLU → max-pool per block."""
    length = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
    width = 1
    for channels in cfg.channels:
        layers.append(
            _block(
                cfg,
                nn.Conv1d(width, channels, cfg.kernel_size, padding=cfg.kernel_size // 2),
                _norm(cfg.norm, channels, cfg.groups, ghost=cfg.ghost_batch),
                nn.ReLU(),
                nn.MaxPool1d(2, ceil_mode=True),
            )
        )
        width = channels
        length = (length + 1) // 2
    layers += [nn.Flatten(), nn.Linear(width * length, num_classes)]
    return nn.Sequential(*layers)


def cnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 2-D CNN for (C, H, W) images: conv → norm → ReLU → 2×2 max-pool per block."""
    if len(input_shape) != 3:
        raise ValueError(f"model=cnn needs (C, H, W) images, got input shape {input_shape}")
    width, height, breadth = input_shape
    layers: list[nn.Module] = []
    for channels in cfg.channels:
        layers.append(
            _block(
                cfg,
                nn.Conv2d(width, channels, cfg.kernel_size, padding=cfg.kernel_size // 2),
                _norm(cfg.norm, channels, cfg.groups, spatial_dims=2, ghost=cfg.ghost_batch),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            )
        )
        width, height, breadth = channels, (height + 1) // 2, (breadth + 1) // 2
    layers += [nn.Flatten(), nn.Linear(width * height * breadth, num_classes)]
    return nn.Sequential(*layers)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the configured model for inputs of `input_shape` (without the batch axis)."""
    if cfg.target is None:
        return MODELS.resolve(cfg.name)(cfg, input_shape, num_classes)
    model_class = MODELS.target(cfg.target)
    try:
        return model_class(input_shape=input_shape, num_classes=num_classes, **cfg.kwargs)
    except Exception as error:  # the user's constructor: one line, whatever it raised
        given = ", ".join(f"{k}={v!r}" for k, v in cfg.kwargs.items())
        called = f"input_shape={input_shape}, num_classes={num_classes}" + (given and ", " + given)
        problem = f"cannot be built with {called}: {one_line(error)}"
        raise TargetError(MODELS.target_key, cfg.target, problem) from None


@torch.no_grad()
def check_logits(cfg: ModelConfig, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """One line unless the `_target_` model maps the batch `x` to (len(x), num_classes)
    logits, its contract: checked on a couple of samples before any work."""
    assert cfg.target is not None
    training = model.training
    model.eval()
    try:
        shape = tuple(model(x).shape)
    except Exception as error:
        problem = f"fails on inputs of shape {tuple(x.shape)}: {one_line(error)}"
        raise TargetError(MODELS.target_key, cfg.target, problem) from None
    finally:
        model.train(training)
    if shape != (len(x), num_classes):
        allowed = f"({len(x)}, {num_classes}), logits for num_classes={num_classes}"
        problem = f"returns shape {shape} for inputs of shape {tuple(x.shape)}: allowed {allowed}"
        raise TargetError(MODELS.target_key, cfg.target, problem)


def memory_format(cfg: ModelConfig, device: torch.device) -> torch.memory_format:
    """The layout of the model's 2-D convolution weights (other tensors keep theirs).

    `auto` picks channels_last on a CPU with oneDNN (PyTorch's x86 and ARM wheels), where a
    training step of fedbatch's CNNs took 0.71–0.98× the NCHW time here (2-core x86, one
    thread, B from 1 to 256, no/batch/group norm: `simulations/bench/memory_format.py`);
    elsewhere it keeps PyTorch's default. With channels_last weights a convolution takes
    NCHW inputs as they are and computes in NHWC.
    """
    wanted = cfg.memory_format
    onednn_cpu = device.type == "cpu" and torch.backends.mkldnn.is_available()
    if wanted == "channels_last" or (wanted == "auto" and onednn_cpu):
        return torch.channels_last
    return torch.contiguous_format


def norm_state_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the BatchNorm layers: their affine weights and running statistics."""
    return [
        f"{name}.{key}"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for key in module.state_dict()
    ]
