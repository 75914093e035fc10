"""A client's streaming partition in Flower terms: its state lives in the node's context.

The stream itself (`fedbatch.data.stream`) is a pure function of the seed, the client and
virtual time; what a client has consumed and buffered so far is kept in Flower's
`context.state`, which persists per node across rounds under every engine.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context

from fedbatch.data.stream_rounds import StreamRound, StreamState, plan_stream_round
from fedbatch.federated.workload import Workload
from fedbatch.local.minibatches import PlannedBatch

STATE = "stream-state"


def _load(context: Context) -> StreamState:
    if STATE not in context.state:
        return StreamState()
    record = context.state[STATE]
    return StreamState.from_arrays({key: record[key].numpy() for key in record})


def stream_state_record(state: StreamState) -> ArrayRecord:
    """The record `context.state[STATE]` keeps of a client's stream state."""
    return ArrayRecord({key: Array(np.asarray(v)) for key, v in state.to_arrays().items()})


def save_stream_state(context: Context, state: StreamState) -> None:
    context.state[STATE] = stream_state_record(state)


def stream_batches(
    workload: Workload,
    partition_id: int,
    server_round: int,
    window: tuple[float, float],
    step_size: int,
    max_steps: int | None,
    context: Context,
    *,
    advance: bool = True,
) -> tuple[list[PlannedBatch], StreamRound]:
    """This round's batches: what has arrived in its `window` of virtual time (sent by
    the server, whose clock decides it), as planned by the stream's buffer and batching
    rules. The client's stream state moves on, unless `advance` is False: then the caller
    saves `planned.state` once the round is trained (`save_stream_state`)."""
    cfg = workload.cfg
    stream = workload.stream(partition_id)
    planned = plan_stream_round(
        stream,
        _load(context),
        *window,
        step_size,
        cfg=cfg.stream,
        epochs=cfg.client.epochs,
        max_steps=max_steps,
        seed=cfg.seed,
        client=partition_id,
        server_round=server_round,
    )
    if advance:
        save_stream_state(context, planned.state)
    drifted = cfg.stream.drift in ("covariate", "concept")
    device = workload.device
    batches = [
        PlannedBatch(
            torch.from_numpy(stream.samples(ordinals)).to(device),
            fresh=fresh,
            concept=torch.from_numpy(stream.concepts(ordinals)) if drifted else None,
        )
        for ordinals, fresh in zip(planned.steps, planned.fresh, strict=True)
    ]
    return batches, planned
