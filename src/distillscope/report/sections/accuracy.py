"""Accuracy as recorded at training time, mean ± std over seeds."""
from __future__ import annotations

from ..context import ReportContext, Section, mean_std, section, table
from ..tables import table_rows


@section("accuracy", "Accuracy", order=20)
def section_accuracy(ctx: ReportContext) -> Section:
    header = ["group", "model", "method", "seeds", "test top-1 @ best val (%)", "test top-1 @ last (%)", "val top-1 @ best (%)", "epochs",
              "precision", "notes"]
    rows, numbers = [], {}
    for group, runs in ctx.groups.items():
        for row in table_rows([ctx.summary(run) for run in runs]):
            rows.append([group, row["model"], row["method"], ", ".join(map(str, row["seeds"])), mean_std(row["test@best"]),
                         mean_std(row["test@last"]), mean_std(row["val@best"]), ", ".join(map(str, row["epochs"])), row["precision"],
                         row["notes"]])
            numbers.setdefault(group, []).append({k: v for k, v in row.items() if k not in ("machines",)})
    return Section(table(header, rows), numbers, "summary.json of every run (accuracy as recorded at training time; mean ± std over seeds)")
