"""Flower's robust, fair and private strategies as config switches: wired so that they
compute what their papers define, and refused where they cannot work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord

from fedbatch.config import ConfigError
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.nodes import PartitionedGrid, partition_order
from fedbatch.federated.records import model_to_arrays
from fedbatch.federated.server_app import run_rounds, standard_callbacks
from fedbatch.federated.strategies import build_strategy
from fedbatch.federated.workload import build_workload
from fedbatch.metrics.callbacks import Callback, RoundState
from tests.conftest import tiny_config
from tests.flower_messages import Nodes, global_arrays, train_replies


def _stack(replies, key):
    return np.stack([r.content["arrays"][key].numpy() for r in replies])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fedmedian", lambda w: np.median(w, axis=0)),
        # beta = 0.2 of 5 clients: drop the largest and the smallest value per coordinate
        ("fedtrimmedavg", lambda w: np.sort(w, axis=0)[1:-1].mean(axis=0)),
    ],
)
def test_coordinate_wise_rules_compute_their_definition(name, expected):
    cfg = tiny_config(num_clients=5, clients_per_round=5, strategy={"name": name})
    strategy = build_strategy(cfg)
    list(strategy.configure_train(1, global_arrays(), ConfigRecord(), Nodes(5)))
    sizes = [10, 10, 10, 10, 1000]  # num-examples: these rules ignore it
    replies = train_replies(seed=4, sizes=sizes)
    aggregated, _ = strategy.aggregate_train(1, train_replies(seed=4, sizes=sizes))  # a copy
    for key in ("w", "b"):
        np.testing.assert_allclose(
            aggregated[key].numpy(), expected(_stack(replies, key)), rtol=1e-6
        )


def test_krum_picks_the_update_closest_to_its_neighbours_and_ignores_an_outlier():
    cfg = tiny_config(
        num_clients=5, clients_per_round=5, strategy={"name": "krum", "num_malicious_nodes": 1}
    )
    strategy = build_strategy(cfg)
    list(strategy.configure_train(1, global_arrays(), ConfigRecord(), Nodes(5)))
    replies = train_replies(seed=5, sizes=[10] * 5)
    replies[4].content["arrays"]["w"] = Array(np.full((3, 5), 1e3, dtype=np.float32))
    flat = [np.concatenate([r.content["arrays"][k].numpy().ravel() for k in "wb"]) for r in replies]
    # Krum's score: the sum of squared distances to the n − f − 2 = 2 nearest others
    scores = []
    for i, x in enumerate(flat):
        distances = sorted(float(np.sum((x - y) ** 2)) for j, y in enumerate(flat) if j != i)
        scores.append(sum(distances[:2]))
    chosen = int(np.argmin(scores))
    aggregated, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(aggregated["w"].numpy(), _stack(replies, "w")[chosen])
    assert chosen != 4


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        ({"clients_per_round": 4, "strategy": {"name": "krum", "num_malicious_nodes": 1}},
         "strategy.num_malicious_nodes", "at most 0 with clients_per_round=4"),
        ({"clients_per_round": 6, "strategy": {"name": "bulyan", "num_malicious_nodes": 1}},
         "strategy.num_malicious_nodes", "bulyan needs at least 4f + 3"),
        ({"clients_per_round": 5, "strategy": {"name": "multikrum", "num_malicious_nodes": 1,
                                               "num_nodes_to_select": 5}},
         "strategy.num_nodes_to_select", "from 1 to clients_per_round − num_malicious_nodes = 4"),
        ({"strategy": {"name": "krum", "num_malicious_nodes": 1.5}},
         "strategy.num_malicious_nodes", "an integer >= 0"),
        ({"strategy": {"name": "fedtrimmedavg", "beta": 0.5}}, "strategy.beta", "< 0.5"),
        ({"strategy": {"name": "qfedavg"}, "client": {"lr_scaling": "linear"}},
         "client.lr_scaling", "none with strategy=qfedavg"),
        ({"strategy": {"name": "qfedavg"}, "client": {"lr_schedule": "cosine"}},
         "client.lr_schedule", "constant with strategy=qfedavg"),
        ({"privacy": {"clipping": "fixed", "noise_multiplier": -1.0}},
         "privacy.noise_multiplier", ">= 0"),
    ],
)  # fmt: skip
def test_combinations_that_cannot_work_are_one_line(overrides, key, allowed):
    with pytest.raises(ConfigError) as refused:
        build_strategy(tiny_config(num_clients=8, **overrides))
    message = str(refused.value)
    assert message.startswith(f"{key}=") and allowed in message and "\n" not in message


def _weights_after_one_round(cfg, tmp_path) -> tuple[torch.Tensor, torch.Tensor]:
    workload = build_workload(cfg)
    seen = []

    class Keep(Callback):
        def on_round_end(self, state: RoundState) -> None:
            seen.append(state.arrays)

    callbacks, _ = standard_callbacks(workload, tmp_path, progress=False)
    grid = InProcessGrid(cfg.num_clients)
    run_rounds(
        PartitionedGrid(grid, partition_order(grid, cfg), None),
        cfg,
        [*callbacks, Keep()],
        initial_arrays=model_to_arrays(workload.initial_model()),
        partition_sizes=[len(p) for p in workload.partitions],
    )

    def flat(arrays):
        return torch.cat([torch.from_numpy(a.numpy()).flatten() for a in arrays.values()])

    return flat(seen[0]), flat(seen[1])


@pytest.mark.parametrize("side", ["server", "client"])
def test_clipping_bounds_the_aggregated_update_by_the_clipping_norm(side, tmp_path):
    """No noise: the mean of updates clipped to norm C has norm at most C, where the
    unclipped mean is larger."""
    shape = dict(rounds=1, client={"lr": 0.5, "epochs": 2})
    w0, w1 = _weights_after_one_round(tiny_config(**shape), tmp_path / "plain")
    unclipped = float((w1 - w0).norm())
    clip = unclipped / 4
    privacy = {"clipping": "fixed", "side": side, "noise_multiplier": 0.0, "clipping_norm": clip}
    w0, w1 = _weights_after_one_round(tiny_config(**shape, privacy=privacy), tmp_path / "dp")
    assert float((w1 - w0).norm()) <= clip * (1 + 1e-5)
    assert float((w1 - w0).norm()) > 0.5 * clip  # clipped, not zeroed


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "multikrum", "bulyan", "qfedavg"])
def test_each_strategy_trains(name, tmp_path):
    cfg = tiny_config(rounds=3, num_clients=8, clients_per_round=7, strategy={"name": name})
    _, w1 = _weights_after_one_round(cfg, tmp_path)
    assert torch.isfinite(w1).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_because"] == "rounds" and summary["test_accuracy"] > 0.2
