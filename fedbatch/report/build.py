"""Build a report directory (plots + summary.md) for a run or a multirun sweep."""

from __future__ import annotations

from pathlib import Path

from fedbatch.metrics.sweep import SWEEP_CSV, collect_runs, is_run_dir, write_sweep_csv
from fedbatch.report.plots import write_plots
from fedbatch.report.seeds import seeds_section
from fedbatch.report.steps_to_target import steps_report
from fedbatch.report.tables import write_summary_md

EXPECTED = (
    "a run directory (with metrics.jsonl) or a multirun directory (with job dirs 0/, 1/, ...)"
)


class ReportInputError(ValueError):
    """The report's input path is not something we can report on; shown as one line."""


def default_out_dir(source: Path) -> Path:
    return source / "report"


def build_report(source: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the plots and summary.md for `source`; return every file written.

    With an explicit `out_dir` nothing is written into `source` (a sweep's sweep.csv goes to
    `out_dir` too), so a report can be made of a read-only or archived sweep; the default
    `<source>/report` is inside it anyway, and a sweep missing sweep.csv gets one as the
    Hydra callback would have written it.
    """
    source = Path(source)
    if not source.exists():
        raise ReportInputError(f"{source} does not exist; expected {EXPECTED}")
    if not source.is_dir():
        raise ReportInputError(f"{source} is not a directory; expected {EXPECTED}")
    runs = collect_runs(source)
    if not runs:
        raise ReportInputError(f"no runs found in {source}; expected {EXPECTED}")
    explicit_out = out_dir is not None
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    is_sweep = not is_run_dir(source)
    if is_sweep and explicit_out:
        written.append(write_sweep_csv(source, out_dir))
    elif is_sweep and not (source / SWEEP_CSV).is_file():
        written.append(write_sweep_csv(source))
    plots = write_plots(runs, out_dir)
    written += plots
    figures, section = steps_report(runs, out_dir) if is_sweep else ([], "")
    written += figures
    sections = [s for s in (seeds_section(runs) if is_sweep else "", section) if s]
    summary = write_summary_md(source, runs, out_dir, plots, is_sweep=is_sweep, sections=sections)
    written.append(summary)
    return written
