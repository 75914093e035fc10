"""Command line: `python -m fedbatch.report <run or multirun dir> [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedbatch.report.build import ReportInputError, build_report

EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedbatch.report",
        description="Plot and tabulate a fedbatch run or multirun (sweep) directory.",
    )
    parser.add_argument("path", type=Path, help="run dir (metrics.jsonl) or multirun sweep dir")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: <path>/report)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = build_report(args.path, args.out)
    except ReportInputError as error:
        print(f"fedbatch.report: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(f"fedbatch.report: cannot write the report: {error}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    for path in written:
        print(path)
    return 0
