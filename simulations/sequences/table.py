"""The sequence study's table: padding, tokens per step, seconds and accuracy per B, with
and without bucketing, mean ± standard deviation over seeds. Per run: the padding fraction
and tokens per step averaged over rounds, positions computed per step (tokens / (1 −
padding)), the summed measured round seconds, and the final test accuracy.

Usage: python simulations/sequences/table.py multirun/sequences/<date_time>
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml


def job_values(job: Path) -> tuple[tuple[int, bool], dict[str, float]]:
    config = yaml.safe_load((job / "config.yaml").read_text())
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["round"] > 0]
    key = (int(config["client"]["batch_size"]), bool(config["client"]["bucket_by_length"]))
    return key, {
        "padding": statistics.fmean(r["padding_fraction"] for r in trained),
        "tokens": statistics.fmean(r["tokens_per_step"] for r in trained),
        "positions": statistics.fmean(
            r["tokens_per_step"] / (1 - r["padding_fraction"]) for r in trained
        ),
        "seconds": sum(r["seconds"] for r in trained),
        "accuracy": rows[-1]["test_accuracy"],
    }


def cell(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def main(sweep: Path) -> None:
    runs: dict[tuple[int, bool], list[dict[str, float]]] = defaultdict(list)
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.jsonl").exists()):
        key, values = job_values(job)
        runs[key].append(values)
    header = "padding fraction | tokens / step | positions / step | seconds | test accuracy"
    print(f"| B | bucketing | seeds | {header} |")
    print("|---|---|---|---|---|---|---|---|")
    for (batch, bucket), values in sorted(runs.items()):
        columns = [("padding", 3), ("tokens", 0), ("positions", 0), ("seconds", 1), ("accuracy", 3)]
        cells = [cell([v[name] for v in values], digits) for name, digits in columns]
        print(
            f"| {batch} | {'on' if bucket else 'off'} | {len(values)} | " + " | ".join(cells) + " |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
