"""Time one multirun with Hydra's basic launcher (one job after another) and with
`hydra/launcher=parallel` (joblib: cores // engine.threads jobs at once), interleaved.

    python simulations/bench/sweep_parallel.py --rounds 100 --batch-sizes 8,16,32,64 --repeats 3

Each sweep runs as a user runs it (`python -m fedbatch.simulate -m ...` in a fresh
process, start-up included) into a temporary sweep directory. Both sweep.csv files must
be complete (one `ok` row per job) and agree on every job's test accuracy, since the seeds
are fixed; the command fails otherwise. Per launcher it prints the most jobs seen running
at once (from each job's start and end file times), min and median wall seconds, the jobs'
own training seconds summed (median; it grows when jobs compete for cores) and the
largest share of the machine's CPU that other processes used during a sweep (Linux; a
shared machine's noise), then the ratio sequential / parallel of the min wall times.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = {"basic": [], "parallel": ["hydra/launcher=parallel"]}


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on this machine has used since boot (/proc/stat), or None."""
    try:
        ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def own_children_seconds() -> float:
    """CPU seconds of this process's finished children (the sweeps and their workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    training: list[float] = field(default_factory=list)
    other_load: list[float] = field(default_factory=list)
    at_once: int = 0


def run_sweep(launcher: str, overrides: list[str], sweep_dir: Path, timings: Timings) -> None:
    """One multirun as a user runs it; adds its wall seconds and other processes' load."""
    command = [
        sys.executable, "-m", "fedbatch.simulate", "-m", *overrides, *LAUNCHERS[launcher],
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    busy, own, start = machine_busy_seconds(), own_children_seconds(), time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed:\n{result.stderr[-2000:]}")
    timings.wall.append(wall)
    busy_after = machine_busy_seconds()
    if busy is not None and busy_after is not None:
        other = (busy_after - busy) - (own_children_seconds() - own)
        timings.other_load.append(max(0.0, other) / (wall * (os.cpu_count() or 1)))


def finished_jobs(sweep_dir: Path, jobs: int) -> list[dict[str, str]]:
    """The rows of sweep.csv, which must be `jobs` finished runs."""
    with (sweep_dir / "sweep.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != jobs or any(row["status"] != "ok" for row in rows):
        raise SystemExit(f"{sweep_dir / 'sweep.csv'}: expected {jobs} ok rows, got {rows}")
    return rows


def most_at_once(sweep_dir: Path) -> int:
    """The most jobs running at the same time: a job runs from its saved config to its summary."""
    spans = [
        ((job / ".hydra" / "config.yaml").stat().st_mtime, (job / "summary.json").stat().st_mtime)
        for job in sweep_dir.iterdir()
        if (job / "summary.json").is_file()
    ]
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=100, help="rounds of each job")
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="one job per B")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per launcher")
    parser.add_argument("--threads", type=int, default=1, help="engine.threads of each job")
    args = parser.parse_args()
    overrides = [
        f"rounds={args.rounds}", f"engine.threads={args.threads}", "progress=off",
        f"client.batch_size={args.batch_sizes}",
    ]  # fmt: skip
    jobs = len(args.batch_sizes.split(","))
    timings = {launcher: Timings() for launcher in LAUNCHERS}
    accuracies: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for launcher, timing in timings.items():
                sweep_dir = Path(tmp) / f"{launcher}-{repeat}"
                run_sweep(launcher, overrides, sweep_dir, timing)
                rows = finished_jobs(sweep_dir, jobs)
                accuracies[launcher] = {row["overrides"]: row["test_accuracy"] for row in rows}
                timing.training.append(sum(float(row["seconds"]) for row in rows))
                timing.at_once = max(timing.at_once, most_at_once(sweep_dir))
    if accuracies["basic"] != accuracies["parallel"]:
        raise SystemExit(f"the launchers disagree on test accuracy: {accuracies}")
    print(f"{jobs} jobs ({' '.join(overrides)}), {args.repeats} interleaved runs per launcher")
    print("| launcher | jobs at once | wall min s | wall median s | training s | other load |")
    print("|---|---|---|---|---|---|")
    for launcher, timing in timings.items():
        load = f"{max(timing.other_load):.0%}" if timing.other_load else "n/a"
        print(
            f"| {launcher} | {timing.at_once} | {min(timing.wall):.1f} | "
            f"{statistics.median(timing.wall):.1f} | {statistics.median(timing.training):.1f} | "
            f"{load} |"
        )
    ratio = min(timings["basic"].wall) / min(timings["parallel"].wall)
    print(f"sequential / parallel (min wall): {ratio:.2f}")
    for job, accuracy in accuracies["basic"].items():
        print(f"  {job}: test accuracy {float(accuracy):.4f} (both launchers)")


if __name__ == "__main__":
    main()
