"""summary.md's "Over seeds" section: mean ± sd per setting, computed by hand here."""

from __future__ import annotations

from pathlib import Path

from fedbatch.metrics.sweep import RunRecord
from fedbatch.report.seeds import seeds_section


def _run(name: str, overrides: dict[str, str], status: str = "ok", **summary) -> RunRecord:
    return RunRecord(Path(name), name, overrides=overrides, summary=summary, status=status)


def test_each_setting_is_the_mean_and_sd_of_its_seeds():
    runs = [
        _run("0", {"strategy": "fedavg", "seed": "0"}, test_accuracy=0.5, rounds_to_target=4),
        _run("1", {"strategy": "fedavg", "seed": "1"}, test_accuracy=0.7, rounds_to_target=None),
        _run("2", {"strategy": "krum", "seed": "0"}, test_accuracy=0.9, rounds_to_target=2),
        _run("3", {"strategy": "krum", "seed": "1"}, test_accuracy=0.8, rounds_to_target=3),
        _run("4", {"strategy": "krum", "seed": "2"}, status="incomplete", test_accuracy=0.1),
    ]
    lines = seeds_section(runs).splitlines()
    assert lines[0] == "## Over seeds"
    # fedavg: mean 0.6, sd of (0.5, 0.7) = 0.1414; one of two seeds reached the target
    assert "| strategy=fedavg | 2 | 0.6000 ± 0.1414 | 4.0 (1/2 reached) |" in lines
    # krum: the incomplete run is left out
    assert "| strategy=krum | 2 | 0.8500 ± 0.0707 | 2.5 ± 0.7 |" in lines


def test_no_section_without_repeated_seeds():
    runs = [_run("0", {"client.lr": "0.1"}, test_accuracy=0.5)]
    assert seeds_section(runs) == ""
    runs = [_run(str(i), {"seed": str(i), "client.lr": str(i)}, test_accuracy=0.5) for i in (1, 2)]
    assert seeds_section(runs) == ""
