"""A client's optimizer state across rounds (`client.optimizer_state=keep`), kept in the
node's `context.state`, which persists per node across rounds under every engine.

Every round builds a fresh optimizer at the round's LR and weight decay (`local/plan.py`);
with `keep` it then takes the per-parameter state the client's optimizer had at the end of
its previous round (momentum buffers, Adam's moments and step counts, AdaGrad's sums,
LARS's buffers), so a one-client run trains as one uninterrupted optimizer would. Only the
state is carried over, never the param_groups: lr, weight decay and momentum stay this
round's.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from fedbatch.federated.records import array_to_tensor, tensor_to_array

TENSORS = "optimizer-state"  # context.state records: tensors by "<parameter index>.<name>"
NUMBERS = "optimizer-numbers"  # ... and plain numbers, should an optimizer keep any


def save_optimizer_state(optimizer: torch.optim.Optimizer, context: Context) -> None:
    arrays, numbers = {}, {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                arrays[key] = tensor_to_array(value)
            elif isinstance(value, bool | int | float):
                numbers[key] = value
            else:
                raise TypeError(f"optimizer state {key}={value!r} is not a tensor or a number")
    context.state[TENSORS] = ArrayRecord(arrays)
    context.state[NUMBERS] = ConfigRecord(numbers)


def load_optimizer_state(optimizer: torch.optim.Optimizer, context: Context) -> None:
    """The saved state into `optimizer` (built for this round); nothing before round one."""
    if TENSORS not in context.state:
        return
    # A copy: the Arrays' bytes are read-only, and the optimizer updates its state in place.
    entries: list[tuple[str, Any]] = [
        (key, array_to_tensor(array).clone()) for key, array in context.state[TENSORS].items()
    ]
    entries += list(context.state[NUMBERS].items())
    state: dict[int, dict[str, Any]] = {}
    for key, value in entries:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
