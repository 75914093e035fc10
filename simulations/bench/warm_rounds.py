"""Round ratios of bench runners in one warm process, interleaved, in wall or CPU seconds.

    python simulations/bench/warm_rounds.py --case tiny \
        --runners plain,inprocess,probes-off --repeats 5 [--cpu]

Runs the bench's own runner functions (`fedbatch.bench.runners.RUNNERS`, recording the
same round ends as `python -m fedbatch.bench`) one after another in this process, on one
workload built once: no per-run process start or data generation. With `--cpu`, round
ends are read from the process's CPU clock (`rounds.use_cpu_clock`), which does not count
time spent waiting for cores other jobs hold. Prints each runner's median and min round
time and their ratios to the first runner's, and the min CPU seconds of its whole runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import fedbatch.engine.inprocess  # noqa: F401  (imported before any timing, as the bench does)
from fedbatch.bench import rounds
from fedbatch.bench.cases import CASES
from fedbatch.bench.runners import RUNNERS
from fedbatch.federated.workload import workload_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", default="tiny")
    parser.add_argument("--runners", default="plain,inprocess,probes-off")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu", action="store_true", help="CPU seconds instead of wall")
    args = parser.parse_args()
    if args.cpu:
        rounds.use_cpu_clock()
    case, names = CASES[args.case], args.runners.split(",")
    specs = {name: case.runner_config(name) for name in names}
    workload = workload_for(specs[names[0]][1].to_json())
    round_times: dict[str, list[float]] = {name: [] for name in names}
    run_cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            runner, cfg = specs[name]
            rounds.ROUND_SECONDS.clear()
            started = time.process_time()
            RUNNERS[runner](cfg, workload)
            run_cpu[name].append(time.process_time() - started)
            round_times[name].extend(rounds.ROUND_SECONDS)
    base = round_times[names[0]]
    for name, values in round_times.items():
        print(
            f"{name:>11}  round median {statistics.median(values) * 1e3:7.2f} ms "
            f"(ratio {statistics.median(values) / statistics.median(base):.3f})  "
            f"min {min(values) * 1e3:7.2f} ms (ratio {min(values) / min(base):.3f})  "
            f"run CPU min {min(run_cpu[name]):.3f} s "
            f"(ratio {min(run_cpu[name]) / min(run_cpu[names[0]]):.3f})"
        )


if __name__ == "__main__":
    main()
