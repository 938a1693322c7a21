"""Reports and plots."""

from tracemark.report.plots import trigger_grid

__all__ = ["trigger_grid"]
