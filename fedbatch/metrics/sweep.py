"""Collect the runs of a Hydra multirun (or a single run) and tabulate them as sweep.csv.

A run directory holds `metrics.jsonl` (one JSON object per round), `summary.json` (written
when the run finishes), the resolved `config.yaml` and Hydra's `.hydra/overrides.yaml`
(and `.hydra/config.yaml`, unresolved). Overrides label a run; the resolved config says what
it actually ran with (a value left at its default is in no override). A sweep directory
holds one such run directory per job, named by job number. Everything here tolerates
missing files, unknown keys and a truncated last line, so a sweep with crashed or
still-running jobs can be read.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fedbatch.metrics.endings import failure

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
# The resolved config fedbatch.simulate writes; Hydra's own copy (interpolations unresolved)
# is the fallback for runs that died before writing it.
CONFIG_FILES = (Path("config.yaml"), Path(".hydra") / "config.yaml")
SWEEP_CSV = "sweep.csv"

STATUS_OK = "ok"  # summary.json exists and the run did what was asked (endings.py)
STATUS_INCOMPLETE = "incomplete"  # some rounds were logged, but no summary.json
STATUS_FAILED = "failed"  # not a single round was logged
# Finished runs (summary.json written), whether or not they did what was asked.
FINISHED = (STATUS_OK, "diverged", "no_training")

# Summary fields in the order they appear in tables; unknown fields follow in first-seen order.
SUMMARY_FIELDS = (
    "test_accuracy",
    "test_loss",
    "best_test_accuracy",
    "best_round",
    "rounds_completed",
    "stopped_because",
    "seconds",
)
JOB_COLUMNS = ("job", "overrides", "status")


@dataclass
class RunRecord:
    """Everything one run left on disk."""

    path: Path
    name: str
    overrides: dict[str, str] = field(default_factory=dict)
    label: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    status: str = STATUS_FAILED
    config: dict[str, Any] = field(default_factory=dict)


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config (`config.yaml`, else `.hydra/config.yaml`), {} if neither."""
    for name in CONFIG_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            logger.warning("cannot read %s: %s", path, error)
            continue
        if isinstance(config, dict):
            return config
    return {}


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """`config["client"]["lr"]` for "client.lr"; None when any level is missing."""
    value: Any = config
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def read_overrides(run_dir: Path) -> dict[str, str]:
    """Parse `.hydra/overrides.yaml` into {key: value}; `+`/`++` prefixes are stripped."""
    path = run_dir / OVERRIDES_FILE
    if not path.is_file():
        return {}
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        logger.warning("cannot read %s: %s", path, error)
        return {}
    overrides: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        key, _, value = str(entry).partition("=")
        overrides[key.strip().lstrip("+")] = value.strip()
    return overrides


def format_label(overrides: dict[str, str], fallback: str) -> str:
    """ "client.batch_size=8, client.lr=0.1", or `fallback` when there are no overrides."""
    if not overrides:
        return fallback
    return ", ".join(f"{key}={value}" if value else key for key, value in overrides.items())


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round rows of metrics.jsonl; blank, truncated or non-object lines are skipped."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number != len(lines):  # a truncated last line is expected after a crash
                logger.warning("%s:%d is not valid JSON; skipped", path, number)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """summary.json as a dict, or None when it is missing or unreadable."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("cannot read %s: %s", path, error)
        return None
    return summary if isinstance(summary, dict) else None


def run_status(summary: dict[str, Any] | None, has_rows: bool) -> str:
    """ok, or how the finished run failed (`endings.failure`), or incomplete / failed."""
    if summary is not None:
        ended = failure(summary)
        return STATUS_OK if ended is None else ended.status
    return STATUS_INCOMPLETE if has_rows else STATUS_FAILED


def load_run(run_dir: Path) -> RunRecord:
    overrides = read_overrides(run_dir)
    summary = read_summary(run_dir)
    rows = read_rows(run_dir)
    status = run_status(summary, has_rows=bool(rows))
    return RunRecord(
        path=run_dir,
        name=run_dir.name,
        overrides=overrides,
        label=format_label(overrides, run_dir.name),
        summary=summary or {},
        rows=rows,
        status=status,
        config=read_config(run_dir),
    )


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / SUMMARY_FILE).is_file()


def is_job_dir(path: Path) -> bool:
    """A run dir, or a job that crashed before logging anything (it still has .hydra/)."""
    return path.is_dir() and (is_run_dir(path) or (path / OVERRIDES_FILE).is_file())


def _job_order(path: Path) -> tuple[int, int, str]:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def collect_runs(path: Path) -> list[RunRecord]:
    """One run if `path` is a run dir, else one per job dir directly under `path`."""
    path = Path(path)
    if is_run_dir(path):
        return [load_run(path)]
    if not path.is_dir():
        return []
    job_dirs = sorted((child for child in path.iterdir() if is_job_dir(child)), key=_job_order)
    return [load_run(job_dir) for job_dir in job_dirs]


def _ordered_union(key_lists: Iterable[Iterable[str]], first: Iterable[str] = ()) -> list[str]:
    seen = {key: None for keys in key_lists for key in keys}
    leading = [key for key in first if key in seen]
    return leading + [key for key in seen if key not in leading]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def sweep_table(runs: list[RunRecord]) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and string rows: job, overrides (label), status, override keys, summary keys."""
    override_keys = _ordered_union(run.overrides for run in runs)
    summary_keys = _ordered_union((run.summary for run in runs), first=SUMMARY_FIELDS)
    taken = set(JOB_COLUMNS) | set(override_keys)
    summary_columns = {key: f"summary.{key}" if key in taken else key for key in summary_keys}
    columns = [*JOB_COLUMNS, *override_keys, *summary_columns.values()]
    table = []
    for run in runs:
        row = {"job": run.name, "overrides": run.label, "status": run.status}
        row.update({key: run.overrides.get(key, "") for key in override_keys})
        row.update({column: _cell(run.summary.get(key)) for key, column in summary_columns.items()})
        table.append(row)
    return columns, table


def write_sweep_csv(sweep_dir: Path, out_dir: Path | None = None) -> Path:
    """Write sweep.csv, one row per job (crashed jobs included), and return its path.

    It goes into `out_dir` when given, so that a report written elsewhere leaves the sweep
    directory exactly as it was; else beside the job dirs, where the Hydra callback puts it.
    """
    sweep_dir = Path(sweep_dir)
    columns, table = sweep_table(collect_runs(sweep_dir))
    out_path = (sweep_dir if out_dir is None else Path(out_dir)) / SWEEP_CSV
    with out_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    return out_path


class SweepSummary(Callback):
    """Hydra callback: after a multirun, tabulate every job into `<sweep dir>/sweep.csv`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            out_path = write_sweep_csv(sweep_dir)
        except OSError as error:  # never turn a finished sweep into a crash
            logger.warning("could not write %s: %s", sweep_dir / SWEEP_CSV, error)
            return
        print(f"Sweep summary: {out_path} (plots: python -m fedbatch.report {sweep_dir})")
