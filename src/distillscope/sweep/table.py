"""The sweep's result table: mean ± std over seeds of its finished runs, written as ``table.md`` and ``table.csv``."""
from __future__ import annotations

from pathlib import Path

from ..errors import DistillscopeError
from ..report import format_csv, format_markdown, read_summaries, table_rows
from .plan import SweepRun


def write_table(finished: list[SweepRun], out: Path, baseline: str | None, echo) -> list[dict]:
    """``out/table.md`` and ``out/table.csv`` of the ``finished`` runs, each row compared to the row ``baseline`` names
    (one naming no finished row is a warning, the table written without it); returns the runs' summaries."""
    for run in finished:  # a run trained before, outside the sweep, with the very config it asks for
        if not (run.folder / "sweep.json").is_file():
            run.write_record()
    summaries = read_summaries([run.folder for run in finished])
    if summaries:
        try:
            rows = table_rows(summaries, baseline)
        except DistillscopeError as err:  # e.g. the baseline's runs failed: still write the table
            echo(f"warning: {err}; table written without comparisons")
            rows = table_rows(summaries)
        markdown = format_markdown(rows)
        (out / "table.md").write_text(markdown + "\n")
        (out / "table.csv").write_text(format_csv(rows))
        echo(f"\n{markdown}\n\n(also in {out / 'table.md'} and {out / 'table.csv'})")
    return summaries
