"""A run survives clients whose replies would crash or poison the server: each bad reply is
a counted rejection, the rest are aggregated, and the run ends with its summary."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, Message, MetricRecord, RecordDict

from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.nodes import GridView
from fedbatch.federated.server_app import run_experiment
from tests.conftest import read_rows, tiny_config


def _inflate(content: RecordDict) -> RecordDict:
    metrics = content["metrics"].copy()
    metrics["num-examples"] = 10**15
    return RecordDict({"arrays": content["arrays"], "metrics": metrics})


def _nan_weights(content: RecordDict) -> RecordDict:
    arrays = content["arrays"].copy()
    name = next(iter(arrays.keys()))
    values = arrays[name].numpy().copy()
    values.flat[0] = np.nan
    arrays[name] = Array(values)
    return RecordDict({"arrays": arrays, "metrics": content["metrics"]})


def _reshaped(content: RecordDict) -> RecordDict:
    arrays = content["arrays"].copy()
    name = next(iter(arrays.keys()))
    arrays[name] = Array(arrays[name].numpy().reshape(-1))
    return RecordDict({"arrays": arrays, "metrics": content["metrics"]})


def _no_metrics(content: RecordDict) -> RecordDict:
    return RecordDict({"arrays": content["arrays"], "metrics": MetricRecord({})})


class OneBadClient(GridView):
    """Rewrites the training replies of the first node it sees, every round."""

    def __init__(self, grid: Any, corrupt: Any) -> None:
        super().__init__(grid)
        self.corrupt, self.bad_node = corrupt, None

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self.bad_node = self.bad_node or reply.metadata.src_node_id
            train = "arrays" in reply.content.array_records
            if reply.metadata.src_node_id == self.bad_node and train and not reply.has_error():
                reply.content = self.corrupt(reply.content)
        return replies


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_inflate, "num-examples=1e+15 is outside 1.."),
        (_nan_weights, "is not finite"),
        (_reshaped, "the model's is float32"),
        (_no_metrics, "no num-examples"),
    ],
)
def test_one_bad_client_is_rejected_and_the_run_trains_on(tmp_path, corrupt, reason):
    cfg = tiny_config(rounds=4, num_clients=4, clients_per_round=4, device="cpu")
    run_experiment(
        OneBadClient(InProcessGrid(cfg.num_clients), corrupt), cfg, tmp_path, progress=False
    )
    rows = read_rows(tmp_path)[1:]
    assert [(r["clients_replied"], r["clients_rejected"], r["clients_failed"]) for r in rows] == [
        (3, 1, 1)
    ] * 4
    assert all(reason in r["client_error"] for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_because"] == "rounds"
    assert rows[-1]["test_accuracy"] > 0.5  # the three good clients' model, not poisoned
    assert np.isfinite(rows[-1]["test_loss"])
