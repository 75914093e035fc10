"""Config validation: bad values get one clear message naming the key and what is allowed."""

from __future__ import annotations

import pytest

from fedbatch.config import FULL_BATCH, ConfigError, build_config, config_from_json


def _raw(**sections):
    raw = {"seed": 0, "rounds": 2, "num_clients": 4, "clients_per_round": 2}
    for key, value in sections.items():
        if isinstance(value, dict):
            raw[key] = value
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        (_raw(client={"batch_size": 0}), "client.batch_size", "integer >= 1 or 'full'"),
        (_raw(client={"batch_size": -3}), "client.batch_size", "integer >= 1 or 'full'"),
        (_raw(client={"batch_size": "big"}), "client.batch_size", "'full'"),
        (_raw(client={"lr": 0}), "client.lr", "> 0.0"),
        (_raw(client={"lr": -0.1}), "client.lr", "> 0.0"),
        (_raw(client={"optimizer": "lion"}), "client.optimizer", "sgd, momentum"),
        (
            _raw(client={"optimizer_state": "carry"}),
            "client.optimizer_state",
            "'carry' is invalid: allowed one of reset, keep",
        ),
        (_raw(strategy={"name": "fedfoo"}), "strategy", "fedavg, fedavgm"),
        (_raw(data={"name": "cifar"}), "data", "synthetic, mnist1d, digits"),
        (_raw(model={"name": "vgg"}), "model", "logreg, mlp, cnn1d, cnn, resnet"),
        (_raw(model={"name": "mlp", "norm": "instance"}), "model.norm", "none, batch"),
        (_raw(model={"memory_format": "nhwc"}), "model.memory_format", "auto, contiguous"),
        (_raw(model={"name": "cnn"}), "model", "logreg, mlp, cnn1d with data=digits"),
        (_raw(stream={"name": "poisson", "replay_ratio": 0.5}), "stream.replay_ratio", "passes=1"),
        (_raw(data={"name": "images", "signal": 0}), "data.signal", "> 0.0"),
        (
            _raw(model={"name": "cnn1d"}, data={"name": "images"}),
            "model",
            "logreg, mlp, cnn, resnet with data=images",
        ),
        (_raw(clients_per_round=5), "clients_per_round", "<= 4"),
        (
            _raw(strategy={"name": "fedavg", "fraction_evaluate": 1.5}),
            "strategy.fraction_evaluate",
            "<= 1.0",
        ),
        (_raw(data={"name": "digits", "test_fraction": 0}), "data.test_fraction", "> 0.0"),
        (_raw(engine={"name": "spark"}), "engine", "inprocess, ray"),
        (
            _raw(client={"batch_sise": 3}),
            "client.batch_sise",
            "batch_size, bucket_by_length, epochs",
        ),
        (_raw(rounds=0), "rounds", ">= 1"),
        (
            _raw(client={"batch_size": 1}, model={"name": "mlp", "norm": "batch"}),
            "client.batch_size",
            "model.norm=group",
        ),
    ],
)
def test_bad_values_name_key_value_and_allowed(raw, key, fragment):
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    message = str(info.value)
    assert message.startswith(f"{key}=")
    assert fragment in message
    assert "\n" not in message


def test_full_and_integer_batch_sizes_are_accepted():
    assert build_config(_raw(client={"batch_size": FULL_BATCH})).client.batch_size == "full"
    assert build_config(_raw(client={"batch_size": 1})).client.batch_size == 1


def test_config_round_trips_through_json():
    cfg = build_config(
        _raw(strategy={"name": "fedprox", "proximal_mu": 0.1}, model={"name": "cnn1d"})
    )
    assert config_from_json(cfg.to_json()) == cfg
