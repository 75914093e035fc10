"""Build a report directory (plots + summary.md) for a run or a multirun sweep."""

from __future__ import annotations

from pathlib import Path

from fedbatch.metrics.sweep import SWEEP_CSV, collect_runs, is_run_dir, write_sweep_csv
from fedbatch.report.plots import write_plots
from fedbatch.report.tables import write_summary_md

EXPECTED = (
    "a run directory (with metrics.jsonl) or a multirun directory (with job dirs 0/, 1/, ...)"
)


class ReportInputError(ValueError):
    """The report's input path is not something we can report on; shown as one line."""


def default_out_dir(source: Path) -> Path:
    return source / "report"


def build_report(source: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the plots and summary.md for `source`; return every file written."""
    source = Path(source)
    if not source.exists():
        raise ReportInputError(f"{source} does not exist; expected {EXPECTED}")
    if not source.is_dir():
        raise ReportInputError(f"{source} is not a directory; expected {EXPECTED}")
    runs = collect_runs(source)
    if not runs:
        raise ReportInputError(f"no runs found in {source}; expected {EXPECTED}")
    out_dir = default_out_dir(source) if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    is_sweep = not is_run_dir(source)
    if is_sweep and not (source / SWEEP_CSV).is_file():
        written.append(write_sweep_csv(source))
    plots = write_plots(runs, out_dir)
    written += plots
    written.append(write_summary_md(source, runs, out_dir, plots, is_sweep=is_sweep))
    return written
