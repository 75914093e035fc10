"""Client sampling that depends only on the seed and the round, whatever the engine.

Flower strategies sample with the process-global `random`, which other threads (Ray's,
for one) also draw from, and engines number their nodes differently. So the server loop
draws each round's clients itself, from a stream seeded by (seed, round, phase), and the
strategy is shown exactly those nodes: its own sampling then picks all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedbatch.seeding import derive_seed


def sample_clients(
    seed: int, server_round: int, population: int, count: int, phase: str = "train"
) -> list[int]:
    """`count` distinct client indices out of `population`, sorted; a pure function."""
    rng = np.random.default_rng(derive_seed(seed, "sample", server_round, phase))
    return sorted(int(i) for i in rng.choice(population, size=count, replace=False))


class SampledNodesGrid(Grid):
    """The engine's Grid, listing only the nodes offered for the current sampling."""

    def __init__(self, grid: Grid) -> None:
        self.inner = grid
        # A stable order: index i is the client (partition) id the node simulates.
        self.all_node_ids = sorted(grid.get_node_ids())
        self.offered = self.all_node_ids

    def offer(self, seed: int, server_round: int, phase: str, count: int) -> list[int]:
        """Draw `count` distinct nodes for this round and phase; list only those."""
        chosen = sample_clients(seed, server_round, len(self.all_node_ids), count, phase)
        self.offered = [self.all_node_ids[i] for i in chosen]
        return self.offered

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> list[int]:
        return self.offered

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)
