"""Client sampling that depends only on the seed and the round, whatever the engine.

Flower strategies sample with the process-global `random`, which other threads (Ray's,
for one) also draw from, and engines number their nodes differently. So the server loop
draws each round's clients itself, from a stream seeded by (seed, round, phase), and the
strategy is shown exactly those nodes: its own sampling then picks all of them.
"""

from __future__ import annotations

from fedbatch.federated.nodes import GridView, PartitionedGrid
from fedbatch.seeding import sample_clients


class SampledNodesGrid(GridView):
    """A partition-ordered Grid, listing only the nodes offered for the current sampling."""

    def __init__(self, grid: PartitionedGrid) -> None:
        super().__init__(grid)
        self.all_node_ids = grid.get_node_ids()  # index i holds partition i
        self.offered = self.all_node_ids

    def offer(self, seed: int, server_round: int, phase: str, count: int) -> list[int]:
        """Draw `count` distinct nodes for this round and phase; list only those."""
        chosen = sample_clients(seed, server_round, len(self.all_node_ids), count, phase)
        self.offered = [self.all_node_ids[i] for i in chosen]
        return self.offered

    def get_node_ids(self) -> list[int]:
        return self.offered
