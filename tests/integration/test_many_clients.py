"""Runs with many registered clients build per-client state only for the clients they use."""

from __future__ import annotations

import random

from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.async_loop import nth_idle
from fedbatch.federated.nodes import partition_order, partition_positions
from fedbatch.federated.server_app import run_experiment
from tests.conftest import tiny_config


def test_nth_idle_is_the_rank_th_client_outside_the_busy_ones():
    chooser = random.Random(4)
    for _ in range(200):
        population = chooser.randint(1, 30)
        busy = set(chooser.sample(range(population), chooser.randint(0, population - 1)))
        idle = [c for c in range(population) if c not in busy]  # the listing it avoids
        for rank, client in enumerate(idle):
            assert nth_idle(rank, busy) == client


def test_node_contexts_are_built_when_first_asked_for():
    grid = InProcessGrid(1_000_000)
    assert list(grid.get_node_ids()[:3]) == [2, 3, 4] and len(grid.contexts) == 1_000_000
    assert grid.contexts.built == {}
    context = grid.contexts[1_000_001]
    assert context.node_config == {"partition-id": 999_999, "num-partitions": 1_000_000}
    assert grid.contexts[1_000_001] is context and list(grid.contexts.built) == [1_000_001]
    order = partition_order(grid, tiny_config(num_clients=1_000_000))
    assert order == range(2, 1_000_002)  # no list of a million ids
    positions = partition_positions(order)
    assert positions[2] == 0 and positions[1_000_001] == 999_999 and len(positions) == 10**6
    assert partition_positions([7, 3])[3] == 1


def test_a_run_builds_contexts_for_its_sampled_clients_only(tmp_path):
    cfg = tiny_config(num_clients=300, clients_per_round=2, rounds=2, data={"name": "synthetic"})
    grid = InProcessGrid(cfg.num_clients)
    run_experiment(grid, cfg, tmp_path, progress=False)
    assert 2 <= len(grid.contexts.built) <= 4  # two clients in each of two rounds
