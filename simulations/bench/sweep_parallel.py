"""Time one multirun with Hydra's basic launcher (one job after another) and with
`hydra/launcher=parallel` (joblib: cores // engine.threads jobs at once), interleaved.

    python simulations/bench/sweep_parallel.py --rounds 30 --batch-sizes 8,16,32,64 --repeats 1

Each sweep runs as a user runs it (`python -m fedbatch.simulate -m ...` in a fresh
process, start-up included) into a temporary sweep directory. Both sweep.csv files must
be complete (one `ok` row per job) and agree on every job's test accuracy, since the seeds
are fixed; the command fails otherwise. It prints wall seconds, the most jobs seen running
at once (from each job's start and end file times) and the ratio sequential / parallel.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = {"basic": [], "parallel": ["hydra/launcher=parallel"]}


def run_sweep(launcher: str, overrides: list[str], sweep_dir: Path) -> float:
    """Wall seconds of one multirun, process start-up included."""
    command = [
        sys.executable, "-m", "fedbatch.simulate", "-m", *overrides, *LAUNCHERS[launcher],
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed:\n{result.stderr[-2000:]}")
    return seconds


def accuracies(sweep_dir: Path, jobs: int) -> dict[str, str]:
    """{job overrides: test accuracy} from sweep.csv, which must have `jobs` finished rows."""
    with (sweep_dir / "sweep.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != jobs or any(row["status"] != "ok" for row in rows):
        raise SystemExit(f"{sweep_dir / 'sweep.csv'}: expected {jobs} ok rows, got {rows}")
    return {row["overrides"]: row["test_accuracy"] for row in rows}


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
    parser.add_argument("--rounds", type=int, default=30, help="rounds of each job")
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="one job per B")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per launcher")
    parser.add_argument("--threads", type=int, default=1, help="engine.threads of each job")
    args = parser.parse_args()
    overrides = [
        f"rounds={args.rounds}", f"engine.threads={args.threads}", "progress=off",
        f"client.batch_size={args.batch_sizes}",
    ]  # fmt: skip
    jobs = len(args.batch_sizes.split(","))
    times: dict[str, list[float]] = {launcher: [] for launcher in LAUNCHERS}
    at_once: dict[str, int] = {}
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for launcher in LAUNCHERS:
                sweep_dir = Path(tmp) / f"{launcher}-{repeat}"
                times[launcher].append(run_sweep(launcher, overrides, sweep_dir))
                results[launcher] = accuracies(sweep_dir, jobs)
                at_once[launcher] = max(at_once.get(launcher, 0), most_at_once(sweep_dir))
    if results["basic"] != results["parallel"]:
        raise SystemExit(f"the launchers disagree on test accuracy: {results}")
    print(f"{jobs} jobs ({' '.join(overrides)}), {args.repeats} interleaved runs per launcher")
    print("| launcher | jobs at once | min s | median s |")
    print("|---|---|---|---|")
    for launcher, values in times.items():
        print(
            f"| {launcher} | {at_once[launcher]} | {min(values):.1f} | "
            f"{statistics.median(values):.1f} |"
        )
    print(f"sequential / parallel (min): {min(times['basic']) / min(times['parallel']):.2f}")
    for job, accuracy in results["basic"].items():
        print(f"  {job}: test accuracy {float(accuracy):.4f} (both launchers)")


if __name__ == "__main__":
    main()
