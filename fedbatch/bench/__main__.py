"""`python -m fedbatch.bench [--case C] [--runners R,...] [--repeats N] [--out DIR]
[--device D] [--profile]`.

Runs the same federated work (same model, data, clients, rounds, local steps, batch size,
seed) through each runner, each run in a fresh process, interleaved and repeated, since
this machine kind changes speed even within a run. Prints a table (min and median wall
time, time per client-round, median steady-state round time, peak RSS, accuracy, ratio of
the mins to `plain`, ratio of the round medians to `plain`'s) and writes `bench.json` as
{case: {runner: {seconds, seconds_median, round_seconds_median, rss_mb, accuracy, ratio,
round_ratio}}}. With `--profile`, each runner then runs once more, untimed, under cProfile:
`DIR/profiles/<case>-<runner>.prof` (for pstats or snakeviz) and `.txt`, its top functions
by cumulative time; `ray` and `flower` are not profiled (see NOT_PROFILED).
"""

from __future__ import annotations

import argparse
import json
import pstats
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedbatch.bench.cases import CASES, BenchCase
from fedbatch.bench.deployment import bench_deployment, print_deployment
from fedbatch.bench.scale import bench_scale, print_scale_table, scale_runs
from fedbatch.bench.startup import machine_load, profile_process, time_process
from fedbatch.config import RunConfig
from fedbatch.federated.workload import resolve_device

# On CUDA each Ray client actor reserves this share of the GPU (unless the case sets its
# own): vanilla Flower's actors see no GPU without one (Ray hides it from actors that
# reserve none; fedbatch's Ray engine turns that off), and at most 4 clients share it.
GPU_SHARE = 0.25

# Runs of the same seed must agree on accuracy; the engines differ only by float order.
ACCURACY_TOLERANCE = 0.01
SAME_WORK = ("plain", "inprocess", "ray", "probes-off", "probes-on", "vectorized", "simulate")


# Lines of each profile's text summary: the functions with the most cumulative time.
PROFILE_TOP = 40
# cProfile sees the calling thread only; these runners' rounds run in Flower's ServerApp
# thread and in Ray actors, so their profile would show start-up and waiting.
NOT_PROFILED = ("ray", "flower")


def run_once(runner: str, cfg: RunConfig, profile: Path | None = None) -> dict[str, Any]:
    extra = [] if profile is None else [str(profile)]
    result = subprocess.run(
        [sys.executable, "-m", "fedbatch.bench.runners", runner, cfg.to_json(), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"runner {runner} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    client_rounds = cfg.rounds * cfg.clients_per_round
    summary = {
        "seconds": min(seconds),
        "seconds_median": statistics.median(seconds),
        "seconds_per_client_round": min(seconds) / client_rounds,
        "rss_mb": max(r["rss_mb"] for r in runs),
        "accuracy": runs[0]["accuracy"],
        "repeats": len(runs),
    }
    round_seconds = [s for r in runs for s in r.get("round_seconds", [])]
    if round_seconds:
        summary["round_seconds_median"] = statistics.median(round_seconds)
    return summary


def bench_runners(case: BenchCase, runners: list[str], repeats: int) -> dict[str, Any]:
    cfg = case.config()
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
    loads: list[float] = []
    for _ in range(repeats):
        for runner in runners:  # interleaved: every repeat sees every runner
            if case.argv:  # whole processes, start to exit
                loads.append(machine_load())
                runs[runner].append(time_process(runner, case.argv))
            else:
                runs[runner].append(run_once(*case.runner_config(runner)))
    results = {runner: summarize(runs[runner], cfg) for runner in runners}
    for runner, result in results.items() if loads else ():
        result["load_median"] = statistics.median(loads)
        result["seconds_each"] = [r["seconds"] for r in runs[runner]]  # in repeat order
        cpu = [r["cpu_seconds"] for r in runs[runner]]
        result["cpu_seconds"], result["cpu_seconds_median"] = min(cpu), statistics.median(cpu)
    plain = results.get("plain", {})
    baseline, round_baseline = plain.get("seconds"), plain.get("round_seconds_median")
    for result in results.values():
        result["ratio"] = result["seconds"] / baseline if baseline else None
        median = plain.get("seconds_median")
        result["ratio_median"] = result["seconds_median"] / median if median else None
        rounds = result.get("round_seconds_median")
        result["round_ratio"] = rounds / round_baseline if rounds and round_baseline else None
    return results


def profile_runs(case: BenchCase, runs: dict[str, tuple[str, RunConfig]], out: Path) -> None:
    """One more, untimed run of each runner under cProfile: `.prof` stats and a `.txt` of
    the top functions by cumulative time."""
    folder = out / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    for label, (runner, cfg) in runs.items():
        path = folder / f"{case.name}-{label}.prof"
        run_once(runner, cfg, profile=path)
        with path.with_suffix(".txt").open("w") as text:
            stats = pstats.Stats(str(path), stream=text)
            stats.strip_dirs().sort_stats("cumulative").print_stats(PROFILE_TOP)


def on_device(case: BenchCase, device: str) -> BenchCase:
    """The case with every runner on `device` (`auto`: CUDA when present), Ray actors
    included."""
    device = resolve_device(device).type
    if case.argv:
        return replace(case, argv=(*case.argv, f"device={device}"))
    raw = case.raw | {"device": device}
    if device == "cuda":
        raw["engine"] = {"num_gpus": GPU_SHARE} | dict(case.raw.get("engine", {}))
    return replace(case, raw=raw)


def check_same_work(results: dict[str, Any]) -> list[str]:
    """Runners doing the same work must reach the same accuracy for the same seed."""
    accuracies = {r: results[r]["accuracy"] for r in SAME_WORK if r in results}
    if not accuracies:
        return []
    reference = next(iter(accuracies.values()))
    return [
        f"{runner} reached accuracy {acc:.4f}, not {reference:.4f}: not the same work"
        for runner, acc in accuracies.items()
        if abs(acc - reference) > ACCURACY_TOLERANCE
    ]


def print_table(case: BenchCase, results: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{case.name}: {case.description}")
    for column in ("runner", "min s", "median s", "ms/client-round", "round s",
                   "RSS MB", "accuracy", "ratio", "round ratio"):  # fmt: skip
        table.add_column(column, justify="right")

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for runner, r in results.items():
        table.add_row(
            runner,
            f"{r['seconds']:.3f}",
            f"{r['seconds_median']:.3f}",
            f"{1000 * r['seconds_per_client_round']:.2f}",
            number(r.get("round_seconds_median"), 4),
            f"{r['rss_mb']:.0f}",
            f"{r['accuracy']:.4f}",
            number(r["ratio"], 2),
            number(r.get("round_ratio"), 2),
        )
    console.print(table)


def print_startup_lines(results: dict[str, Any], console: Console) -> None:
    """Whole processes: the ratio of the medians, CPU seconds (min, median), the load."""
    plain = results.get("plain", {})
    for runner, r in results.items():
        cpu_ratio = r["cpu_seconds"] / plain["cpu_seconds"] if plain else float("nan")
        console.print(
            f"{runner}: wall ratio of the medians {r['ratio_median']:.2f}; CPU s min "
            f"{r['cpu_seconds']:.2f}, median {r['cpu_seconds_median']:.2f}, "
            f"ratio (min) {cpu_ratio:.2f}"
        )
    load = next(iter(results.values()))["load_median"]
    console.print(f"median 1-min load average during the runs: {load:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedbatch.bench", description=__doc__)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--runners", help="comma-separated subset of the case's runners")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if present"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile each runner: DIR/profiles/"
    )
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 110))
    report: dict[str, Any] = {}
    problems: list[str] = []
    for name in args.case or ["small"]:
        case = on_device(CASES[name], args.device)
        if case.runners == ("deployment",):
            results = bench_deployment(case.argv, args.repeats, run_once)
            to_profile = {}
        elif case.registered:
            results = bench_scale(case, args.repeats, run_once)
            to_profile = {label: ("inprocess", cfg) for label, cfg in scale_runs(case).items()}
        else:
            runners = args.runners.split(",") if args.runners else list(case.runners)
            unknown = sorted(set(runners) - set(case.runners))
            if unknown:
                parser.error(f"--runners: unknown {unknown}; allowed {', '.join(case.runners)}")
            results = bench_runners(case, runners, args.repeats)
            problems += check_same_work(results)
            to_profile = {r: case.runner_config(r) for r in runners if r not in NOT_PROFILED}
        report[name] = results
        deployed = "deployment" in results  # its own report, and nothing to profile
        if deployed:
            print_deployment(results, console)
        else:
            (print_scale_table if case.registered else print_table)(case, results, console)
        if case.argv and not deployed:
            print_startup_lines(results, console)
        args.out.mkdir(parents=True, exist_ok=True)  # written per case: nothing timed is lost
        (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        if args.profile and deployed:
            console.print("deployment: not profiled (its rounds run in Flower's processes)")
        elif args.profile and case.argv:
            for runner in runners:
                profile_process(runner, case.argv, args.out / "profiles", PROFILE_TOP)
        elif args.profile:
            profile_runs(case, to_profile, args.out)
            console.print(f"profiles: {args.out / 'profiles'}/{name}-*.prof and .txt")
    console.print(f"wrote {args.out / 'bench.json'}")
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
