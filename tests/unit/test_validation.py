"""Client replies the server must refuse: each malformed kind becomes a counted rejection."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedbatch.federated.validation import REJECTED, is_rejection, screen
from tests.flower_messages import SHAPES, global_arrays, train_replies

MOST = 100  # what each client can hold


def _edit(reply: Message, change: Callable[[ArrayRecord, MetricRecord], None]) -> Message:
    arrays = reply.content["arrays"].copy()
    metrics = reply.content["metrics"].copy()
    change(arrays, metrics)
    reply.content = RecordDict({"arrays": arrays, "metrics": metrics})
    return reply


def _set(key: str, value: object) -> Callable[[ArrayRecord, MetricRecord], None]:
    def change(arrays: ArrayRecord, metrics: MetricRecord) -> None:
        metrics[key] = value  # type: ignore[assignment]

    return change


def _array(key: str, values: np.ndarray) -> Callable[[ArrayRecord, MetricRecord], None]:
    def change(arrays: ArrayRecord, metrics: MetricRecord) -> None:
        arrays[key] = Array(values)

    return change


def _drop_array(arrays: ArrayRecord, metrics: MetricRecord) -> None:
    del arrays["b"]


def _drop_count(arrays: ArrayRecord, metrics: MetricRecord) -> None:
    del metrics["num-examples"]


def _nan_weights() -> np.ndarray:
    values = np.zeros(SHAPES["w"], dtype=np.float32)
    values[1, 2] = np.nan
    return values


BAD = [
    (_array("w", np.zeros((5, 3), dtype=np.float32)), "array w is float32[5, 3], the model's "
                                                      "is float32[3, 5]"),
    (_array("w", np.zeros(SHAPES["w"], dtype=np.int64)), "array w is int64[3, 5]"),
    (_array("extra", np.zeros(2, dtype=np.float32)), "extra ['extra']"),
    (_drop_array, "missing ['b']"),
    (_array("w", _nan_weights()), "array w is not finite"),
    (_drop_count, "no num-examples"),
    (_set("num-examples", 10**15), "num-examples=1e+15 is outside 1..100"),
    (_set("num-examples", -5), "num-examples=-5 is outside 1..100"),
    (_set("num-examples", 0), "num-examples=0 is outside 1..100"),
    (_set("num-examples", 2.5), "num-examples=2.5 is not a whole number"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "reason"), BAD)
def test_each_malformed_reply_is_rejected_with_its_reason(change, reason):
    replies = train_replies(seed=1, sizes=[10, 20, 30])
    replies[1] = _edit(replies[1], change)
    screened = screen(replies, global_arrays(), lambda reply: MOST)
    assert [r.has_error() for r in screened] == [False, True, False]
    assert screened[0] is replies[0] and screened[2] is replies[2]
    assert is_rejection(screened[1]) and screened[1].error.code == REJECTED
    assert reason in screened[1].error.reason
    assert screened[1].metadata.src_node_id == replies[1].metadata.src_node_id


def test_a_reply_without_records_and_a_failed_reply():
    replies = train_replies(seed=1, sizes=[10, 20], failed=1)
    replies[0].content = RecordDict({"metrics": replies[0].content["metrics"]})
    replies[1].content = RecordDict({})
    screened = screen(replies, global_arrays(), lambda reply: MOST)
    assert "no arrays record" in screened[0].error.reason
    assert "no metrics record" in screened[1].error.reason
    assert screened[2] is replies[2] and not is_rejection(screened[2])  # the client's own error


def test_metric_keys_other_than_the_peers_are_rejected():
    replies = train_replies(seed=1, sizes=[10, 20, 30])
    replies[2] = _edit(replies[2], _set("surprise", 1.0))
    screened = screen(replies, global_arrays(), lambda reply: MOST)
    assert [r.has_error() for r in screened] == [False, False, True]
    assert "metric keys differ (missing [], extra ['surprise'])" in screened[2].error.reason


def test_a_float_update_of_another_width_is_accepted():
    """A server optimizer (FedAdam) keeps the global model in float64; clients reply float32."""
    model = ArrayRecord(
        {k: Array(a.numpy().astype(np.float64)) for k, a in global_arrays().items()}
    )
    replies = train_replies(seed=1, sizes=[10, 20])
    assert not any(r.has_error() for r in screen(replies, model, lambda reply: MOST))


def test_evaluation_replies_are_checked_without_arrays():
    replies = train_replies(seed=1, sizes=[10, 500])
    screened = screen(replies, None, lambda reply: MOST)
    assert [r.has_error() for r in screened] == [False, True]


def test_a_metric_not_measured_is_nan_and_passes():
    """A client that fit no step reports a nan training loss: that describes, not poisons."""
    replies = train_replies(seed=1, sizes=[10, 20])
    replies[0] = _edit(replies[0], _set("train_loss", float("nan")))
    assert not any(r.has_error() for r in screen(replies, global_arrays(), lambda reply: MOST))
