"""Tune the learning rate for each batch size: one Optuna study (study.yaml) per B.

    python simulations/lr_tuning/tune.py --batch-sizes 8,32,128 [HYDRA OVERRIDES...]

Runs `python -m fedbatch.simulate --config-dir simulations/lr_tuning --config-name study -m
client.batch_size=B` for each B (extra arguments are passed on, e.g.
`hydra.sweeper.n_trials=30` or `hydra/launcher=parallel hydra.sweeper.n_jobs=2`), then
prints each B's best client.lr and test accuracy from its optimization_results.yaml, with
the range of accuracies over all its trials (sweep.csv).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import yaml

STUDY = Path(__file__).resolve().parent
ROOT = STUDY.parents[1]


def tune(batch_size: str, extra: list[str], out: Path) -> Path:
    """Run the study for one B into `out/B<batch_size>` and return that sweep directory."""
    sweep_dir = out / f"B{batch_size}"
    command = [
        sys.executable, "-m", "fedbatch.simulate", "--config-dir", str(STUDY),
        "--config-name", "study", "-m", f"client.batch_size={batch_size}", *extra,
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"B={batch_size} failed:\n{result.stderr[-2000:]}")
    return sweep_dir


def row(batch_size: str, sweep_dir: Path) -> str:
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text(encoding="utf-8"))
    with (sweep_dir / "sweep.csv").open(encoding="utf-8", newline="") as handle:
        trials = [float(trial["test_accuracy"] or 0.0) for trial in csv.DictReader(handle)]
    return (
        f"| {batch_size} | {best['best_params']['client.lr']:.4g} | {best['best_value']:.4f} | "
        f"{min(trials):.4f}–{max(trials):.4f} | {len(trials)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", default="8,32,128", help="one study per B")
    parser.add_argument("--out", type=Path, default=ROOT / "multirun" / "lr_tuning")
    args, extra = parser.parse_known_args()
    rows = [row(b, tune(b, extra, args.out.resolve())) for b in args.batch_sizes.split(",")]
    print("| B | best client.lr | test accuracy at it | accuracy over trials | trials |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
