"""The information plane of the runs that kept per-epoch checkpoints (analysis/infoplane.py)."""
from __future__ import annotations

import html
from pathlib import Path

from ..context import ReportContext, Section, SectionSkipped, figure_row, note, section, table


@section("infoplane", "Information plane", order=120)
def section_infoplane(ctx: ReportContext) -> Section:
    from ...analysis.infoplane import FIGURE, ProbeSettings, infoplane_figure, information_plane
    from ... import plotting

    runs = {role: run for role, run in ctx.feature_runs.items() if any(run.glob("epoch_*.safetensors"))}
    if not runs:
        raise SectionSkipped("no run kept per-epoch checkpoints; train with --set run.keep_every=K for the information plane")
    options = {"n_fit": 2000, "n_eval": 1000, "layers": ["embedding"], **ctx.settings.infoplane}
    probe = ProbeSettings(device=str(ctx.device), seed=ctx.settings.seed, **options.pop("probe", {}))
    result = information_plane([str(r) for r in runs.values()], ctx.data.spec, settings=probe, progress=ctx.settings.progress,
                               data=ctx.dataset(), **options)
    rows = [[Path(p["run"]).name, p["layer"], p["epoch"], p["ixf"], p["iyf"]] for p in result.points]
    body = figure_row({Path(FIGURE).stem: plotting.png_bytes(infoplane_figure(result))})
    body += table(["run", "layer", "epoch", "I(X;F) estimate (nats / image)", "I(Y;F) estimate (nats)"], rows)
    body += note("I(X;F): reconstruction gain of a decoder trained on F; I(Y;F): label entropy minus an auxiliary classifier's held-out "
                 "cross-entropy (analysis/infoplane.py; both biased low by the heads' capacity). Runs: "
                 + ", ".join(ctx.named(role, run) for role, run in runs.items()) + ".")
    return Section(body, result.to_dict(), f"heads fit on {result.settings['fit']}, scored on {result.settings['held_out']} of "
                   f"<code>{html.escape(ctx.data.spec)}</code>; every kept epoch of " + ", ".join(runs))

