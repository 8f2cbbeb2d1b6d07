"""Figures, tables and the HTML report."""
from .tables import mean_std, read_summaries, results_table

__all__ = ["mean_std", "read_summaries", "results_table"]
