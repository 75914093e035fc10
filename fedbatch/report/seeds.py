"""summary.md's "Over seeds" section: the settings of a sweep that differ only in `seed`,
each as the mean ± standard deviation (over its seeds) of its final results."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from fedbatch.metrics.sweep import FINISHED, RunRecord, format_label
from fedbatch.report.tables import markdown_table

FIELDS = (
    "test_accuracy",
    "best_test_accuracy",
    "rounds_to_target",
    "clients_failed_total",
    "clients_rejected_total",
)


def _groups(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        setting = {key: value for key, value in run.overrides.items() if key != "seed"}
        groups.setdefault(format_label(setting, "(defaults)"), []).append(run)
    return groups


def _cell(field: str, values: list[float | None]) -> str:
    """mean ± sd; a target some seeds missed says how many reached it."""
    reached = [float(v) for v in values if isinstance(v, int | float)]
    if not reached:
        return "—"
    digits = 4 if "accuracy" in field else 1
    text = f"{statistics.fmean(reached):.{digits}f}"
    if len(reached) > 1:
        text += f" ± {statistics.stdev(reached):.{digits}f}"
    if len(reached) < len(values):
        text += f" ({len(reached)}/{len(values)} reached)"
    return text


def seeds_section(runs: Sequence[RunRecord]) -> str:
    """The section, or "" when no setting was run with more than one seed."""
    if not any("seed" in run.overrides for run in runs):
        return ""
    groups = _groups([run for run in runs if run.status in FINISHED])
    if not any(len(members) > 1 for members in groups.values()):
        return ""
    fields = [f for f in FIELDS if any(f in run.summary for run in runs)]
    rows = []
    for label, members in groups.items():
        row = {"setting": label, "seeds": str(len(members))}
        row |= {f: _cell(f, [run.summary.get(f) for run in members]) for f in fields}
        rows.append(row)
    table = markdown_table(["setting", "seeds", *fields], rows)
    return "## Over seeds\n\nMean ± standard deviation over each setting's seeds.\n\n" + table
