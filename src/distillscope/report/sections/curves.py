"""Training curves of every run, as logged."""
from __future__ import annotations

from ..context import ReportContext, Section, img, section


@section("curves", "Training curves", order=10)
def section_curves(ctx: ReportContext) -> Section:
    from .. import figures

    histories, last = {}, {}
    for group, runs in ctx.groups.items():
        histories[group] = []
        for run in runs:
            rows = ctx.metrics(run)
            histories[group].append((ctx.label(run), rows))
            last[ctx.label(run)] = rows[-1] if rows else {}
    figure = img(figures.training_curves(histories), "training curves")
    return Section(figure, {"last_epoch": last}, "metrics.csv of every run (as logged during training)")
