"""Figures, tables and the HTML report."""
from .stats import Difference, minimum_detectable_effect, paired, welch
from .tables import (compare_to_baseline, find_runs, find_row, format_csv, format_markdown, mean_std, read_summaries, results_table,
                     table_rows)

__all__ = [
    "Difference", "compare_to_baseline", "find_row", "find_runs", "format_csv", "format_markdown", "mean_std", "minimum_detectable_effect",
    "paired", "read_summaries", "results_table", "table_rows", "welch",
]
