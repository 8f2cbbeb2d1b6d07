"""Print the grid value a sweep chose on validation for one recipe's seed-0 runs (ties: the smallest value).

Usage: python bench/chosen_on_val.py OUT RECIPE, e.g. runs/c10k-sfkd resnet8_sfkd_kd.
"""
import sys

from distillscope.report.tables import find_runs, read_summaries, table_rows

out, recipe = sys.argv[1:]
runs = [r for r in find_runs([out])[0] if r.name.startswith(recipe + "-") and r.name.endswith("-s0")]
rows = [row for row in table_rows(read_summaries(runs)) if row["chosen on val"]]
print(min(float(row["grid point"].split("=")[-1]) for row in rows))
