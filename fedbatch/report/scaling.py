"""Steps to target against batch size: the best LR per B, and S = S_min + E_min / B.

McCandlish et al. (2018) predict that the optimizer steps S and examples E needed to reach a
target trade off as (S/S_min − 1)(E/E_min − 1) = 1, i.e. S = S_min + E_min/B, with the
critical batch size B_crit = E_min/S_min. The relation holds for a *tuned* LR at each B
(Shallue et al. 2019), so a sweep is reduced to one point per B: the LR with the fewest
steps, and a flag when that LR sits at the edge of the grid tried (the true optimum may lie
outside it, and the point then only bounds the tuned steps from above).

The fit minimises Σ (log S_i − log(S_min + E_min/B_i))² with S_min, E_min ≥ 0: errors in
steps are multiplicative (a seed shifts S by a factor), and a plain fit in S would let the
small-B points, with their large S, decide everything. Writing S = S_min (1 + c/B) with
c = B_crit, the best log S_min for a given c is a mean, so the fit is a 1-D search over c
in [0, ∞], both ends (no benefit from B; perfect scaling) included exactly. Only points whose
best LR lies inside its grid are valid (docs/science.md), so `choose_fit` fits those when
there are enough of them, and says when a fit has to rest on flagged points instead.

Pure: no files, no plotting, so every number here can be checked by hand.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

MIN_DISTINCT_B = 3  # two parameters: fewer batch sizes leave nothing to test the curve
SAME_B_RELATIVE = 0.05  # measured B within 5% of each other are one batch size (see below)
FLAG_INSIDE = ""
FLAG_LOWEST = "lowest LR tried"
FLAG_HIGHEST = "highest LR tried"
FLAG_UNTUNED = "untuned (one LR)"
_GRID_DECADES = 6  # the search for B_crit spans B_min·1e-6 .. B_max·1e6, then its ends
_GRID_POINTS = 1201


@dataclass(frozen=True)
class Trial:
    """One run: its effective B, LR and seed, and what it took to reach the target.

    `batch_size` is the B the clients measured (capped at their data); `configured` is what
    the config asked for (None when it names no number, e.g. `full`). `steps` is None when
    the run did not reach the target (or did not finish).
    """

    batch_size: float
    lr: float | None
    seed: int | None
    steps: float | None
    examples: float | None = None
    rounds: float | None = None
    noise_scale: float | None = None  # the run's global B_simple, when measured
    configured: float | None = None


@dataclass(frozen=True)
class BestPoint:
    """A batch size's best LR and its steps (mean over seeds) to the target."""

    batch_size: float
    lr: float | None
    steps: float
    examples: float | None
    rounds: float | None
    seeds: int
    lrs_tried: tuple[float, ...]
    flag: str  # FLAG_INSIDE, or why the point may not be the tuned optimum
    noise_scale: float | None  # median global B_simple over the chosen runs that measured it


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None and math.isfinite(value)]
    return statistics.median(present) if present else None


def edge_flag(best_lr: float | None, lrs_tried: Sequence[float]) -> str:
    """Where the best LR sits in the grid tried at its B."""
    if best_lr is None or len(set(lrs_tried)) < 2:
        return FLAG_UNTUNED
    if best_lr <= min(lrs_tried):
        return FLAG_LOWEST
    if best_lr >= max(lrs_tried):
        return FLAG_HIGHEST
    return FLAG_INSIDE


def place_batches(trials: Sequence[Trial], tolerance: float = SAME_B_RELATIVE) -> list[Trial]:
    """The trials with one measured B per experiment, so that select_best can pool them.

    The runs of one configured B are one experiment even where their measured B differ a
    little (a run that stopped earlier averaged fewer rounds of sampled clients): they go
    to the median of their measured B. Configured B whose positions then lie within
    `tolerance` (relative) of each other were capped to the same B by the clients' data,
    e.g. 256 and 512 on clients holding 144 samples: they are one batch size, at the
    median over all their runs. A trial without a configured B is its own experiment.
    """
    experiments: dict[float, list[int]] = {}
    for index, trial in enumerate(trials):
        key = trial.configured if trial.configured is not None else trial.batch_size
        experiments.setdefault(key, []).append(index)
    positions = sorted(
        (statistics.median(trials[i].batch_size for i in members), members)
        for members in experiments.values()
    )
    placed = list(trials)
    start = 0
    while start < len(positions):
        end = start + 1
        while end < len(positions) and positions[end][0] <= positions[start][0] * (1 + tolerance):
            end += 1
        members = [i for _, group in positions[start:end] for i in group]
        batch = statistics.median(trials[i].batch_size for i in members)
        for i in members:
            placed[i] = dataclasses.replace(trials[i], batch_size=batch)
        start = end
    return placed


def select_best(trials: Sequence[Trial]) -> list[BestPoint]:
    """One point per B that reached the target, sorted by B.

    Seeds of one (B, LR) are averaged; if any seed missed the target the (B, LR) counts as
    not reached (an LR that works only on lucky seeds is not a tuned LR). Among the reached
    LRs of a B the fewest mean steps wins, the smaller LR on a tie.
    """
    cells: dict[tuple[float, float | None], list[Trial]] = {}
    for trial in trials:
        cells.setdefault((trial.batch_size, trial.lr), []).append(trial)
    candidates: dict[float, list[tuple[float, float | None, list[Trial]]]] = {}
    for (batch_size, lr), cell in cells.items():
        steps = [trial.steps for trial in cell]
        if all(value is not None for value in steps):
            mean_steps = _mean(steps)
            assert mean_steps is not None
            candidates.setdefault(batch_size, []).append((mean_steps, lr, cell))
    points = []
    for batch_size, options in sorted(candidates.items()):
        steps, lr, cell = min(options, key=lambda o: (o[0], math.inf if o[1] is None else o[1]))
        lrs = tuple(sorted({b_lr for (b, b_lr) in cells if b == batch_size and b_lr is not None}))
        points.append(
            BestPoint(
                batch_size=batch_size,
                lr=lr,
                steps=steps,
                examples=_mean([trial.examples for trial in cell]),
                rounds=_mean([trial.rounds for trial in cell]),
                seeds=len(cell),
                lrs_tried=lrs,
                flag=edge_flag(lr, lrs),
                noise_scale=_median([trial.noise_scale for trial in cell]),
            )
        )
    return points


@dataclass(frozen=True)
class ScalingFit:
    """S = S_min + E_min / B fitted on log S; B_crit = E_min / S_min."""

    s_min: float
    e_min: float
    r_squared: float  # on log S; nan when every S is the same
    n: int

    @property
    def b_crit(self) -> float:
        if self.s_min == 0.0:
            return math.inf if self.e_min > 0.0 else math.nan
        return self.e_min / self.s_min

    def steps(self, batch_size: float) -> float:
        return self.s_min + self.e_min / batch_size


def log_loss(
    batch_sizes: Sequence[float], steps: Sequence[float], s_min: float, e_min: float
) -> float:
    """Σ (log S_i − log(S_min + E_min/B_i))², the quantity the fit minimises."""
    b, s = np.asarray(batch_sizes, float), np.asarray(steps, float)
    return float(np.sum((np.log(s) - np.log(s_min + e_min / b)) ** 2))


def _profile(log_b: np.ndarray, log_s: np.ndarray, log_c: float) -> tuple[float, float]:
    """(loss, best log S_min) for B_crit = exp(log_c); log_c = ±inf are the two ends."""
    if log_c == -math.inf:
        shape = np.zeros_like(log_b)
    elif log_c == math.inf:  # S = E_min / B: "log S_min" stands for log E_min here
        shape = -log_b
    else:
        shape = np.logaddexp(0.0, log_c - log_b)  # log(1 + c/B), stable for any c
    offset = float(np.mean(log_s - shape))
    return float(np.sum((log_s - shape - offset) ** 2)), offset


def fit_steps_vs_batch(batch_sizes: Sequence[float], steps: Sequence[float]) -> ScalingFit:
    """Least-squares fit of log S = log(S_min + E_min/B), S_min, E_min ≥ 0."""
    b, s = np.asarray(batch_sizes, float), np.asarray(steps, float)
    if b.shape != s.shape or len(set(b.tolist())) < MIN_DISTINCT_B:
        raise ValueError(f"need steps at {MIN_DISTINCT_B} or more distinct batch sizes")
    if np.any(b <= 0) or np.any(s <= 0) or not np.all(np.isfinite(b * s)):
        raise ValueError("batch sizes and steps must be positive and finite")
    log_b, log_s = np.log(b), np.log(s)
    grid = np.linspace(
        log_b.min() - _GRID_DECADES * math.log(10),
        log_b.max() + _GRID_DECADES * math.log(10),
        _GRID_POINTS,
    )
    losses = [_profile(log_b, log_s, float(u))[0] for u in grid]
    k = int(np.argmin(losses))
    low, high = float(grid[max(k - 1, 0)]), float(grid[min(k + 1, len(grid) - 1)])
    refined = minimize_scalar(
        lambda u: _profile(log_b, log_s, u)[0],
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-12},
    )
    ends = (float(refined.x), float(grid[k]), -math.inf, math.inf)
    best = min(ends, key=lambda u: _profile(log_b, log_s, u)[0])
    loss, offset = _profile(log_b, log_s, best)
    if best == math.inf:
        s_min, e_min = 0.0, math.exp(offset)
    else:
        s_min = math.exp(offset)
        e_min = 0.0 if best == -math.inf else s_min * math.exp(best)
    total = float(np.sum((log_s - log_s.mean()) ** 2))
    r_squared = 1.0 - loss / total if total > 0 else math.nan
    return ScalingFit(s_min=s_min, e_min=e_min, r_squared=r_squared, n=len(b))


@dataclass(frozen=True)
class FitChoice:
    """The fit to report, on which points, and the fit on every point beside it.

    `points` are those `fit` used. `all_points` is the fit on every point when the main fit
    left flagged points out (to show how much they move B_crit), else None. `on_flagged`
    says the main fit had to include flagged points: too few B had their best LR inside.
    """

    fit: ScalingFit
    points: tuple[BestPoint, ...]
    all_points: ScalingFit | None
    on_flagged: bool


def _fit_points(points: Sequence[BestPoint]) -> ScalingFit:
    return fit_steps_vs_batch([p.batch_size for p in points], [p.steps for p in points])


def choose_fit(points: Sequence[BestPoint]) -> FitChoice | None:
    """Fit the points whose best LR is inside its grid if 3 or more B have one, else all
    points (flagged ones included); None with fewer than 3 B in all."""
    inside = tuple(p for p in points if p.flag == FLAG_INSIDE)
    if len({p.batch_size for p in inside}) >= MIN_DISTINCT_B:
        every = _fit_points(points) if len(inside) < len(points) else None
        return FitChoice(_fit_points(inside), inside, every, on_flagged=False)
    if len({p.batch_size for p in points}) >= MIN_DISTINCT_B:
        return FitChoice(_fit_points(points), tuple(points), None, on_flagged=True)
    return None
