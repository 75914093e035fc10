"""Time a bench runner at another git revision against this checkout, interleaved.

    python simulations/bench/compare_revisions.py --base d397c52 --case small \
        --runners inprocess,probes-off --repeats 7

The base revision is checked out into a temporary git worktree and its own
`fedbatch.bench.runners` runs its own version of the case's config, so each side does the
case as its code defines it. Runs alternate between the sides (this machine kind changes
speed even within a run); min and median seconds and each ratio to the base are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(cwd: Path, code: str, *args: str) -> str:
    env = os.environ | {"PYTHONPATH": str(cwd)}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return result.stdout.strip().splitlines()[-1]


def _spec(cwd: Path, case: str, runner: str) -> tuple[str, str]:
    """(runner to start, config JSON) for `runner` of `case` as the code at `cwd` has it."""
    code = (
        "import json, sys\n"
        "from fedbatch.bench.cases import CASES\n"
        "case = CASES[sys.argv[1]]\n"
        "pick = getattr(case, 'runner_config', lambda r: (r, case.config()))\n"
        "name, cfg = pick(sys.argv[2])\n"
        "print(json.dumps([name, cfg.to_json()]))\n"
    )
    name, config = json.loads(_python(cwd, code, case, runner))
    return name, config


def _seconds(cwd: Path, runner: str, config: str) -> float:
    # Both sides import the engines before the timer, whatever their runner does.
    code = (
        "import runpy, fedbatch.engine.inprocess\n"
        "runpy.run_module('fedbatch.bench.runners', run_name='__main__')"
    )
    return float(json.loads(_python(cwd, code, runner, config))["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--case", default="small")
    parser.add_argument("--base-runner", default="inprocess")
    parser.add_argument("--runners", default="inprocess", help="this checkout's runners")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base_dir), args.base],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        try:
            sides = {
                f"base:{args.base_runner}": (
                    base_dir,
                    *_spec(base_dir, args.case, args.base_runner),
                )
            }
            for runner in args.runners.split(","):
                sides[runner] = (ROOT, *_spec(ROOT, args.case, runner))
            times: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(args.repeats):
                for side, (cwd, runner, config) in sides.items():
                    times[side].append(_seconds(cwd, runner, config))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_dir)], cwd=ROOT)
    base = min(times[f"base:{args.base_runner}"])
    print(f"{args.case}: {args.repeats} interleaved runs each, ratio = min / base min")
    for side, values in times.items():
        print(
            f"{side:>20}  min {min(values):.3f} s  median {statistics.median(values):.3f} s  "
            f"ratio {min(values) / base:.3f}"
        )


if __name__ == "__main__":
    main()
