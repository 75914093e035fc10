"""What one training step costs at batch size B: time and memory (pure torch, no Flower).

Memory is counted where it is decided rather than read from the allocator, so it is the
same on every machine and exact on CPU, where torch keeps no allocation statistics:
weights + gradients + optimizer state + the activations autograd saves for backward (the
part that grows with B, and that mixed precision and checkpointing shrink). On CUDA the
allocator's peak is reported beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.local.trainer import autocast_context


@dataclass(frozen=True)
class StepProfile:
    batch_size: int
    seconds: float  # fastest wall time of a step (forward, backward, optimizer step)
    activation_bytes: int  # saved for backward during the forward pass
    state_bytes: int  # weights, gradients and optimizer state
    cuda_peak_bytes: int | None  # the allocator's peak on CUDA

    @property
    def peak_bytes(self) -> int:
        return self.activation_bytes + self.state_bytes


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights, their gradients and the optimizer's per-parameter state."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(2 * _tensor_bytes(p) for p in params)  # weight + gradient
    for state in optimizer.state.values():
        total += sum(_tensor_bytes(v) for v in state.values() if torch.is_tensor(v))
    return total + sum(_tensor_bytes(b) for b in model.buffers())


def activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> int:
    """Bytes autograd saves for backward in one forward pass (each storage counted once).

    With checkpointing only block inputs are saved during the forward pass; the
    recomputation in backward holds one block's activations at a time, not counted here.
    """
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and not isinstance(tensor, nn.Parameter):
            seen.add(key)
            total += storage.nbytes()
        return tensor

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen |= params  # weights are counted in the state, not as activations
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        autocast_context(x.device, precision),
    ):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def profile_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    precision: str = "fp32",
    repeats: int = 20,
    warmup: int = 3,
) -> StepProfile:
    """Time `repeats` steps on (x, y) (one batch of len(x)), keep the fastest, and count
    their memory."""
    model.train()
    cuda = x.device.type == "cuda"
    autocast = autocast_context(x.device, precision)
    if cuda:
        torch.cuda.reset_peak_memory_stats(x.device)
    times = []
    for i in range(warmup + repeats):
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(x.device) if cuda else None
    return StepProfile(
        batch_size=len(x),
        seconds=min(times),  # the least disturbed: this machine kind switches speed
        activation_bytes=activation_bytes(model, x, y, precision),
        state_bytes=state_bytes(model, optimizer),
        cuda_peak_bytes=peak,
    )


def largest_batch_within(profiles: list[StepProfile], budget_bytes: int) -> int | None:
    """The largest profiled B whose memory fits the budget (None if none fits)."""
    fitting = [p.batch_size for p in profiles if p.peak_bytes <= budget_bytes]
    return max(fitting) if fitting else None
