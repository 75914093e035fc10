"""Drift transforms: covariate shifts of the inputs, concept shift of the labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedbatch.config.stream import StreamConfig
from fedbatch.data.drift import DriftTransform, derangement

CONCEPT = torch.tensor([1, 0, 1, 0, 0], dtype=torch.int8)


def _transform(seed: int = 0, features: int = 6, classes: int = 10, **kw: Any) -> DriftTransform:
    cfg = StreamConfig(name="poisson", drift_at=10.0, **kw)
    return DriftTransform(cfg, seed, features, classes)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 2, 3, generator=g), torch.tensor([0, 1, 2, 3, 9])


def test_covariate_noise_shifts_by_a_fixed_vector():
    t = _transform(drift="covariate", covariate="noise", drift_strength=0.5)
    x, y = _data()
    x0, y0 = x.clone(), y.clone()
    out, out_y = t.apply(x, y, CONCEPT)
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched
    assert out.shape == x.shape and torch.equal(out_y, y)
    shift = (out - x).reshape(5, -1)
    assert torch.allclose(shift[0], 0.5 * t.offset) and torch.allclose(shift[2], shift[0])
    assert torch.equal(shift[[1, 3, 4]], torch.zeros(3, 6))
    again = _transform(drift="covariate", covariate="noise", drift_strength=0.5)
    assert torch.equal(again.offset, t.offset)
    assert not torch.equal(_transform(seed=1, drift="covariate").offset, t.offset)


def test_covariate_scale_multiplies_drifted_rows():
    t = _transform(drift="covariate", covariate="scale", drift_strength=3.0)
    x, y = _data()
    out, _ = t.apply(x, y, CONCEPT)
    assert torch.allclose(out[[0, 2]], 3.0 * x[[0, 2]])
    assert torch.equal(out[[1, 3, 4]], x[[1, 3, 4]])


def test_rotation_is_orthogonal_and_preserves_norms():
    t = _transform(drift="covariate", covariate="rotation", drift_strength=1.0)
    assert torch.allclose(t.rotation @ t.rotation.T, torch.eye(6, dtype=torch.float64), atol=1e-12)
    x, y = _data()
    out, _ = t.apply(x, y, torch.ones(5))
    flat, rotated = x.reshape(5, -1), out.reshape(5, -1)
    assert torch.allclose(rotated.norm(dim=1), flat.norm(dim=1), atol=1e-5)
    assert not torch.allclose(rotated, flat)
    half = _transform(drift="covariate", covariate="rotation", drift_strength=0.25)
    mixed, _ = half.apply(x, y, CONCEPT)
    expect = 0.75 * flat[0] + 0.25 * (flat[0] @ t.rotation.float())
    assert torch.allclose(mixed.reshape(5, -1)[0], expect, atol=1e-6)
    assert torch.equal(mixed[1], x[1])


@pytest.mark.parametrize("classes", range(2, 11))
def test_concept_permutation_is_a_derangement_applied_to_drifted_rows(classes):
    for seed in range(5):
        perm = _transform(seed=seed, drift="concept", classes=classes).perm
        assert sorted(perm.tolist()) == list(range(classes))
        assert all(perm[c] != c for c in range(classes))
    t = _transform(drift="concept", classes=classes)
    x, y = _data()
    y = y % classes
    y0 = y.clone()
    out_x, out_y = t.apply(x, y, CONCEPT)
    assert torch.equal(y, y0) and out_x is x
    assert torch.equal(out_y[[0, 2]], t.perm[y[[0, 2]]])
    assert torch.equal(out_y[[1, 3, 4]], y[[1, 3, 4]])
    assert torch.all(out_y[[0, 2]] != y[[0, 2]])


def test_derangement_is_uniform_over_the_two_of_three():
    rng = np.random.default_rng(0)
    draws = [tuple(derangement(3, rng)) for _ in range(2000)]
    assert set(draws) == {(1, 2, 0), (2, 0, 1)}
    assert abs(draws.count((1, 2, 0)) / 2000 - 0.5) < 0.05
    with pytest.raises(ValueError, match="at least 2 classes"):
        derangement(1, rng)


@pytest.mark.parametrize("drift", ["none", "label"])
def test_label_and_no_drift_are_the_identity(drift):
    t = _transform(drift=drift)
    x, y = _data()
    out_x, out_y = t.apply(x, y, torch.ones(5))
    assert out_x is x and out_y is y


def test_no_drifted_row_changes_nothing():
    t = _transform(drift="covariate", covariate="scale", drift_strength=2.0)
    x, y = _data()
    out_x, out_y = t.apply(x, y, torch.zeros(5))
    assert torch.equal(out_x, x) and torch.equal(out_y, y)


def test_wrong_feature_count_is_an_error():
    t = _transform(drift="covariate", features=4)
    x, y = _data()
    with pytest.raises(ValueError, match="expected 4 features, got 6"):
        t.apply(x, y, CONCEPT)
