"""Per-step training measurements, kept off the hot path (pure torch, no Flower).

Loss and accuracy are per sample, or for text per real token (padding excluded). Each
step only appends tensors it already has (the loss, the logits) and, when gradient
norms are on, one fused `_foreach_norm` over the gradients. Reductions run every
`MAX_STEPS` steps (or when the held logits grow large) and never sync the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fedbatch.data.text import IGNORE_INDEX


@dataclass(frozen=True)
class TallySummary:
    loss: float  # mean training loss per sample
    accuracy: float
    grad_norm_mean: float  # L2 norm of the whole gradient, mean and max over steps
    grad_norm_max: float
    layer_grad_norms: list[float]  # mean norm per parameter tensor (when asked for)
    prequential_loss: float = float("nan")  # on new rows, before training on them
    prequential_accuracy: float = float("nan")


class StepTally:
    MAX_STEPS, MAX_LOGITS = 64, 1 << 20

    def __init__(self, device: torch.device, grad_norms: bool, layer_norms: bool) -> None:
        self.grad_norms, self.layer_norms = grad_norms or layer_norms, layer_norms
        self.device = device
        # Totals over flushed steps; None until the first flush assigns them: adding a
        # zero would change nothing but a -0.0, which `_value` turns into 0.0 instead.
        self.loss_sum: torch.Tensor | None = None
        self.correct: torch.Tensor | None = None
        self.norm_sum: torch.Tensor | None = None
        self.norm_max: torch.Tensor | None = None
        self.layer_sum: torch.Tensor | None = None
        self.samples = self.steps = self.held = 0
        self.tokens: torch.Tensor | int = 0  # text: real tokens (targets not -100)
        self._batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._norms: list[torch.Tensor] = []  # per step, one norm per gradient tensor
        self._norm_rows = 0  # steps in `_norms`
        self._zero: torch.Tensor | None = None
        self.prequential_samples = 0
        self._prequential: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.prequential_loss: torch.Tensor | None = None
        self.prequential_correct: torch.Tensor | None = None

    def add_batch(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """A (micro-)batch's mean loss and logits; kept as they are and reduced later
        without gradient tracking, so no detach or reduction runs per step."""
        self._batches.append((loss, logits, targets))
        self.samples += targets.shape[0]  # not len(): Tensor.__len__ is a Python call
        self.held += logits.numel()

    def add_prequential(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Rows seen for the first time: the model's predictions before it trains on them."""
        self._prequential.append((logits, targets))
        self.prequential_samples += len(targets)

    def add_step(self, params: Sequence[torch.Tensor]) -> None:
        """One optimizer step; records its gradients' norms when they are measured."""
        self.steps += 1
        if self.grad_norms:
            grads = [p.grad for p in params]
            try:  # no scan for missing gradients: the norm refuses a None
                norms = torch._foreach_norm(grads)
            except TypeError:  # a parameter without a gradient this step: its norm is 0
                norms = torch._foreach_norm([self.zero() if g is None else g for g in grads])
            self._norms += norms
            self._norm_rows += 1
        if len(self._batches) >= self.MAX_STEPS or self.held >= self.MAX_LOGITS:
            self.flush()

    def zero(self) -> torch.Tensor:
        """The norm of a parameter without a gradient this step."""
        if self._zero is None:
            self._zero = torch.zeros((), device=self.device)
        return self._zero

    @torch.no_grad()
    def flush(self) -> None:
        if self._prequential:
            logits, targets = (torch.cat(parts) for parts in zip(*self._prequential, strict=True))
            loss = F.cross_entropy(logits.float(), targets, reduction="sum")
            self.prequential_loss = _plus(self.prequential_loss, loss)
            correct = (logits.argmax(dim=1) == targets).sum()
            self.prequential_correct = _plus(self.prequential_correct, correct)
            self._prequential = []
        if self._batches and self._batches[0][2].ndim == 2:
            self._flush_tokens()
        if self._batches:
            losses, logits, targets = zip(*self._batches, strict=True)
            size = targets[0].shape[0]
            batch_losses = torch.stack(losses).float()
            if all(t.shape[0] == size for t in targets):  # the usual case: no size tensor
                loss = batch_losses.sum() * size
            else:
                sizes = [t.shape[0] for t in targets]
                weights = torch.tensor(sizes, dtype=torch.float32, device=self.device)
                loss = (batch_losses * weights).sum()
            self.loss_sum = _plus(self.loss_sum, loss)
            predictions = torch.cat(logits).argmax(dim=1)
            self.correct = _plus(self.correct, (predictions == torch.cat(targets)).sum())
            self._batches, self.held = [], 0
        if self._norms:
            rows = self._norm_rows
            per_tensor = torch.stack(self._norms).view(rows, -1).float()
            per_step = per_tensor.pow(2).sum(dim=1).sqrt()
            self.norm_sum = _plus(self.norm_sum, per_step.sum())
            step_max = per_step.max()
            self.norm_max = step_max if self.norm_max is None else self.norm_max.maximum(step_max)
            if self.layer_norms:
                layers = per_tensor.sum(dim=0)
                self.layer_sum = layers if self.layer_sum is None else self.layer_sum + layers
            self._norms, self._norm_rows = [], 0

    def _flush_tokens(self) -> None:
        """Text: each batch's mean loss is over its real tokens, and so is accuracy."""
        for loss, logits, targets in self._batches:
            real = (targets != IGNORE_INDEX).sum()
            self.loss_sum = _plus(self.loss_sum, loss.float() * real)
            correct = (logits.argmax(dim=1) == targets).sum()  # -100 never matches
            self.correct = _plus(self.correct, correct)
            self.tokens = self.tokens + real
        self._batches, self.held = [], 0

    def summary(self) -> TallySummary:
        self.flush()
        nan = float("nan")
        if not self.samples:
            return TallySummary(nan, nan, nan, nan, [])
        measured = self.grad_norms and self.steps > 0
        fresh = self.prequential_samples
        layers = (self.layer_sum / self.steps).tolist() if self.layer_sum is not None else []
        units = self.samples if isinstance(self.tokens, int) else float(self.tokens)
        return TallySummary(
            loss=_value(self.loss_sum) / units,
            accuracy=_value(self.correct) / units,
            grad_norm_mean=_value(self.norm_sum) / self.steps if measured else nan,
            grad_norm_max=_value(self.norm_max) if measured else nan,
            layer_grad_norms=layers,
            prequential_loss=_value(self.prequential_loss) / fresh if fresh else nan,
            prequential_accuracy=_value(self.prequential_correct) / fresh if fresh else nan,
        )


def _plus(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """`total + value`, where no total yet is a zero (and 0 + value is value)."""
    return value if total is None else total + value


def _value(total: torch.Tensor | None) -> float:
    """The total as a float; + 0.0 turns a -0.0 into 0.0, as adding it to a zero did."""
    return 0.0 if total is None else float(total) + 0.0
