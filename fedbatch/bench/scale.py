"""The `scale` case: set-up, partitioning, per-round time and peak RSS of the in-process
engine as the registered clients grow, synchronous (FedAvg) and asynchronous (FedBuff
on the virtual clock), with a fixed number of clients per round.

Each registered client holds the same data at every scale (one training sample: the data
grows with the clients), so a round's work is the same whatever the registered count and
any growth of the round time is the engine's. In FedBuff, `clients_per_round` clients
train at once (`concurrency`) and each aggregation (a row, a "round") takes as many
arrivals (`buffer_size`).
"""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.table import Table

from fedbatch.bench.cases import BenchCase
from fedbatch.config import RunConfig

MODES = ("sync", "fedbuff")
# Samples generated per registered client: one for training after the 20% test split.
SAMPLES_PER_CLIENT = 1.25


def scale_config(case: BenchCase, mode: str, registered: int, per_round: int) -> RunConfig:
    """The case's run with `registered` clients, `per_round` of them per round, in `mode`."""
    data = case.raw["data"] | {"num_samples": round(SAMPLES_PER_CLIENT * registered)}
    top: dict[str, Any] = {"num_clients": registered, "clients_per_round": per_round}
    top["data"] = data
    if mode == "fedbuff":
        strategy = {"name": "fedbuff", "concurrency": per_round, "buffer_size": per_round}
        top |= {"strategy": strategy, "clock": {"name": "devices"}}
    return case.config(**top)


def scale_runs(case: BenchCase) -> dict[str, RunConfig]:
    """Label (`mode@registered/per_round`) → config, smallest registered count first."""
    return {
        f"{mode}@{registered}/{per_round}": scale_config(case, mode, registered, per_round)
        for mode in MODES
        for per_round in case.per_round
        for registered in sorted(case.registered)
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def bench_scale(case: BenchCase, repeats: int, run_once: Any) -> dict[str, Any]:
    """Each configuration `repeats` times, interleaved; medians, peak RSS the max, and the
    round-time ratio to the same mode and clients per round at the fewest registered."""
    configs = scale_runs(case)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
    for _ in range(repeats):
        for label, cfg in configs.items():
            runs[label].append(run_once("inprocess", cfg))
    results: dict[str, Any] = {}
    baseline: dict[str, float] = {}
    for label, cfg in configs.items():
        done = runs[label]
        round_seconds = [s for r in done for s in r.get("round_seconds", [])]
        result = {
            "registered": cfg.num_clients,
            "per_round": cfg.clients_per_round,
            "setup_seconds": _median(done, "setup_seconds"),
            "data_seconds": _median(done, "data_seconds"),
            "partition_seconds": _median(done, "partition_seconds"),
            "round_seconds_median": statistics.median(round_seconds),
            "seconds": min(r["seconds"] for r in done),
            "rss_mb": max(r["rss_mb"] for r in done),
            "accuracy": done[0]["accuracy"],
            "repeats": len(done),
        }
        group = label.split("@")[0] + f"/{cfg.clients_per_round}"
        baseline.setdefault(group, result["round_seconds_median"])
        result["round_ratio"] = result["round_seconds_median"] / baseline[group]
        results[label] = result
    return results


def print_scale_table(case: BenchCase, results: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{case.name}: {case.description}")
    for column in ("run", "set-up s", "data s", "partition s", "round s", "round ratio",
                   "RSS MB", "accuracy"):  # fmt: skip
        table.add_column(column, justify="right")
    for label, r in results.items():
        table.add_row(
            label,
            f"{r['setup_seconds']:.2f}",
            f"{r['data_seconds']:.2f}",
            f"{r['partition_seconds']:.3f}",
            f"{r['round_seconds_median']:.3f}",
            f"{r['round_ratio']:.2f}",
            f"{r['rss_mb']:.0f}",
            f"{r['accuracy']:.4f}",
        )
    console.print(table)
