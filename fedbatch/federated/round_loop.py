"""The server's round loop: one object owns a run's rounds, from plan to callbacks.

A synchronous round reads top to bottom in `RoundLoop.play`: plan → (probe) → exchange
(sample, address, send, receive) → settle (the clock decides who arrived in time) →
aggregate → evaluate → row → callbacks. The asynchronous strategies keep their event loop
(`async_loop.py`) but share everything else (`federation.py`): the exchange, reply
handling, the row, virtual time, the callbacks and the checkpointed state. Every engine
runs this same loop; only the Grid differs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedbatch.config import RunConfig
from fedbatch.federated.checkpoint import load_strategy_state, strategy_state
from fedbatch.federated.federation import Configure, Federation
from fedbatch.federated.rows import metric
from fedbatch.federated.saving import Checkpointer
from fedbatch.federated.strategies import (
    ASYNC_PARAMETERS,
    build_strategy,
    check_strategy_params,
    strategy_class,
)
from fedbatch.metrics.callbacks import Callback, RoundState, RunOutcome
from fedbatch.metrics.interrupts import Interrupted


class RoundLoop(Federation):
    """Synchronous rounds of a Flower strategy: `configure_train` → `aggregate_train` →
    `configure_evaluate` → `aggregate_evaluate`, each round one `play`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strategy = build_strategy(self.cfg)
        self.evaluate_count = max(
            1, int(self.cfg.num_clients * self.cfg.strategy.fraction_evaluate)
        )

    def run(self, resume: Mapping[str, Any] | None = None) -> RunOutcome:
        for server_round in range(self.begin(resume), self.cfg.rounds + 1):
            state = self.play(server_round)
            self.completed(server_round)
            if state.stop_reason is not None:
                return self.finish(server_round, state.stop_reason)
        return self.finish(self.cfg.rounds, "rounds")

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"strategy": strategy_state(self.strategy)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        load_strategy_state(self.strategy, state["strategy"])

    def play(self, server_round: int) -> RoundState:
        started = time.perf_counter()
        self.plan(server_round)
        self.config |= self.time.round_window()
        across = self.probe(server_round)
        messages, replies = self.exchange(self.strategy.configure_train, server_round, "train")
        arrived, clock_row = self.settle(server_round, replies)
        before = self.arrays
        aggregated, train = self.strategy.aggregate_train(server_round, arrived)
        self.arrays = aggregated if aggregated is not None else self.arrays
        evaluation = self.evaluate(server_round)
        row = self.row(server_round, started, len(messages), replies, arrived, train, before)
        row |= clock_row | {
            "noise_scale_across": across,
            "client_eval_loss": metric(evaluation, "eval_loss"),
            "client_eval_accuracy": metric(evaluation, "eval_accuracy"),
        }
        state = self.notify(RoundState(server_round, self.arrays, row))
        if messages and not row["clients_replied"]:
            state.stop_reason = state.stop_reason or "all_clients_failed"
        return state

    def probe(self, server_round: int) -> float | None:
        """The across-client gradient probe, when due: per-client gradients at the global
        weights, from `clients_per_round` sampled nodes."""
        if not self.instruments.across_due(server_round):
            return None
        return self.instruments.across_clients(self.query(server_round, self.cfg.clients_per_round))

    def exchange(
        self, configure: Configure, server_round: int, phase: str
    ) -> tuple[list[Message], list[Message]]:
        """Sample this phase's clients, let the strategy configure them, collect replies.
        With a clock, over-selection samples more and unavailable clients never answer."""
        count = self.cfg.clients_per_round if phase == "train" else self.evaluate_count
        if self.clock is not None and phase == "train":
            count = self.clock.select_count(count)
        self.nodes.offer(self.cfg.seed, server_round, phase, count)
        config = ConfigRecord(self.config)
        messages = self.address(configure(server_round, self.arrays, config, self.nodes))
        self.unavailable = 0
        if self.clock is not None and phase == "train":
            now = self.time.seconds
            answering = [
                m
                for m in messages
                if self.clock.available(
                    self.partition_of[m.metadata.dst_node_id], server_round, now
                )
            ]
            self.unavailable = len(messages) - len(answering)
            messages = answering
        return messages, self.send(messages, self.arrays if phase == "train" else None)

    def settle(
        self, server_round: int, replies: list[Message]
    ) -> tuple[list[Message], dict[str, Any]]:
        """Which replies arrive in time (all of them without a clock); time moves on."""
        if self.clock is None:
            if self.time.streaming:
                self.time.advance(self.cfg.stream.round_seconds)
            return replies, {}
        arrived, row = self.clock.settle(
            server_round, replies, self.partition_of, self.model_bytes, self.cfg.clients_per_round
        )
        self.time.advance(row["round_virtual_seconds"])
        return arrived, row | {"clients_unavailable": self.unavailable}

    def evaluate(self, server_round: int) -> MetricRecord | None:
        """The clients' evaluation of the new global model (`strategy.fraction_evaluate`)."""
        if self.cfg.strategy.fraction_evaluate <= 0:
            return None
        _, replies = self.exchange(self.strategy.configure_evaluate, server_round, "evaluate")
        return self.strategy.aggregate_evaluate(server_round, replies)


def run_rounds(
    grid: Grid,
    cfg: RunConfig,
    callbacks: Sequence[Callback],
    *,
    initial_arrays: ArrayRecord,
    partition_sizes: Sequence[int] | None = None,
    checkpointer: Checkpointer | None = None,
    resume: Mapping[str, Any] | None = None,
) -> RunOutcome:
    """Run up to `cfg.rounds` rounds (or aggregations) of the configured strategy on
    `grid`, whose nodes are listed in partition order. `partition_sizes`: each partition's
    training samples (what a client can report as `num-examples`; their sum is the global
    noise scale's population), None when unknown. `checkpointer` keeps the state after
    each round (and writes it, `save.every`); `resume` is a checkpoint to continue from.
    Interrupted (Ctrl-C, SIGTERM), the run saves its state, ends, and re-raises."""
    if cfg.strategy.name in ASYNC_PARAMETERS:  # fedbatch's event loop (async_loop.py)
        check_strategy_params(cfg)
        loop_class = strategy_class(cfg)
    else:
        loop_class = RoundLoop
    loop = loop_class(grid, cfg, callbacks, initial_arrays, partition_sizes, checkpointer)
    try:
        outcome = loop.run(resume)
    except (Interrupted, KeyboardInterrupt):
        loop.interrupted()
        raise
    loop.checkpointer.discard()  # the run ended: nothing left to resume
    return outcome
