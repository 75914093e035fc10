"""A sweep's runs as `scaling.Trial`s, grouped into the experiments that can share one fit.

A run's B is the one its clients measured: the median over trained rounds of the rows'
`effective_batch_size` (the clients' mean B × accumulate, already capped at their data). The
config's client.batch_size × client.accumulate is only the fallback for rows without it: a
configured B of 256 on clients holding 144 samples trains at 144, and placing it at 256
would draw a point where no run was. LR, seed and K come from the resolved config, since a
value left at its default appears in no override.

Runs that differ in anything but B, LR and seed (another partition, model, K...) are
different experiments: the best LR per B and the fit are taken within each group of runs
sharing every other override, never across them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedbatch.metrics.sweep import FINISHED, RunRecord, config_value
from fedbatch.report.scaling import Trial

# Overrides that place a run within its experiment rather than make another experiment.
WITHIN_EXPERIMENT = ("client.batch_size", "client.accumulate", "client.lr", "seed")

GroupKey = tuple[tuple[str, str], ...]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _setting(run: RunRecord, key: str) -> Any:
    """The resolved config's value, else the override's (runs older than config.yaml)."""
    value = config_value(run.config, key)
    return value if value is not None else run.overrides.get(key)


def configured_batch_size(run: RunRecord) -> float | None:
    """client.batch_size × client.accumulate; None when B is not a number (`full`)."""
    batch = _number(_setting(run, "client.batch_size"))
    if batch is None:
        return None
    return batch * (_number(_setting(run, "client.accumulate")) or 1.0)


def measured_batch_size(run: RunRecord) -> float | None:
    """Median over trained rounds (round ≥ 1) of the rows' `effective_batch_size`."""
    values = []
    for row in run.rows:
        round_number = _number(row.get("round"))
        value = _number(row.get("effective_batch_size"))
        if value is not None and value > 0 and (round_number is None or round_number >= 1):
            values.append(value)
    return statistics.median(values) if values else None


def effective_batch_size(run: RunRecord) -> float | None:
    """The measured B, else the configured one (rows without `effective_batch_size`)."""
    measured = measured_batch_size(run)
    return measured if measured is not None else configured_batch_size(run)


def clients_per_round(run: RunRecord) -> int | None:
    """K, the clients whose updates one aggregated step averages."""
    value = _number(_setting(run, "clients_per_round"))
    return None if value is None else int(value)


def group_key(run: RunRecord) -> GroupKey:
    """The run's overrides other than B, LR, seed and hydra.*: its experiment."""
    return tuple(
        sorted(
            (key, value)
            for key, value in run.overrides.items()
            if key not in WITHIN_EXPERIMENT and not key.startswith("hydra.")
        )
    )


def _fixed_batch(run: RunRecord) -> bool:
    schedule = _setting(run, "batch.name")
    per_client = _setting(run, "batch.per_client")
    return schedule in (None, "constant") and per_client in (None, "same")


def global_noise_scale(run: RunRecord) -> float | None:
    """The pooled data's B_simple: the exact per-example value where the run measured it
    (`noise_scale_exact_global`, the median over its rounds: B_simple moves as training
    goes), else the estimator's (`noise_scale_global`: summary.json's final running value,
    else the last a row carries). With one client, whose data is the pooled data (a
    centralized run: no other client to compare with), its own `noise_scale_local`."""
    exact = [v for v in (_number(row.get("noise_scale_exact_global")) for row in run.rows) if v]
    if exact:
        return statistics.median(exact)
    keys = ["noise_scale_global"]
    if _number(_setting(run, "num_clients")) == 1:
        keys.append("noise_scale_local")
    for key in keys:
        rows = [_number(row.get(key)) for row in reversed(run.rows)]
        last_row = next((v for v in rows if v is not None), None)
        value = _number(run.summary.get(key))
        if value is not None or last_row is not None:
            return value if value is not None else last_row
    return None


def cap_reason(run: RunRecord) -> str:
    """Why a run's measured B is below its configured one."""
    policy = _setting(run, "clock.batch_policy")
    if policy in (None, "same", "equal_time"):
        return "capped by the clients' data"
    return f"capped by the clients' data or devices (clock.batch_policy={policy})"


@dataclass
class TrialGroup:
    """The trials of one experiment, with each run's K and the reason its B was capped."""

    key: GroupKey
    trials: list[Trial] = field(default_factory=list)
    clients: list[int | None] = field(default_factory=list)
    reasons: dict[float, str] = field(default_factory=dict)  # configured B -> why capped


def trial_of(run: RunRecord) -> Trial | None:
    """The run as a trial, or None when it has no B; an unfinished run counts as missed."""
    batch = effective_batch_size(run)
    if batch is None or batch <= 0:
        return None
    finished = run.status in FINISHED
    seed = _number(_setting(run, "seed"))
    return Trial(
        batch_size=batch,
        lr=_number(_setting(run, "client.lr")),
        seed=None if seed is None else int(seed),
        steps=_number(run.summary.get("steps_to_target")) if finished else None,
        examples=_number(run.summary.get("examples_to_target")),
        rounds=_number(run.summary.get("rounds_to_target")),
        noise_scale=global_noise_scale(run),
        configured=configured_batch_size(run),
    )


def groups_from_runs(runs: Sequence[RunRecord]) -> tuple[list[TrialGroup], list[str]]:
    """The runs' trials by experiment (in order of first run), and one note per kind of run
    left out or counted as missed."""
    groups: dict[GroupKey, TrialGroup] = {}
    varying, unknown, unfinished = [], [], []
    for run in runs:
        if not _fixed_batch(run):
            varying.append(run.name)
            continue
        trial = trial_of(run)
        if trial is None:
            unknown.append(run.name)
            continue
        if run.status not in FINISHED:
            unfinished.append(run.name)
        key = group_key(run)
        group = groups.setdefault(key, TrialGroup(key))
        group.trials.append(trial)
        group.clients.append(clients_per_round(run))
        if trial.configured is not None and trial.batch_size < trial.configured:
            group.reasons.setdefault(trial.configured, cap_reason(run))
    notes = []
    if varying:
        notes.append(f"left out, B varies within the run: jobs {', '.join(varying)}")
    if unknown:
        notes.append(f"left out, B unknown: jobs {', '.join(unknown)}")
    if unfinished:
        notes.append(f"unfinished, counted as not reached: jobs {', '.join(unfinished)}")
    return list(groups.values()), notes


def group_labels(groups: Sequence[TrialGroup]) -> list[str]:
    """Each group's overrides that tell it apart from the others ("" for a single group); a
    key another group overrides and this one does not is at its config default."""
    if len(groups) < 2:
        return ["" for _ in groups]
    keys = {key for group in groups for key, _ in group.key}
    values = [dict(group.key) for group in groups]
    varying = sorted(k for k in keys if len({v.get(k) for v in values}) > 1)
    return [", ".join(f"{k}={v.get(k, 'default')}" for k in varying) for v in values]
