"""Entry point for `python -m fedbatch.report`."""

from fedbatch.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
