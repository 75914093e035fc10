"""Every client reply is checked before the server uses it: a bad one becomes an error reply.

A reply that cannot be aggregated (arrays that are not the global model's, non-finite
weights, a missing or impossible `num-examples`, metric keys other than its peers') would
otherwise crash the strategy or poison the global model: one client of five reporting
10¹⁵ examples replaces the model under FedAvg's weighting, NaN weights make it NaN. The
server turns it into an error reply (`Error.code` `REJECTED`, the reason in the text), so
it is counted in `clients_rejected` and `clients_failed`, its reason reaches
`client_error`, and every later step (the clock, aggregation) sees an ordinary failure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord

from fedbatch.federated.records import NUM_EXAMPLES, array_to_numpy

REJECTED = 4100  # Error.code of a reply the server refused (Flower's own codes are < 10)
REASON = "rejected by the server: "


def rejected(reply: Message, why: str) -> Message:
    """The reply as an error reply naming why it was refused (same sender, same round)."""
    return Message(error=Error(REJECTED, REASON + why), metadata=reply.metadata)


def is_rejection(reply: Message) -> bool:
    return reply.has_error() and reply.error.code == REJECTED


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_problem(metrics: MetricRecord, most_examples: int) -> str | None:
    """Why these metrics cannot be used: `num-examples` missing, or not a positive whole
    number of at most `most_examples` (what the client can hold). Other metrics may be nan
    (not measured: a client that fit no step has no training loss) or inf (a diverging
    client's loss): they describe, and the row shows them as they are."""
    count = metrics.get(NUM_EXAMPLES)
    if count is None:
        return f"no {NUM_EXAMPLES}"
    if not _finite(count) or count != int(count):
        return f"{NUM_EXAMPLES}={count!r} is not a whole number"
    if not 1 <= count <= most_examples:
        return f"{NUM_EXAMPLES}={count:g} is outside 1..{most_examples} (the client's data)"
    return None


def _kind(array: Array) -> str:
    """ "f" for floating point, "i"/"u" for integers, "b" for booleans..."""
    return np.dtype(array.dtype).kind


def _array_problem(name: str, array: Array, like: Array) -> str | None:
    # The kind, not the width: a server optimizer (FedAdam...) keeps the model in float64
    # while clients train and reply in float32.
    if tuple(array.shape) != tuple(like.shape) or _kind(array) != _kind(like):
        return (
            f"array {name} is {array.dtype}{list(array.shape)}, "
            f"the model's is {like.dtype}{list(like.shape)}"
        )
    # numpy's isfinite is ~10x faster than torch's on a small array (a check per client
    # per round); a numpy read of the bytes, as the aggregation reads them.
    values = array_to_numpy(array)
    if values.dtype.kind == "f" and not bool(np.isfinite(values).all()):
        return f"array {name} is not finite"
    return None


def arrays_problem(arrays: ArrayRecord, model: ArrayRecord, partial: bool = False) -> str | None:
    """Why these arrays are not an update of `model`: other keys (with `partial`, some
    of the model's keys may be left out: a gradient of the trainable weights only), shapes,
    dtypes, or non-finite values."""
    if partial:
        keys_fit = set(arrays.keys()) <= set(model.keys())
    else:
        keys_fit = list(arrays.keys()) == list(model.keys())
    if not keys_fit:
        missing = sorted(set(model.keys()) - set(arrays.keys()))
        extra = sorted(set(arrays.keys()) - set(model.keys()))
        return f"arrays differ from the model's (missing {missing}, extra {extra})"
    for name, array in arrays.items():
        problem = _array_problem(name, array, model[name])
        if problem:
            return problem
    return None


def reply_problem(
    reply: Message, model: ArrayRecord | None, most_examples: int, partial: bool = False
) -> str | None:
    """Why a reply cannot be used; `model`: the arrays it must match (None: no arrays)."""
    content = reply.content
    metrics = content.metric_records.get("metrics")
    if metrics is None:
        return "no metrics record"
    problem = metrics_problem(metrics, most_examples)
    if problem or model is None:
        return problem
    arrays = content.array_records.get("arrays")
    return "no arrays record" if arrays is None else arrays_problem(arrays, model, partial)


def screen(
    replies: Sequence[Message],
    model: ArrayRecord | None,
    most_examples: Callable[[Message], int],
    partial: bool = False,
) -> list[Message]:
    """The replies with each unusable one replaced by its rejection, in the same order.

    Usable replies must also carry the same metric keys (Flower aggregates key by key):
    those whose keys differ from the most common set among the usable ones (the first
    such set on a tie) are rejected too.
    """
    checked = []
    for reply in replies:
        problem = (
            None
            if reply.has_error()
            else reply_problem(reply, model, most_examples(reply), partial)
        )
        checked.append(reply if problem is None else rejected(reply, problem))
    usable = [r for r in checked if not r.has_error()]
    key_sets = [frozenset(r.content["metrics"].keys()) for r in usable]
    if len(set(key_sets)) <= 1:
        return checked
    common = Counter(key_sets).most_common(1)[0][0]
    out = []
    for reply in checked:
        keys = None if reply.has_error() else frozenset(reply.content["metrics"].keys())
        if keys is None or keys == common:
            out.append(reply)
            continue
        missing, extra = sorted(common - keys), sorted(keys - common)
        out.append(rejected(reply, f"metric keys differ (missing {missing}, extra {extra})"))
    return out
