"""Case `startup`: whole processes side by side, as every run and every sweep job pays them.

`plain` is a fresh `python -m fedbatch.bench.runners plain` process (torch, the data, the
bare PyTorch loop of `fedbatch/bench/bare.py`, the test-set evaluation); `simulate` is a
fresh `python -m fedbatch.simulate` process of the same run, as a user starts it (Hydra,
validation, Flower's in-process engine, the run directory). Each is timed from its start
to its exit, interleaved and repeated. "Cold" here means a fresh interpreter with no
state from an earlier run; the OS page cache stays warm for both sides alike (dropping
it would also slow down whatever else runs on the machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedbatch.config.compose import compose_config

STARTUP_RUNNERS = ("plain", "simulate")


def process_command(runner: str, argv: tuple[str, ...], run_dir: Path) -> list[str]:
    """The command line of `runner` doing the run that `argv` (simulate's overrides) sets."""
    if runner == "plain":
        cfg = compose_config(argv)
        return [sys.executable, "-m", "fedbatch.bench.runners", "plain", cfg.to_json()]
    overrides = [*argv, "progress=off", f"hydra.run.dir={run_dir}"]
    return [sys.executable, "-m", "fedbatch.simulate", *overrides]


def time_process(runner: str, argv: tuple[str, ...]) -> dict[str, Any]:
    """Wall seconds from start to exit, CPU seconds (user + system), peak RSS and final
    test accuracy of one process."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, log = Path(tmp) / "run", Path(tmp) / "output"
        command = process_command(runner, argv, run_dir)
        with log.open("w") as output:
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
            seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        text = log.read_text()
        if process.returncode != 0:
            raise RuntimeError(f"{runner} failed ({' '.join(command[:4])} ...):\n{text[-2000:]}")
        if runner == "plain":
            accuracy = json.loads(text.strip().splitlines()[-1])["accuracy"]
        else:
            accuracy = json.loads((run_dir / "summary.json").read_text())["test_accuracy"]
    cpu_seconds = usage.ru_utime + usage.ru_stime  # less swayed than wall time by other load
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_mb": usage.ru_maxrss / 1024,
        "accuracy": accuracy,
    }


def machine_load() -> float:
    """The 1-minute load average, said next to every whole-process timing."""
    return os.getloadavg()[0]


# Lines of each import-time summary: the imports with the most cumulative time.
IMPORTS_TOP = 40


def profile_process(runner: str, argv: tuple[str, ...], folder: Path, top: int) -> None:
    """One more, untimed process of `runner` under `python -X importtime -m cProfile`:
    `startup-<runner>.prof` and `.txt` (its top functions by cumulative time, imports
    included) and `.imports.txt` (its `top` slowest imports, cumulative microseconds)."""
    import pstats

    folder.mkdir(parents=True, exist_ok=True)
    prof = folder / f"startup-{runner}.prof"
    with tempfile.TemporaryDirectory() as tmp:
        python, *rest = process_command(runner, argv, Path(tmp) / "run")
        assert rest[0] == "-m"
        profiled = [python, "-X", "importtime", "-m", "cProfile", "-o", str(prof), *rest]
        done = subprocess.run(profiled, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"profiling {runner} failed:\n{done.stderr[-2000:]}")
    with prof.with_suffix(".txt").open("w") as text:
        pstats.Stats(str(prof), stream=text).strip_dirs().sort_stats("cumulative").print_stats(top)
    imports = [line.split("|") for line in done.stderr.splitlines() if "|" in line]
    timed = [(int(cumulative), name.rstrip()) for _, cumulative, name in imports[1:]]
    lines = [f"{us:>10} {name}" for us, name in sorted(timed, reverse=True)[:IMPORTS_TOP]]
    header = "cumulative µs  import (python -X importtime, slowest first)\n"
    prof.with_suffix(".imports.txt").write_text(header + "\n".join(lines) + "\n")
