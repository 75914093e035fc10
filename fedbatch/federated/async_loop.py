"""Asynchronous aggregation (FedBuff, FedAsync) as a discrete-event loop in virtual time.

Up to `concurrency` clients train at once, each from the global model of the moment it
was dispatched; their updates arrive in the order of their virtual finish times (device and
network model, `federated/timing.py`). FedBuff applies the mean of every `buffer_size`
arrivals, each weighted by its staleness s(τ) (τ = versions since dispatch); FedAsync
mixes every arrival in at once. One aggregation is one row of `metrics.jsonl`.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedbatch.clock.scheduler import staleness_weight
from fedbatch.config import RunConfig
from fedbatch.federated.records import aggregate_client_metrics, array_to_tensor, tensor_to_array
from fedbatch.federated.timing import RoundClock, record_bytes
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


class AsyncServer:
    """The event loop's state: the global model, its version, the clients in flight."""

    def __init__(self, grid: Grid, cfg: RunConfig, initial: ArrayRecord) -> None:
        self.grid, self.cfg = grid, cfg
        self.params = cfg.strategy.set_params
        self.node_ids = list(grid.get_node_ids())  # in partition order
        self.clock = RoundClock(cfg)
        self.model_bytes = record_bytes(initial)
        self.arrays, self.version = initial, 0
        self.flight: list[_InFlight] = []
        self.dispatched = 0
        self.failures: list[str] = []

    def idle(self) -> list[int]:
        busy = {f.client for f in self.flight}
        return [c for c in range(len(self.node_ids)) if c not in busy]

    def dispatch(self, now: float, base: dict[str, Any]) -> None:
        """Start one idle client (seeded choice) on the current global model."""
        idle = self.idle()
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "async", self.dispatched))
        client = idle[int(rng.integers(len(idle)))]
        self.dispatched += 1
        # Each dispatch is its own "round" for the client's seeds (shuffle, probes), and its
        # stream window starts at the virtual time it starts.
        values = base | {"server-round": self.dispatched}
        if self.cfg.stream.streaming:
            values |= {"window-start": now, "window-end": now + self.cfg.stream.round_seconds}
        limits = self.clock.limits(client, base["batch-size"], self.model_bytes)
        config = ConfigRecord(values | {"partition-id": client} | limits)
        content = RecordDict({"arrays": self.arrays, "config": config})
        node = self.node_ids[client]
        msg = self.grid.create_message(content, MessageType.TRAIN, node, str(self.dispatched))
        reply = next(iter(self.grid.send_and_receive([msg])))
        if reply.has_error():
            self.failures.append(reply.error.reason)
            finish, energy = now, 0.0
        else:
            timing = self.clock.client_timing(client, reply, self.model_bytes)
            finish, energy = now + timing.total, timing.energy
        entry = _InFlight(finish, self.dispatched, client, self.version, self.arrays, reply, energy)
        heapq.heappush(self.flight, entry)

    def weight(self, staleness: int) -> float:
        cutoff = self.params.get("hinge_cutoff")
        exponent = float(self.params.get("staleness_exponent", 0.5))
        return staleness_weight(staleness, exponent, None if cutoff is None else float(cutoff))

    def apply(self, arrived: Sequence[_InFlight]) -> None:
        """FedBuff: w += η_g · mean of s(τ)·Δ; FedAsync: w ← (1 − α s(τ)) w + α s(τ) w_k."""
        current = _tensors(self.arrays)
        if self.cfg.strategy.name == "fedasync":
            (entry,) = arrived
            alpha = float(self.params.get("mixing", 0.6)) * self.weight(
                self.version - entry.version
            )
            client = _tensors(entry.reply.content["arrays"])
            new = {k: (1 - alpha) * v + alpha * client[k] for k, v in current.items()}
        else:
            lr = float(self.params.get("server_learning_rate", 1.0))
            new = dict(current)
            for entry in arrived:
                scale = lr * self.weight(self.version - entry.version) / len(arrived)
                start, end = _tensors(entry.start), _tensors(entry.reply.content["arrays"])
                new = {k: v + scale * (end[k] - start[k]) for k, v in new.items()}
        self.arrays, self.version = _record(new, self.arrays), self.version + 1


Measure = Callable[[int, ArrayRecord, list[Message], MetricRecord], dict[str, Any]]


def run_async(
    grid: Grid,
    cfg: RunConfig,
    notify: Callable[[int, ArrayRecord, dict[str, Any]], bool],
    base: Callable[[int], dict[str, Any]],
    measure: Measure,
    initial: ArrayRecord,
) -> tuple[int, str]:
    """Run `cfg.rounds` aggregations; `notify(round, arrays, row)` returns True to stop.
    `measure(round, before, replies, train)` adds the round's probe values to its row.
    Stops as `all_clients_failed` once every client has failed in a row."""
    server = AsyncServer(grid, cfg, initial)
    concurrency = int(server.params.get("concurrency", cfg.clients_per_round))
    per_update = 1 if cfg.strategy.name == "fedasync" else int(server.params.get("buffer_size", 1))
    start, now = time.perf_counter(), 0.0
    plan = base(1)
    for _ in range(concurrency):
        server.dispatch(now, plan)
    for server_round in range(1, cfg.rounds + 1):
        round_start, arrived, errors, energy = time.perf_counter(), [], [], 0.0
        failed_in_a_row = 0
        while True:
            entry = heapq.heappop(server.flight)
            now, energy = entry.finish, energy + entry.energy
            if entry.reply.has_error():
                errors.append(entry.reply.error.reason)
                failed_in_a_row += 1
                if failed_in_a_row >= max(concurrency, cfg.num_clients):
                    return server_round - 1, "all_clients_failed"
            else:
                arrived.append(entry)
                failed_in_a_row = 0
            if len(arrived) == per_update:
                break
            server.dispatch(now, plan)  # keep `concurrency` clients busy
        staleness = [server.version - e.version for e in arrived]
        before = server.arrays
        server.apply(arrived)
        server.clock.time = now
        plan = base(server_round + 1)
        server.dispatch(now, plan)  # the last arrival's slot starts on the new model
        train = aggregate_client_metrics([e.reply.content for e in arrived], "num-examples")
        row = {key: train[key] for key in train if key != "num-examples"}
        row |= measure(server_round, before, [e.reply for e in arrived], train)
        row |= {
            "examples": train["num-examples"],
            "clients_sampled": len(arrived) + len(errors),
            "clients_replied": len(arrived),
            "clients_failed": len(errors),
            "client_error": errors[0] if errors else None,
            "staleness_mean": sum(staleness) / len(staleness),
            "staleness_max": max(staleness),
            "virtual_seconds": now,
            "energy_joules": energy,
            "seconds": time.perf_counter() - round_start,
            "elapsed_seconds": time.perf_counter() - start,
        }
        if notify(server_round, server.arrays, row):
            return server_round, "stopped"
    return cfg.rounds, "rounds"
