"""fedbatch's FedAvg family: Flower's strategies with a faster mean, and only fedbatch's."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import CodeType

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp import strategy as flower
from flwr.serverapp.strategy import fedavg as flower_fedavg
from flwr.serverapp.strategy import strategy_utils

from fedbatch.federated import records, strategies
from fedbatch.registry import STRATEGIES
from tests.flower_messages import Nodes, global_arrays, same_arrays, train_replies

# The FedAvg family: fedbatch's classes on Flower's (the robust and fair rules are Flower's
# own classes, which average nothing; the asynchronous ones fedbatch's event loop).
CLASSES = {
    n: cls
    for n in STRATEGIES.names()
    if (cls := STRATEGIES.resolve(n)).__module__ == strategies.__name__
}
FLOWERS_MEAN = strategy_utils.aggregate_arrayrecords.__code__
OUR_MEAN = records.aggregate_arrayrecords.__code__

# Settings that make each strategy's own server step do something.
SETTINGS = {
    "fedavg": {},
    "fedavgm": {"server_momentum": 0.9, "server_learning_rate": 0.5},
    "fedprox": {"proximal_mu": 0.1},
    "fedadam": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99},
    "fedyogi": {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99},
    "fedadagrad": {"eta": 0.05},
}


@contextmanager
def functions_called() -> Iterator[set[CodeType]]:
    """The code objects of every Python function called inside the block."""
    seen: set[CodeType] = set()
    previous = sys.getprofile()

    def profile(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code)

    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(previous)


def test_every_strategy_has_its_own_fast_class():
    assert set(SETTINGS) == set(CLASSES)
    for cls in CLASSES.values():
        flowers = getattr(flower, cls.__name__)
        assert issubclass(cls, flowers) and cls is not flowers
        assert issubclass(cls, strategies.FedAvg)
        mro = cls.__mro__
        # Flower's own aggregate_train (momentum, server optimizer) runs first; its
        # super() call reaches fedbatch's FedAvg before Flower's.
        if cls is not strategies.FedAvg:
            assert mro.index(flowers) < mro.index(strategies.FedAvg)
        assert mro.index(strategies.FedAvg) < mro.index(flower.FedAvg)


def test_flowers_own_fedavg_keeps_flowers_mean():
    assert flower_fedavg.aggregate_arrayrecords is strategy_utils.aggregate_arrayrecords
    flowers = flower.FedAvg()  # made after fedbatch's strategies were imported
    with functions_called() as called:
        arrays, _ = flowers.aggregate_train(1, train_replies(0, (3, 4)))
    assert arrays is not None
    assert FLOWERS_MEAN in called and OUR_MEAN not in called


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_strategy_uses_the_fast_mean(name):
    ours = CLASSES[name](**SETTINGS[name])
    ours.configure_train(1, global_arrays(), ConfigRecord(), Nodes(3))
    with functions_called() as called:
        arrays, _ = ours.aggregate_train(1, train_replies(0, (3, 4, 5)))
    assert arrays is not None
    assert OUR_MEAN in called and FLOWERS_MEAN not in called


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_strategy_aggregates_byte_identically_to_flowers(name):
    cls = CLASSES[name]
    kwargs = {"min_train_nodes": 3, "min_available_nodes": 3, **SETTINGS[name]}
    ours, flowers = cls(**kwargs), getattr(flower, cls.__name__)(**kwargs)
    arrays = their_arrays = global_arrays()
    for server_round, failed in ((1, 0), (2, 1), (3, 0)):  # momentum and moments carry over
        ours.configure_train(server_round, arrays, ConfigRecord(), Nodes(3))
        flowers.configure_train(server_round, their_arrays, ConfigRecord(), Nodes(3))
        sizes = (7, 1, 12)[: 3 - failed]
        arrays, metrics = ours.aggregate_train(
            server_round, train_replies(server_round, sizes, failed)
        )
        their_arrays, their_metrics = flowers.aggregate_train(
            server_round, train_replies(server_round, sizes, failed)
        )
        assert same_arrays(arrays, their_arrays)
        assert metrics == their_metrics
    # The server step did move the weights away from the plain mean (it was exercised).
    plain = strategies.FedAvg().aggregate_train(3, train_replies(3, (7, 1, 12)))[0]
    moved = not same_arrays(arrays, plain)
    assert moved == (name not in ("fedavg", "fedprox"))


@pytest.mark.parametrize("name", ["fedavg", "fedavgm"])
def test_flowers_dp_wrapper_takes_fedbatchs_strategies(name):
    cls = CLASSES[name]
    kwargs = {"min_train_nodes": 3, "min_available_nodes": 3, **SETTINGS[name]}

    def wrapped(strategy):
        return flower.DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=3
        )

    ours, flowers = wrapped(cls(**kwargs)), wrapped(getattr(flower, cls.__name__)(**kwargs))
    start = global_arrays()
    ours.configure_train(1, start, ConfigRecord(), Nodes(3))
    flowers.configure_train(1, start, ConfigRecord(), Nodes(3))
    np.random.seed(0)  # the wrapper's (zero) noise comes from numpy's global generator
    arrays, metrics = ours.aggregate_train(1, train_replies(1, (7, 1, 12)))
    np.random.seed(0)
    their_arrays, their_metrics = flowers.aggregate_train(1, train_replies(1, (7, 1, 12)))
    assert arrays is not None and same_arrays(arrays, their_arrays)
    assert metrics == their_metrics
