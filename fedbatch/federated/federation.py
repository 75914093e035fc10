"""What every round of a run shares, synchronous or not: the nodes, the global model,
virtual time, the instruments, the callbacks, how messages go out and replies come back,
and the state a checkpoint holds (`begin`, `completed`, `state_dict`, `interrupted`).
`round_loop.RoundLoop` and `async_loop.AsyncLoop` build on it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedbatch.config import RunConfig
from fedbatch.federated.monitoring import RoundInstruments
from fedbatch.federated.nodes import partition_positions
from fedbatch.federated.rows import empty_row, reply_counts, train_values
from fedbatch.federated.sampling import SampledNodesGrid
from fedbatch.federated.saving import Checkpointer
from fedbatch.federated.validation import screen
from fedbatch.federated.virtual_time import RoundClock, VirtualTime, record_bytes
from fedbatch.metrics.callbacks import Callback, RoundState, RunOutcome
from fedbatch.metrics.endings import INTERRUPTED
from fedbatch.metrics.interrupts import stop_requested, uninterrupted

Configure = Callable[[int, ArrayRecord, ConfigRecord, Grid], Iterable[Message]]


class Federation:
    """What every round of a run shares: the nodes, the global model, virtual time, the
    instruments, the callbacks, and how messages go out and replies come back."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        callbacks: Sequence[Callback],
        initial_arrays: ArrayRecord,
        partition_sizes: Sequence[int] | None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.grid, self.cfg, self.callbacks = grid, cfg, callbacks
        self.checkpointer = checkpointer or Checkpointer(None, 0, None)
        self.nodes = SampledNodesGrid(grid)
        self.partition_of = partition_positions(self.nodes.all_node_ids)
        self.partition_sizes = partition_sizes
        pooled_size = None if partition_sizes is None else sum(partition_sizes)
        self.instruments = RoundInstruments(cfg, pooled_size)
        self.clock = RoundClock(cfg) if cfg.clock.on else None
        self.time = VirtualTime(cfg)
        self.arrays = initial_arrays
        self.model_bytes = record_bytes(initial_arrays)
        self.started = time.perf_counter()  # the wall-clock origin of `elapsed_seconds`
        self.run_config = cfg.to_json()  # every message carries it: written once
        self.config: dict[str, Any] = {"run-config": self.run_config}

    # --- messages --------------------------------------------------------------------------

    def plan(self, server_round: int) -> dict[str, Any]:
        """What every client is told this round: the run config and the round's plan."""
        self.config = {"run-config": self.run_config} | self.instruments.round_config(server_round)
        return self.config

    def address(self, messages: Iterable[Message]) -> list[Message]:
        """Give each message its own ConfigRecord naming the partition its node simulates
        and, with a clock, that client's device limits. In partition order, so aggregation
        sums in the same order always."""
        addressed = []
        for msg in sorted(messages, key=lambda m: self.partition_of[m.metadata.dst_node_id]):
            partition = self.partition_of[msg.metadata.dst_node_id]
            config = msg.content.config_records["config"].copy()  # validated once, when built
            config["partition-id"] = partition
            if self.clock is not None:
                batch_size = self.config["batch-size"]
                for key, value in self.clock.limits(
                    partition, batch_size, self.model_bytes
                ).items():
                    config[key] = value
            records: dict[str, Any] = dict(msg.content.array_records)
            records["config"] = config
            msg.content = RecordDict(records)
            addressed.append(msg)
        return addressed

    def query(self, server_round: int, count: int) -> list[Message]:
        """A query to `count` sampled nodes outside the strategy (a gradient probe)."""
        offered = self.nodes.offer(self.cfg.seed, server_round, "train", count)
        content = RecordDict(
            {
                "arrays": self.arrays,
                "config": ConfigRecord(self.config | {"server-round": server_round}),
            }
        )
        messages = [
            self.grid.create_message(content, MessageType.QUERY, node, str(server_round))
            for node in offered
        ]
        return self.send(self.address(messages), self.arrays, partial=True)

    def send(
        self, messages: list[Message], model: ArrayRecord | None, *, partial: bool = False
    ) -> list[Message]:
        """Send, wait for the replies, and screen each (`validation.screen`): arrays like
        `model`'s (None: replies carry none; `partial`: some of its keys), a `num-examples`
        the client's partition can hold. An unusable reply comes back as an error reply."""
        if not messages:
            return []
        return screen(self.grid.send_and_receive(messages), model, self.most_examples, partial)

    def most_examples(self, reply: Message) -> int:
        """The most samples the replying client can hold: its partition's size, or a
        stream's window or reservoir (a stream that keeps all it is sent has no bound
        here: it may outgrow the partition by cycling through it)."""
        stream = self.cfg.stream
        if stream.name != "static":
            return stream.capacity if stream.buffer != "all" else sys.maxsize
        if self.partition_sizes is None:
            return sys.maxsize
        return self.partition_sizes[self.partition_of[reply.metadata.src_node_id]]

    # --- rows and callbacks ----------------------------------------------------------------

    def row(
        self,
        server_round: int,
        started: float,
        sampled: int,
        replies: Sequence[Message],
        aggregated: Sequence[Message],
        train: MetricRecord | None,
        before: ArrayRecord,
    ) -> dict[str, Any]:
        """The round's row: counts, the aggregated training metrics, the instruments'
        measurements, stream totals and work done, virtual and measured time."""
        instruments = self.instruments
        now = time.perf_counter()
        return (
            empty_row(server_round)
            | train_values(train)
            | reply_counts(sampled, replies)
            | instruments.measure(server_round, before, aggregated, train)
            | instruments.stream_totals(replies)
            | instruments.client_work(aggregated)
            | {
                "virtual_seconds": self.time.now,
                "seconds": now - started,
                "elapsed_seconds": now - self.started,
            }
        )

    def notify(self, state: RoundState) -> RoundState:
        for callback in self.callbacks:
            callback.on_round_end(state)
        return state

    def begin(self, resume: Mapping[str, Any] | None) -> int:
        """The first round to play: 1 after round 0 (the initial model, before any
        training), or, resuming, the one after the checkpoint's."""
        if resume is not None:
            completed, state = self.checkpointer.restore(resume)
            self.load_state_dict(state)
            return completed + 1
        self.notify(RoundState(0, self.arrays, empty_row(0) | {"virtual_seconds": self.time.now}))
        self.set_out()
        self.completed(0)
        return 1

    def set_out(self) -> None:
        """After round 0, what the loop does before its first round (nothing here)."""

    def completed(self, server_round: int) -> None:
        """The round is over: its state is what a resumed run starts from (and, when a
        signal asked a loop off the main thread to stop, where it stops)."""
        self.checkpointer.capture(server_round, self.state_dict())
        stop_requested()

    def state_dict(self) -> dict[str, Any]:
        """The server's state after a round (the clients' and the random streams' are
        the checkpointer's)."""
        return {
            "arrays": self.arrays,
            "config": dict(self.config),
            "elapsed_seconds": time.perf_counter() - self.started,
            "virtual_time": self.time.state_dict(),
            "instruments": self.instruments.state_dict(),
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.arrays, self.config = state["arrays"], dict(state["config"])
        self.started = time.perf_counter() - state["elapsed_seconds"]
        self.time.load_state_dict(state["virtual_time"])
        self.instruments.load_state_dict(state["instruments"])
        for callback in self.callbacks:
            callback.load_state_dict(state["callbacks"].get(type(callback).__name__, {}))

    def finish(self, completed: int, stopped_because: str) -> RunOutcome:
        seconds = time.perf_counter() - self.started
        outcome = RunOutcome(completed, stopped_because, seconds, self.arrays)
        for callback in self.callbacks:
            callback.on_run_end(outcome)
        return outcome

    def interrupted(self) -> RunOutcome:
        """Ctrl-C or SIGTERM: save the last completed round's state and end the run there
        (a second signal meanwhile does not cut this short)."""
        with uninterrupted():
            if self.checkpointer.latest is not None:  # back to where the round began
                self.load_state_dict(self.checkpointer.latest["server"])
                self.checkpointer.write()
            return self.finish(self.checkpointer.round, INTERRUPTED)
