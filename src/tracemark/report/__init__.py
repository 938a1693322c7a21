"""Reports and plots."""

from tracemark.report.html import robustness_report
from tracemark.report.plots import trigger_grid
from tracemark.report.robustness_plots import accuracy_vs_pvalue, accuracy_vs_strength

__all__ = ["accuracy_vs_pvalue", "accuracy_vs_strength", "robustness_report", "trigger_grid"]
