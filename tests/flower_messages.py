"""Flower train replies and a node list to feed strategies directly, without an engine."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedbatch.compat import ErrorCode, set_message_id, set_sender_identity

SHAPES = {"w": (3, 5), "b": (4,)}


def global_arrays(seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({k: Array(rng.standard_normal(s).astype(np.float32))
                        for k, s in SHAPES.items()})  # fmt: skip


def train_replies(seed: int, sizes: Iterable[int], failed: int = 0) -> list[Message]:
    """One reply per client size (node ids 2, 3, …), then `failed` error replies.

    Fresh objects each call: some wrappers (Flower's DP clipping) rewrite replies in place.
    """
    set_sender_identity(1)
    rng = np.random.default_rng(seed)
    replies = []
    for node, size in enumerate(sizes, start=2):
        ask = Message(RecordDict({"config": ConfigRecord()}), node, MessageType.TRAIN)
        set_message_id(ask, str(node))
        arrays = ArrayRecord(
            {k: Array(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}
        )
        metrics = MetricRecord({"num-examples": size, "train_loss": float(rng.random())})
        replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=ask))
    for node in range(100, 100 + failed):
        ask = Message(RecordDict({"config": ConfigRecord()}), node, MessageType.TRAIN)
        error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "RuntimeError: boom")
        replies.append(Message(error, reply_to=ask))
    return replies


class Nodes:
    """Just enough of a Grid for a strategy's `configure_train` (it lists and samples)."""

    def __init__(self, count: int) -> None:
        self.ids = list(range(2, count + 2))
        set_sender_identity(1)  # as a Grid does: the strategy's messages come from the SuperLink

    def get_node_ids(self) -> list[int]:
        return self.ids


def same_arrays(ours: ArrayRecord | None, theirs: ArrayRecord | None) -> bool:
    """Byte for byte: the same keys in the same order, the same dtype, shape and bytes."""
    if ours is None or theirs is None:
        return ours is theirs
    return list(ours.keys()) == list(theirs.keys()) and all(
        (ours[k].dtype, ours[k].shape, ours[k].stype, ours[k].data)
        == (theirs[k].dtype, theirs[k].shape, theirs[k].stype, theirs[k].data)
        for k in theirs
    )
