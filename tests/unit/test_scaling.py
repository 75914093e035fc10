"""fedbatch.report.scaling: best LR per B, edge flags, and the fit S = S_min + E_min / B.

Expected numbers are worked out by hand in the comments, or by an independent brute-force
search over (S_min, E_min); none comes from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedbatch.report.scaling import (
    FLAG_HIGHEST,
    FLAG_INSIDE,
    FLAG_LOWEST,
    FLAG_UNTUNED,
    BestPoint,
    Trial,
    choose_fit,
    fit_steps_vs_batch,
    place_batches,
    select_best,
)

BATCHES = [4, 8, 16, 32, 64, 128, 256]


def test_exact_curve_recovers_s_min_e_min_and_b_crit() -> None:
    steps = [100 + 2000 / b for b in BATCHES]  # 600, 350, 225, 162.5, ...
    fit = fit_steps_vs_batch(BATCHES, steps)
    assert fit.s_min == pytest.approx(100, rel=1e-6)
    assert fit.e_min == pytest.approx(2000, rel=1e-6)
    assert fit.b_crit == pytest.approx(20, rel=1e-6)
    assert fit.r_squared == pytest.approx(1, abs=1e-6)
    assert fit.n == 7


def test_perfect_scaling_and_no_benefit_are_the_two_ends() -> None:
    # S = 1000/B: halving steps per doubling of B at every B -> S_min = 0, B_crit = inf
    perfect = fit_steps_vs_batch(BATCHES, [1000 / b for b in BATCHES])
    assert perfect.s_min == 0.0 and perfect.e_min == pytest.approx(1000, rel=1e-9)
    assert perfect.b_crit == math.inf and perfect.r_squared == pytest.approx(1)
    # S = 50 whatever B: E_min = 0, B_crit = 0; log S has no variance, so R² is undefined
    flat = fit_steps_vs_batch(BATCHES, [50.0] * 7)
    assert (flat.s_min, flat.e_min, flat.b_crit) == (pytest.approx(50), 0.0, 0.0)
    assert math.isnan(flat.r_squared)


def test_fit_needs_three_distinct_batch_sizes() -> None:
    with pytest.raises(ValueError, match="3 or more"):
        fit_steps_vs_batch([8, 8, 16], [10, 11, 6])


def _log_loss(b: np.ndarray, s: np.ndarray, s_min: np.ndarray, e_min: np.ndarray) -> np.ndarray:
    """Σ_i (log S_i − log(S_min + E_min/B_i))² on a grid of (S_min, E_min) (broadcast)."""
    pred = s_min[..., None] + e_min[..., None] / b
    with np.errstate(divide="ignore"):  # the grid's corner S_min = E_min = 0 has loss inf
        return np.sum((np.log(s) - np.log(pred)) ** 2, axis=-1)


def _brute_force(b: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Grid search, then four zooms of the grid around the best cell."""
    s_lo, s_hi, e_lo, e_hi = 0.0, 400.0, 0.0, 8000.0
    for _ in range(5):
        s_grid, e_grid = np.linspace(s_lo, s_hi, 201), np.linspace(e_lo, e_hi, 201)
        ss, ee = np.meshgrid(s_grid, e_grid, indexing="ij")
        loss = _log_loss(b, s, ss, ee)
        i, j = np.unravel_index(np.argmin(loss), loss.shape)
        ds, de = s_grid[1] - s_grid[0], e_grid[1] - e_grid[0]
        best_s, best_e = float(s_grid[i]), float(e_grid[j])
        s_lo, s_hi = max(best_s - 3 * ds, 0.0), best_s + 3 * ds
        e_lo, e_hi = max(best_e - 3 * de, 0.0), best_e + 3 * de
    return best_s, best_e


def test_noisy_fit_matches_a_brute_force_search() -> None:
    b = np.array(BATCHES, float)
    noise = np.array([0.05, -0.04, 0.03, -0.06, 0.02, 0.04, -0.03])  # fixed log-errors
    s = (100 + 2000 / b) * np.exp(noise)
    fit = fit_steps_vs_batch(b.tolist(), s.tolist())
    s_grid, e_grid = _brute_force(b, s)
    assert fit.s_min == pytest.approx(s_grid, rel=1e-6)
    assert fit.e_min == pytest.approx(e_grid, rel=1e-6)
    assert fit.b_crit == pytest.approx(e_grid / s_grid, rel=2e-6)
    # R² on log S by its definition, at the brute-force optimum
    residual = _log_loss(b, s, np.array(s_grid), np.array(e_grid))
    total = np.sum((np.log(s) - np.log(s).mean()) ** 2)
    assert fit.r_squared == pytest.approx(1 - residual / total, abs=1e-6)
    assert 0.95 < fit.r_squared < 1.0


def _trial(b: float, lr: float, seed: int, steps: float | None, **extra: float) -> Trial:
    return Trial(batch_size=b, lr=lr, seed=seed, steps=steps, **extra)


def test_best_lr_per_b_with_two_seeds_and_edge_flags() -> None:
    trials = [
        # B = 4: 0.05 -> mean(90, 110) = 100 beats 0.1 -> 130: best is the lowest LR tried
        _trial(4, 0.05, 0, 90),
        _trial(4, 0.05, 1, 110),
        _trial(4, 0.1, 0, 130),
        _trial(4, 0.1, 1, 130),
        # B = 8: 0.1 has the fewest steps on seed 0 but seed 1 missed: not reached;
        # 0.2 -> mean(260, 240) = 250 beats 0.05 -> 310: best is the highest LR tried
        _trial(8, 0.05, 0, 300),
        _trial(8, 0.05, 1, 320),
        _trial(8, 0.1, 0, 200),
        _trial(8, 0.1, 1, None),
        _trial(8, 0.2, 0, 260, examples=2080, rounds=13, noise_scale=30),
        _trial(8, 0.2, 1, 240, examples=1920, rounds=12, noise_scale=50),
        # B = 16: 0.1 -> 160 beats 0.05 -> 205; 0.2 missed on both seeds: inside the grid
        _trial(16, 0.05, 0, 200),
        _trial(16, 0.05, 1, 210),
        _trial(16, 0.1, 0, 150),
        _trial(16, 0.1, 1, 170),
        _trial(16, 0.2, 0, None),
        _trial(16, 0.2, 1, None),
        # B = 32: one LR only
        _trial(32, 0.1, 0, 120),
        _trial(32, 0.1, 1, 100),
        # B = 64: nothing reached the target
        _trial(64, 0.1, 0, None),
        _trial(64, 0.2, 1, None),
    ]
    points = select_best(trials)
    table = [(p.batch_size, p.lr, p.steps, p.flag) for p in points]
    assert table == [
        (4, 0.05, 100, FLAG_LOWEST),
        (8, 0.2, 250, FLAG_HIGHEST),
        (16, 0.1, 160, FLAG_INSIDE),
        (32, 0.1, 110, FLAG_UNTUNED),
    ]
    b8 = points[1]
    assert b8.lrs_tried == (0.05, 0.1, 0.2) and b8.seeds == 2
    assert (b8.examples, b8.rounds, b8.noise_scale) == (2000, 12.5, 40)
    assert points[2].lrs_tried == (0.05, 0.1, 0.2)  # LRs that missed count as tried
    assert points[0].noise_scale is None


def _measured(b: float, configured: float | None, lr: float = 0.1) -> Trial:
    return Trial(batch_size=b, lr=lr, seed=0, steps=100.0, configured=configured)


def test_runs_capped_to_the_same_b_are_one_batch_size() -> None:
    trials = [
        _measured(64, 64),
        _measured(128, 128),
        # configured 256: its runs measured 144 and 143 -> the experiment sits at 143.5
        _measured(144, 256, lr=0.1),
        _measured(143, 256, lr=0.2),
        # configured 512: 143.6, within 5% of 143.5 -> one batch size with 256
        _measured(143.6, 512),
        # no configured B (`full`): each its own experiment; 150 is 4.5% above 143.5, so it
        # joins them, and 160 (11.5% above) is a batch size of its own
        _measured(150, None),
        _measured(160, None),
    ]
    # the merged four sit at the median of their runs: median(143, 143.6, 144, 150) = 143.8
    placed = [trial.batch_size for trial in place_batches(trials)]
    assert placed == [64, 128, 143.8, 143.8, 143.8, 143.8, 160]


def _point(b: float, steps: float, flag: str) -> BestPoint:
    lrs = (0.05, 0.1, 0.2)
    return BestPoint(b, 0.1, steps, None, None, 1, lrs, flag, None)


def test_fit_uses_points_inside_their_grid_and_gives_the_fit_on_all_beside() -> None:
    on_curve = [_point(b, 100 + 2000 / b, FLAG_INSIDE) for b in (4, 8, 16)]  # 600, 350, 225
    flagged = _point(64, 400.0, FLAG_HIGHEST)  # far above the curve's 131.25
    choice = choose_fit([*on_curve, flagged])
    assert choice is not None and not choice.on_flagged
    assert choice.points == tuple(on_curve)
    assert choice.fit.b_crit == pytest.approx(20, rel=1e-6)  # 2000/100: the flagged left out
    assert choice.all_points is not None and choice.all_points.n == 4
    expected = fit_steps_vs_batch([4, 8, 16, 64], [600, 350, 225, 400])
    assert choice.all_points.b_crit == pytest.approx(expected.b_crit)
    assert choice.all_points.b_crit != pytest.approx(20, rel=0.1)
    # with every point inside there is nothing to show beside the fit
    alone = choose_fit(on_curve)
    assert alone is not None and alone.all_points is None and not alone.on_flagged


def test_fit_rests_on_flagged_points_when_fewer_than_three_are_inside() -> None:
    points = [
        _point(4, 600, FLAG_INSIDE),
        _point(8, 350, FLAG_LOWEST),
        _point(16, 225, FLAG_UNTUNED),
        _point(32, 162.5, FLAG_INSIDE),
    ]
    choice = choose_fit(points)
    assert choice is not None and choice.on_flagged and choice.all_points is None
    assert choice.fit.n == 4 and choice.fit.b_crit == pytest.approx(20, rel=1e-6)
    assert choose_fit(points[:2]) is None  # two B: nothing to fit
