"""Asynchronous aggregation (FedBuff, FedAsync) as a discrete-event loop in virtual time.

Up to `concurrency` clients train at once, each from the global model of the moment it
was dispatched; their updates arrive in the order of their virtual finish times (device and
network model, `federated/virtual_time.py`). FedBuff applies the mean of every `buffer_size`
arrivals, each weighted by its staleness s(τ) (τ = versions since dispatch); FedAsync
mixes every arrival in at once. One aggregation is one row of `metrics.jsonl`.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedbatch.clock.scheduler import staleness_weight
from fedbatch.federated.federation import Federation
from fedbatch.federated.records import aggregate_client_metrics, array_to_tensor, tensor_to_array
from fedbatch.metrics.callbacks import RoundState, RunOutcome
from fedbatch.seeding import derive_seed


@dataclass(order=True)
class _InFlight:
    finish: float
    order: int
    client: int = field(compare=False)
    version: int = field(compare=False)  # global version it started from
    start: ArrayRecord = field(compare=False)
    reply: Message = field(compare=False)
    energy: float = field(compare=False)


def _tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {key: array_to_tensor(array).double() for key, array in record.items()}


def _record(tensors: dict[str, torch.Tensor], like: ArrayRecord) -> ArrayRecord:
    dtypes = {key: array_to_tensor(array).dtype for key, array in like.items()}
    return ArrayRecord({k: tensor_to_array(v.to(dtypes[k])) for k, v in tensors.items()})


def nth_idle(rank: int, busy: set[int]) -> int:
    """The `rank`-th client (from 0, ascending ids) not in `busy`, without listing the idle
    ones: each busy id at or below the answer moves it one on."""
    client = rank
    for taken in sorted(busy):
        if taken > client:
            break
        client += 1
    return client


class AsyncLoop(Federation):
    """The event loop's state beside the shared federation: the global model's version
    and the clients in flight. Each strategy says how many arrivals make an update
    (`per_update`) and what they make of the global model (`merge`)."""

    per_update: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params = self.cfg.strategy.set_params
        assert self.clock is not None, "asynchronous strategies need a clock (config check)"
        self.event_clock = self.clock
        self.version = 0
        self.flight: list[_InFlight] = []
        self.dispatched = 0
        self.concurrency = int(self.params.get("concurrency", self.cfg.clients_per_round))

    def dispatch(self) -> None:
        """Start one idle client (seeded choice) on the current global model, now."""
        busy = {f.client for f in self.flight}
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "async", self.dispatched))
        client = nth_idle(int(rng.integers(len(self.partition_of) - len(busy))), busy)
        self.dispatched += 1
        # Each dispatch is its own "round" for the client's seeds (shuffle, probes), and its
        # stream window starts at the virtual time it starts.
        values = self.config | {"server-round": self.dispatched} | self.time.dispatch_window()
        content = RecordDict({"arrays": self.arrays, "config": ConfigRecord(values)})
        node = self.nodes.all_node_ids[client]
        msg = self.grid.create_message(content, MessageType.TRAIN, node, str(self.dispatched))
        (reply,) = self.send(self.address([msg]), self.arrays)
        now = self.time.seconds
        if reply.has_error():
            finish, energy = now, 0.0
        else:
            timing = self.event_clock.client_timing(client, reply, self.model_bytes)
            finish, energy = now + timing.total, timing.energy
        entry = _InFlight(finish, self.dispatched, client, self.version, self.arrays, reply, energy)
        heapq.heappush(self.flight, entry)

    def weight(self, staleness: int) -> float:
        cutoff = self.params.get("hinge_cutoff")
        exponent = float(self.params.get("staleness_exponent", 0.5))
        return staleness_weight(staleness, exponent, None if cutoff is None else float(cutoff))

    def apply(self, arrived: Sequence[_InFlight]) -> None:
        self.arrays, self.version = _record(self.merge(arrived), self.arrays), self.version + 1

    def merge(self, arrived: Sequence[_InFlight]) -> dict[str, torch.Tensor]:
        """The new global weights from the current ones and the `arrived` updates."""
        raise NotImplementedError

    def set_out(self) -> None:
        """The first `concurrency` clients start on the initial model."""
        self.plan(1)
        for _ in range(self.concurrency):
            self.dispatch()

    def run(self, resume: Mapping[str, Any] | None = None) -> RunOutcome:
        """`cfg.rounds` aggregations; stops as `all_clients_failed` once every client has
        failed in a row."""
        for server_round in range(self.begin(resume), self.cfg.rounds + 1):
            outcome = self.aggregate(server_round)
            if outcome is not None:
                return self.finish(*outcome)
            self.completed(server_round)
        return self.finish(self.cfg.rounds, "rounds")

    def state_dict(self) -> dict[str, Any]:
        """Beside the federation's: the global version, the dispatch count and the clients
        in flight, each with the model it started from and the reply it will deliver."""
        flight = [vars(entry).copy() for entry in self.flight]  # heap order kept
        return super().state_dict() | {
            "version": self.version,
            "dispatched": self.dispatched,
            "flight": flight,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.version, self.dispatched = state["version"], state["dispatched"]
        self.flight = [_InFlight(**entry) for entry in state["flight"]]

    def aggregate(self, server_round: int) -> tuple[int, str] | None:
        """Wait for the next `per_update` arrivals, apply them, write the row; (rounds
        completed, why) when the run ends here."""
        started, arrived, failed, energy = time.perf_counter(), [], [], 0.0
        failed_in_a_row = 0
        while True:
            entry = heapq.heappop(self.flight)
            self.time.advance_to(entry.finish)
            energy += entry.energy
            if entry.reply.has_error():
                failed.append(entry.reply)
                failed_in_a_row += 1
                if failed_in_a_row >= max(self.concurrency, self.cfg.num_clients):
                    self.all_failed(server_round, started, failed, energy)
                    return server_round, "all_clients_failed"
            else:
                arrived.append(entry)
                failed_in_a_row = 0
            if len(arrived) == self.per_update:
                break
            self.dispatch()  # keep `concurrency` clients busy
        staleness = [self.version - e.version for e in arrived]
        before = self.arrays
        self.apply(arrived)
        aggregated = [e.reply for e in arrived]
        train = aggregate_client_metrics([r.content for r in aggregated], "num-examples")
        replies = aggregated + failed
        row = self.row(server_round, started, len(replies), replies, aggregated, train, before)
        self.plan(server_round + 1)  # after the row: its measurements feed the next plan
        self.dispatch()  # the last arrival's slot starts on the new model
        row |= {
            "staleness_mean": sum(staleness) / len(staleness),
            "staleness_max": max(staleness),
            "energy_joules": energy,
        }
        state = self.notify(RoundState(server_round, self.arrays, row))
        return None if state.stop_reason is None else (server_round, state.stop_reason)

    def all_failed(
        self, server_round: int, started: float, failed: list[Message], energy: float
    ) -> None:
        """The row of an aggregation that never came: every client failed in a row (their
        count and the first failure's reason, as a synchronous round's row gives them)."""
        row = self.row(server_round, started, len(failed), failed, [], None, self.arrays)
        row |= {"staleness_mean": None, "staleness_max": None, "energy_joules": energy}
        self.notify(RoundState(server_round, self.arrays, row))


class FedBuff(AsyncLoop):
    """FedBuff: w += η_g · mean of s(τ)·Δ over every `buffer_size` arrivals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_update = int(self.params.get("buffer_size", 1))

    def merge(self, arrived: Sequence[_InFlight]) -> dict[str, torch.Tensor]:
        lr = float(self.params.get("server_learning_rate", 1.0))
        new = _tensors(self.arrays)
        for entry in arrived:
            scale = lr * self.weight(self.version - entry.version) / len(arrived)
            start, end = _tensors(entry.start), _tensors(entry.reply.content["arrays"])
            new = {k: v + scale * (end[k] - start[k]) for k, v in new.items()}
        return new


class FedAsync(AsyncLoop):
    """FedAsync: each arrival mixed in at once, w ← (1 − α s(τ)) w + α s(τ) w_k."""

    per_update = 1

    def merge(self, arrived: Sequence[_InFlight]) -> dict[str, torch.Tensor]:
        (entry,) = arrived
        alpha = float(self.params.get("mixing", 0.6)) * self.weight(self.version - entry.version)
        current, client = _tensors(self.arrays), _tensors(entry.reply.content["arrays"])
        return {k: (1 - alpha) * v + alpha * client[k] for k, v in current.items()}
