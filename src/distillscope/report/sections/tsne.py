"""t-SNE of the penultimate features of teacher, student and base."""
from __future__ import annotations

from ..context import ReportContext, Section, img, note, section


@section("tsne", "t-SNE of penultimate features", order=80)
def section_tsne(ctx: ReportContext) -> Section:
    from tqdm.auto import tqdm

    from ...analysis.features import read_features
    from ...analysis.similarity import subsample, tsne_2d
    from .. import figures

    s = ctx.settings
    rows = subsample(ctx.targets, s.tsne_points, s.seed, s.tsne_classes)
    points = {}
    for role, run in tqdm(ctx.feature_runs.items(), desc="t-SNE", disable=not s.progress, leave=False):
        model, _ = ctx.model(run)
        features = read_features(model, ctx.normalised(run, rows), ["embedding"], s.batch_size, cpu=True)["embedding"].flatten(1)
        points[ctx.named(role, run)] = tsne_2d(features, seed=s.seed)
    labels = ctx.targets[rows].numpy()
    body = img(figures.tsne_panels(points, labels, ctx.data.classes), "t-SNE of penultimate features")
    classes = len(set(labels.tolist()))
    body += note(f"t-SNE (scikit-learn, PCA init, seed {s.seed}) of the penultimate features of {len(rows)} images drawn with seed "
                 f"{s.seed} from {classes} classes.")
    return Section(body, {"rows": rows, "seed": s.seed, "points": points},
                   ctx.basis(len(rows), runs="teacher, student" + (", base" if ctx.base else "")))
