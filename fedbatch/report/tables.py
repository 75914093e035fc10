"""summary.md: a markdown table of final results, sweep.csv's rows or a single run's summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from fedbatch.metrics.sweep import JOB_COLUMNS, SUMMARY_FIELDS, RunRecord, sweep_table

SUMMARY_MD = "summary.md"


def format_value(column: str, text: str) -> str:
    """Accuracy and loss with 4 decimals, seconds with 2, other numbers compactly."""
    try:
        number = float(text)
    except ValueError:
        return text
    name = column.rsplit(".", 1)[-1]
    if not math.isfinite(number):
        return text
    if "accuracy" in name or "loss" in name:
        return f"{number:.4f}"
    if "seconds" in name:
        return f"{number:.2f}"
    if text.strip().lstrip("+-").isdigit():
        return text
    return f"{number:.4g}"


def markdown_table(columns: list[str], rows: list[dict[str, str]]) -> str:
    """A GitHub-flavoured markdown table of already formatted cells."""

    def line(cells: list[str]) -> str:
        return (
            "| " + " | ".join(text.replace("|", "\\|").replace("\n", " ") for text in cells) + " |"
        )

    header = [line(columns), "|" + "|".join("---" for _ in columns) + "|"]
    return "\n".join(header + [line([row.get(column, "") for column in columns]) for row in rows])


def sweep_markdown(runs: list[RunRecord]) -> str:
    """sweep.csv's rows, built from the runs (reading nothing back from the sweep dir); the
    per-key override columns are dropped (the label says it all)."""
    columns, rows = sweep_table(runs)
    override_keys = {key for run in runs for key in run.overrides}
    shown = [c for c in columns if c in JOB_COLUMNS or c not in override_keys]
    formatted = [{c: format_value(c, row.get(c) or "") for c in shown} for row in rows]
    return markdown_table(shown, formatted)


def run_markdown(run: RunRecord) -> str:
    """A field | value table for a single run."""
    rows = [
        {"field": "run", "value": run.name},
        {"field": "overrides", "value": run.label if run.overrides else ""},
        {"field": "status", "value": run.status},
    ]
    ordered = [key for key in SUMMARY_FIELDS if key in run.summary]
    ordered += [key for key in run.summary if key not in ordered]
    for key in ordered:
        value = run.summary[key]
        rows.append({"field": key, "value": format_value(key, "" if value is None else str(value))})
    return markdown_table(["field", "value"], rows)


def best_run_line(runs: list[RunRecord]) -> str | None:
    scored = [
        (run.summary["best_test_accuracy"], run)
        for run in runs
        if isinstance(run.summary.get("best_test_accuracy"), (int, float))
    ]
    if len(runs) < 2 or not scored:
        return None
    accuracy, best = max(scored, key=lambda pair: pair[0])
    return f"Best test accuracy: **{accuracy:.4f}** (job {best.name}: {best.label})."


def write_summary_md(
    source: Path,
    runs: list[RunRecord],
    out_dir: Path,
    plots: list[Path],
    is_sweep: bool,
    sections: Sequence[str] = (),
) -> Path:
    """The table, the best run, then `sections` (already markdown), then the plots."""
    table = sweep_markdown(runs) if is_sweep else run_markdown(runs[0])
    noun = "job" if is_sweep else "run"
    parts = [
        "# fedbatch report",
        f"Source: `{source}` ({len(runs)} {noun}{'s' if len(runs) != 1 else ''})",
        table,
    ]
    best = best_run_line(runs)
    if best:
        parts.append(best)
    parts += sections
    if plots:
        parts.append("## Plots")
        parts += [f"![{plot.stem}]({_relative(plot, out_dir)})" for plot in plots]
    path = out_dir / SUMMARY_MD
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def _relative(path: Path, start: Path) -> str:
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()
