"""The per-step tally's totals, against sums worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fedbatch.local.tally import StepTally

CPU = torch.device("cpu")


def _steps(tally: StepTally) -> None:
    """Three steps of batches of 2, 2 and 1 rows over two parameters; the second
    parameter has no gradient in the last step."""
    weight = torch.nn.Parameter(torch.zeros(2))
    bias = torch.nn.Parameter(torch.zeros(1))
    steps = [
        # loss, logits (rows × 2 classes), targets, weight grad, bias grad
        (0.5, [[2.0, 1.0], [0.0, 1.0]], [0, 0], [3.0, 4.0], [12.0]),  # 1 correct, ‖g‖ 13
        (1.0, [[1.0, 0.0], [0.0, 1.0]], [0, 1], [0.0, 0.0], [2.0]),  # 2 correct, ‖g‖ 2
        (2.0, [[0.0, 5.0]], [0], [6.0, 8.0], None),  # 0 correct, ‖g‖ 10
    ]
    for loss, logits, targets, weight_grad, bias_grad in steps:
        tally.add_batch(torch.tensor(loss), torch.tensor(logits), torch.tensor(targets))
        weight.grad = torch.tensor(weight_grad)
        bias.grad = None if bias_grad is None else torch.tensor(bias_grad)
        tally.add_step([weight, bias])


def test_totals_weigh_each_batch_by_its_rows_and_norms_by_step():
    tally = StepTally(CPU, grad_norms=True, layer_norms=True)
    _steps(tally)
    summary = tally.summary()
    assert summary.loss == pytest.approx((2 * 0.5 + 2 * 1.0 + 1 * 2.0) / 5)
    assert summary.accuracy == pytest.approx(3 / 5)
    assert summary.grad_norm_mean == pytest.approx((13 + 2 + 10) / 3)
    assert summary.grad_norm_max == pytest.approx(13)
    # Per tensor: weight norms 5, 0, 10; bias norms 12, 2, 0 (no gradient counts as 0).
    assert summary.layer_grad_norms == pytest.approx([15 / 3, 14 / 3])


def test_flushing_every_step_gives_the_same_totals(monkeypatch):
    whole = StepTally(CPU, grad_norms=True, layer_norms=False)
    _steps(whole)
    monkeypatch.setattr(StepTally, "MAX_STEPS", 1)
    chunked = StepTally(CPU, grad_norms=True, layer_norms=False)
    _steps(chunked)
    fields = ("loss", "accuracy", "grad_norm_mean", "grad_norm_max")
    expected = [getattr(whole.summary(), f) for f in fields]
    assert [getattr(chunked.summary(), f) for f in fields] == pytest.approx(expected)
    assert expected == pytest.approx([1.0, 3 / 5, 25 / 3, 13])


def test_a_negative_zero_loss_reads_as_zero():
    tally = StepTally(CPU, grad_norms=False, layer_norms=False)
    tally.add_batch(torch.tensor(-0.0), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    tally.add_step([])
    summary = tally.summary()
    assert summary.loss == 0.0 and math.copysign(1.0, summary.loss) == 1.0
    assert summary.accuracy == 1.0 and math.isnan(summary.grad_norm_mean)
