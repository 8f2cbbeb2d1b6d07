"""Linear CKA between every stage of each model and the teacher's."""
from __future__ import annotations

import html

import torch

from ..context import ReportContext, Section, img, note, section


@section("cka", "Linear CKA per layer pair", order=70)
def section_cka(ctx: ReportContext) -> Section:
    from ... import plotting
    from ...analysis.similarity import cka_matrix, layer_grams, stage_taps
    from .. import figures

    n = min(ctx.settings.cka_images, len(ctx.targets))
    rows = torch.arange(n)
    grams, layers = {}, {}
    for role, run in ctx.feature_runs.items():
        model, _ = ctx.model(run)
        taps = stage_taps(model)
        layers[role] = list(taps)
        grams[role] = layer_grams(model, taps, ctx.normalised(run, rows), ctx.settings.batch_size, ctx.settings.progress,
                                  desc=f"CKA {role}")
    others = [role for role in grams if role != "teacher"]
    matrices = {role: cka_matrix(grams[role], grams["teacher"]) for role in others}
    figure = figures.heatmaps([matrices[r] for r in others], [f"{r} (rows) vs teacher (columns)" for r in others],
                              [layers[r] for r in others], [layers["teacher"]] * len(others), xlabel="teacher layer", ylabel="model layer",
                              vmin=0, vmax=1, cmap=plotting.SIMILARITY, annotate=True)
    body = img(figure, "linear CKA heatmaps")
    body += note("Linear CKA (Kornblith et al., 2019) between every stage output and the penultimate feature (embedding) of each model "
                 "and the teacher's; 1 = the same representation up to rotation and isotropic scale.")
    numbers = {"layers": layers, "cka_vs_teacher": matrices, "images": n}
    return Section(body, numbers, ctx.basis(n, runs=", ".join(html.escape(ctx.named(r, p)) for r, p in ctx.feature_runs.items())))
