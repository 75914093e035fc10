"""The runners of the benchmark. Each runs a case's federated work once, in this process.

`python -m fedbatch.bench.runners <runner> <config-json> [PROFILE]` prints one JSON line:
seconds (the federated work, engine start-up included, imports and data generation
excluded), peak RSS of this process and final test accuracy; `data_seconds` and
`partition_seconds` (generating the data, partitioning it) and, for fedbatch's engines,
`setup_seconds`: from before the data to the round-0 row (data, partitions, engine, nodes,
initial model: everything before the first client trains). With PROFILE, the timed
section runs under cProfile and its stats are written there (its seconds then include
the profiler's own cost).
"""

from __future__ import annotations

import cProfile
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import import_module
from pathlib import Path

import torch

from fedbatch.bench import rounds
from fedbatch.bench.bare import bare_local_sgd
from fedbatch.config import RunConfig, config_from_json
from fedbatch.federated.workload import Workload, workload_for
from fedbatch.local.trainer import evaluate
from fedbatch.metrics.callbacks import Callback, RoundState
from fedbatch.seeding import sample_clients

# `rounds.now()` when a fedbatch engine's round-0 row was done: its set-up is over.
SET_UP: list[float] = []


class _RoundEnds(Callback):
    """Records when each of a fedbatch engine's rows is done, on the runners' clock."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_round_end(self, state: RoundState) -> None:
        if state.round == 0:
            SET_UP.append(rounds.now())
        else:
            self.ends.append(rounds.now())


def plain(cfg: RunConfig, workload: Workload) -> float:
    """The limit: the same SGD steps and FedAvg average in a bare PyTorch loop."""
    model = workload.initial_model()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    round_ends: list[float] = []
    for server_round in range(1, cfg.rounds + 1):
        clients = sample_clients(cfg.seed, server_round, cfg.num_clients, cfg.clients_per_round)
        total = sum(len(workload.partitions[c]) for c in clients)
        new_state = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for client in clients:
            model.load_state_dict(global_state)
            weight = bare_local_sgd(model, workload, client, server_round) / total
            for key, value in model.state_dict().items():
                new_state[key] += value * weight
        global_state = new_state
        round_ends.append(rounds.now())
    rounds.record_round_ends(round_ends)
    model.load_state_dict(global_state)
    return evaluate(model, workload.x_test, workload.y_test)[1]


def fedbatch_engine(name: str) -> Callable[[RunConfig, Workload], float]:
    def run(cfg: RunConfig, workload: Workload) -> float:
        from fedbatch.engine import run_engine

        cfg = replace(cfg, engine=replace(cfg.engine, name=name))
        round_ends = _RoundEnds()
        with tempfile.TemporaryDirectory() as out:
            summary = run_engine(cfg, Path(out), progress=False, callbacks=[round_ends])
        rounds.record_round_ends(round_ends.ends)
        return float(summary["test_accuracy"])

    return run


RUNNERS: dict[str, Callable[[RunConfig, Workload], float]] = {
    "plain": plain,
    "inprocess": fedbatch_engine("inprocess"),
    "vectorized": fedbatch_engine("vectorized"),
    "ray": fedbatch_engine("ray"),
}


ENGINE_MODULES = {name: f"fedbatch.engine.{name}" for name in ("inprocess", "vectorized", "ray")}

# Runners with heavier imports (Ray's simulation app, pfl), loaded only when asked for.
OPTIONAL_RUNNERS = {
    "flower": "fedbatch.bench.vanilla_flower",
    "pfl": "fedbatch.bench.pfl_runner",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> None:
    runner, config_json, *profile = argv
    if runner in OPTIONAL_RUNNERS:
        RUNNERS[runner] = import_module(OPTIONAL_RUNNERS[runner]).run
    if runner in ENGINE_MODULES:  # imports are not part of the timing, for any runner
        import_module(ENGINE_MODULES[runner])
    cfg = config_from_json(config_json)
    began = rounds.now()
    # Data generation and torch's one-off imports (paid there) are not part of the timing.
    workload = workload_for(cfg.to_json())
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is None:
        accuracy = RUNNERS[runner](cfg, workload)
    else:
        accuracy = profiler.runcall(RUNNERS[runner], cfg, workload)
        profiler.dump_stats(profile[0])
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "rss_mb": peak_rss_mb(), "accuracy": accuracy}
    result |= {"data_seconds": workload.data_seconds}
    result |= {"partition_seconds": workload.partition_seconds}
    if SET_UP:
        result["setup_seconds"] = SET_UP[0] - began
    if rounds.ROUND_SECONDS:
        result["round_seconds"] = rounds.ROUND_SECONDS
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
