"""Fast record conversion must produce exactly what Flower's own conversion produces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from torch import nn

from fedbatch.federated.records import (
    aggregate_arrayrecords,
    aggregate_client_metrics,
    array_to_tensor,
    load_arrays,
    model_to_arrays,
    tensor_to_array,
)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(3, 5),
        torch.randn(7),
        torch.tensor(2.5),
        torch.arange(6, dtype=torch.int64),
        torch.randn(4, 3).T,
        torch.randn(2, 3, 4, dtype=torch.float64),
    ],
)
def test_arrays_match_flowers_own(tensor):
    ours, flowers = tensor_to_array(tensor), Array(tensor)
    assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
    if tensor.is_contiguous():
        assert ours.data == flowers.data
        assert ours.__dict__ == flowers.__dict__  # built without Array.__init__
        assert ours.object_id == flowers.object_id  # what Flower uses to ship it
    np.testing.assert_array_equal(ours.numpy(), tensor.numpy())  # Flower reads ours
    np.testing.assert_array_equal(flowers.numpy(), tensor.numpy())
    torch.testing.assert_close(array_to_tensor(flowers), tensor.contiguous())


def test_model_round_trip_skips_batchnorm_counter():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model(torch.randn(5, 4))  # moves running stats
    record = model_to_arrays(model)
    assert "1.num_batches_tracked" not in record
    assert ArrayRecord(model.state_dict())["0.weight"].data == record["0.weight"].data
    other = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    load_arrays(other, record)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(other.state_dict()[key], value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_loading_casts_into_the_models_dtype_as_copy_does(dtype):
    source = nn.Linear(4, 3)
    target = nn.Linear(4, 3).to(dtype)
    load_arrays(target, model_to_arrays(source))
    for key, value in source.state_dict().items():
        assert target.state_dict()[key].dtype == dtype
        torch.testing.assert_close(target.state_dict()[key], value.to(dtype))


def test_loading_weights_of_another_model_fails_clearly():
    with pytest.raises(ValueError, match="do not fit"):
        load_arrays(nn.Linear(4, 3), model_to_arrays(nn.Linear(4, 2, bias=False)))


def test_metrics_sum_counts_max_maxima_and_weight_means():
    def record(n, loss, steps, gmax):
        metrics = {"num-examples": n, "train_loss": loss, "steps": steps, "grad_norm_max": gmax}
        return RecordDict({"metrics": MetricRecord(metrics)})

    out = aggregate_client_metrics(
        [record(10, 1.0, 3, 5.0), record(30, 2.0, 4, 2.0)], "num-examples"
    )
    assert out["num-examples"] == 40 and out["steps"] == 7 and out["grad_norm_max"] == 5.0
    assert out["train_loss"] == pytest.approx(1.75)


def test_fedavg_aggregation_gives_flowers_bytes():
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords as flowers

    rng = np.random.default_rng(0)
    replies = [
        RecordDict(
            {
                "arrays": ArrayRecord(
                    {
                        "w": Array(rng.standard_normal((3, 5)).astype(np.float32)),
                        "b": Array(rng.standard_normal(4)),  # float64
                        "f": Array(np.asfortranarray(rng.standard_normal((2, 3)))),
                    }
                ),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        for n in (7, 1, 12)
    ]
    ours, theirs = aggregate_arrayrecords(replies, "num-examples"), flowers(replies, "num-examples")
    assert list(ours.keys()) == list(theirs.keys())
    for key in theirs:
        assert ours[key].data == theirs[key].data  # byte for byte
        assert (ours[key].dtype, ours[key].shape) == (theirs[key].dtype, theirs[key].shape)
