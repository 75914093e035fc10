"""A model too large for memory is refused from its shapes alone, before any allocation."""

from __future__ import annotations

import pytest

from fedbatch.config import ConfigError
from fedbatch.sizes import (
    BYTES_PER_PARAMETER,
    BYTES_PER_VALUE,
    check_data_fits,
    check_model_fits,
    parameter_count,
)
from tests.conftest import tiny_config


def test_the_parameter_count_is_the_layers_by_hand():
    cfg = tiny_config(model={"name": "mlp", "hidden": [32, 16]})
    # 64 → 32 → 16 → 10, each a weight matrix and a bias
    assert parameter_count(cfg, (64,), 10) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)


def test_a_model_beyond_memory_is_one_line_naming_its_size():
    cfg = tiny_config(model={"name": "mlp", "hidden": [1000, 1000]})
    parameters = (64 * 1000 + 1000) + (1000 * 1000 + 1000) + (1000 * 10 + 10)
    check_model_fits(cfg, (64,), 10, memory=parameters * BYTES_PER_PARAMETER)  # just fits
    with pytest.raises(ConfigError) as refused:
        check_model_fits(cfg, (64,), 10, memory=parameters * BYTES_PER_PARAMETER - 1)
    message = str(refused.value)
    assert message.startswith("model.hidden=[1000, 1000] is invalid: allowed a model that fits")
    assert f"{parameters:,} parameters" in message and "\n" not in message


def test_a_huge_model_is_refused_on_this_machine_before_any_allocation():
    cfg = tiny_config(model={"name": "mlp", "hidden": [200_000, 200_000]})  # 4e10 parameters
    with pytest.raises(ConfigError, match=r"model\.hidden="):
        check_model_fits(cfg, (64,), 10)


def test_a_dataset_beyond_memory_is_refused_from_its_counts():
    cfg = tiny_config(data={"name": "synthetic", "num_samples": 1000, "num_features": 60})
    check_data_fits(cfg, memory=1000 * 60 * BYTES_PER_VALUE)  # just fits
    with pytest.raises(ConfigError) as refused:
        check_data_fits(cfg, memory=1000 * 60 * BYTES_PER_VALUE - 1)
    assert str(refused.value).startswith("data.num_samples=1000 is invalid: allowed at most 999")
    check_data_fits(tiny_config(), memory=1)  # digits: a fixed size, not generated


@pytest.mark.parametrize(("max_length", "values"), [(256, 2 * 243), (10, 2 * 23 * 11)])
def test_generated_text_is_sized_with_its_pieces(max_length, values):
    # the longest sentence, 242 characters, is 243 pairs: one row of 243 positions, or,
    # cut at 10 characters, 23 rows of 11 (22 · 11 = 242 < 243), inputs and targets
    data = {"name": "text", "num_samples": 100, "max_length": max_length}
    cfg = tiny_config(data=data, model={"name": "gru"})
    check_data_fits(cfg, memory=100 * values * BYTES_PER_VALUE)  # just fits
    with pytest.raises(ConfigError, match=r"data\.num_samples=100"):
        check_data_fits(cfg, memory=100 * values * BYTES_PER_VALUE - 1)
