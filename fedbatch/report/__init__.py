"""Plots and tables for a finished run or multirun: `python -m fedbatch.report <dir>`."""
