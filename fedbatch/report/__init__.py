"""Plots and tables for a finished run or multirun: `python -m fedbatch.report <dir>`."""

# Plot modules register their figures on import; `plots` first, so its order is the listing's.
from fedbatch.report import batch_plot, lr_plot, plots, round_plots  # noqa: F401
