"""Text metrics across clients: loss, accuracy and padding over all real tokens, whatever
the clients' sequence lengths, against a hand computation over every token."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from flwr.app import MetricRecord, RecordDict
from torch import nn

from fedbatch.data.text import encode_texts, vocabulary
from fedbatch.federated.client_metrics import token_metrics
from fedbatch.federated.records import aggregate_client_metrics
from fedbatch.local.trainer import train_local

# a bigram table: logits after input id i are TABLE[i] (ids: PAD, BOUNDARY, a, b)
TABLE = [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0], [0.0, 1.0, 0.5, 2.0], [0.0, 0.5, 2.0, 0.0]]
SHORT = ["b", "bb", "aa"]  # client 1: three short sequences the table predicts badly
LONG = ["abababab", "babababa"]  # client 2: two long ones it predicts well
VOCAB = vocabulary(SHORT + LONG)  # a=2, b=3


class Bigram(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(TABLE))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens].transpose(1, 2)


def _reply(texts: list[str]) -> RecordDict:
    """A text client's training reply after one batch of all its rows, at lr 0 (the model
    stays the table, so every token's loss is known)."""
    x, y, _ = encode_texts(texts, max_length=20, vocab=VOCAB)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = Bigram()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_local(
        model, optimizer, x, y, generator=torch.Generator().manual_seed(0), batch_size=len(x)
    )
    values = {"num-examples": len(x), "train_loss": result.loss,
              "train_accuracy": result.accuracy, "examples_seen": result.examples_seen,
              "steps": result.steps} | token_metrics(result)  # fmt: skip
    return RecordDict({"metrics": MetricRecord(values)})


def _pairs(text: str) -> list[tuple[int, int]]:
    """(input, target) of each real token: BOUNDARY → first, ..., last → BOUNDARY."""
    ids = [1, *(VOCAB[c] for c in text), 1]
    return list(itertools.pairwise(ids))


def test_train_metrics_weigh_by_real_tokens_across_clients():
    out = aggregate_client_metrics([_reply(SHORT), _reply(LONG)], "num-examples")
    pairs = [p for text in SHORT + LONG for p in _pairs(text)]
    assert len(pairs) == 2 + 3 + 3 + 9 + 9

    def nll(i: int, t: int) -> float:
        return math.log(sum(math.exp(v) for v in TABLE[i])) - TABLE[i][t]

    loss = sum(nll(i, t) for i, t in pairs) / len(pairs)
    correct = sum(max(range(4), key=lambda c: TABLE[i][c]) == t for i, t in pairs)
    # one batch per client, as wide as its longest row: 3 rows × 3, 2 rows × 9
    padding = 1 - len(pairs) / (3 * 3 + 2 * 9)
    assert out["train_loss"] == pytest.approx(loss, rel=1e-6)
    assert out["train_accuracy"] == pytest.approx(correct / len(pairs))
    assert out["padding_fraction"] == pytest.approx(padding)
    assert out["tokens_seen"] == 26 and out["token_slots"] == 27
    assert out["tokens_per_step"] == pytest.approx(26 / 2)
    # weighted by sequences (the old way), the short client would count 3/5: not this
    per_client = [_reply(t)["metrics"]["train_loss"] for t in (SHORT, LONG)]
    assert abs((3 * per_client[0] + 2 * per_client[1]) / 5 - loss) > 0.1


def test_eval_metrics_weigh_by_tokens_and_others_by_samples():
    def reply(examples: int, loss: float, accuracy: float, **counts: int) -> RecordDict:
        values = {"num-examples": examples, "eval_loss": loss, "eval_accuracy": accuracy}
        return RecordDict({"metrics": MetricRecord(values | counts)})

    text = [reply(3, 1.0, 0.5, eval_tokens=7), reply(2, 2.0, 0.25, eval_tokens=18)]
    out = aggregate_client_metrics(text, "num-examples")
    assert out["eval_loss"] == pytest.approx((7 * 1.0 + 18 * 2.0) / 25)
    assert out["eval_accuracy"] == pytest.approx((7 * 0.5 + 18 * 0.25) / 25)
    assert out["eval_tokens"] == 25
    images = [reply(3, 1.0, 0.5), reply(2, 2.0, 0.25)]  # no token counts: by samples
    out = aggregate_client_metrics(images, "num-examples")
    assert out["eval_loss"] == pytest.approx((3 * 1.0 + 2 * 2.0) / 5)
    assert out["eval_accuracy"] == pytest.approx((3 * 0.5 + 2 * 0.25) / 5)
