"""``distillscope explain``, ``confusion``, ``interaction`` and ``infoplane``: analyses of trained runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DistillscopeError
from .train import DEVICE_HELP


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("confusion",
                              help="teacher class-mean softmax vs a model's confusion matrix (off-diagonal): numbers and figures")
    p.add_argument("teacher", help="teacher run folder or .safetensors")
    p.add_argument("model", help="model run folder or .safetensors")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="split the model's confusion and the teacher's softmax are measured on")
    p.add_argument("--out", required=True, help="folder for confusion.json and the PNG figures (existing files are never overwritten)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_cmd_confusion)

    p = subparsers.add_parser("interaction",
                              help="Interaction Tensor of model groups: features shared across models and their frequency over the data")
    p.add_argument("--group", action="append", required=True, metavar="NAME=RUN,RUN",
                   help="a named group of runs (e.g. seeds), repeatable: --group ce=runs/ce-s0,runs/ce-s1 --group kd=...")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--layer", default="stage:-1", help="tap of every model, flattened C·H·W (default: stage:-1, the last stage map before "
                   "pooling, as paper 000; embedding, the pooled feature, is too narrow for 50 components)")
    p.add_argument("--n", type=int, help="first N images of the split (default: all)")
    p.add_argument("--split", choices=["train", "test"], default="test", help="split the features are taken from")
    p.add_argument("--components", type=int, default=50, help="PCA components per model")
    p.add_argument("--uncentred", action="store_true", help="PCA without mean-centring (the uncentred SVD variant)")
    p.add_argument("--correlation-percentile", type=float, default=99.0, help="γ = this percentile of |correlation|")
    p.add_argument("--gamma", type=float, help="absolute correlation threshold instead of the percentile")
    p.add_argument("--presence-percentile", type=float, default=90.0, help="a component is present above this percentile of its model")
    p.add_argument("--out", required=True, help="folder for interaction.json and the PNG figures (existing files are never overwritten)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_cmd_interaction)

    p = subparsers.add_parser("infoplane",
                              help="information-plane trajectories I(X;F), I(Y;F) over a run's kept epochs (train with run.keep_every)")
    p.add_argument("runs", nargs="+", help="run folders holding epoch_{e}.safetensors")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--layers", nargs="+", default=["embedding"], help="taps, e.g. --layers stage:0 stage:1 embedding")
    p.add_argument("--n-fit", type=int, default=2000, help="training images the decoder and classifier learn from")
    p.add_argument("--n-eval", type=int, default=1000, help="held-out test images they are scored on")
    p.add_argument("--epochs", type=int, default=60, help="at most this many epochs per head, early-stopped")
    p.add_argument("--checkpoints", help="kept epochs to score, e.g. 3,9,30 (default: every kept epoch)")
    p.add_argument("--out", required=True, help="folder for infoplane.json and infoplane.png (existing files are never overwritten)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_cmd_infoplane)

    p = subparsers.add_parser("explain", help="one HTML report of a distillation: curves, accuracy, calibration, similarity, "
                              "Grad-CAM/UniCAM, FSS/RS, ...")
    p.add_argument("--student", help="run folder of the KD student (default: the first run of the first --group)")
    p.add_argument("--teacher", help="run folder of its teacher, the reference of every comparison (default: the one the student recorded)")
    p.add_argument("--base", help="run folder of the base: the student's architecture trained without KD (default: first run of a group "
                   "named base; UniCAM: the teacher)")
    p.add_argument("--data", help="data spec, e.g. 'shapes?n=2000' or cifar10:DIR (default: the student's recorded one)")
    p.add_argument("--layers", nargs="+", default=["stage:-1"], help="tap specs present in every model, e.g. stage:0 stage:1 stage:2")
    p.add_argument("--out", required=True, help="new folder for report.html, report.json, the PNG grids, tables and summary.md")
    p.add_argument("--labels", default="auto",
                   help="label embeddings: auto (text if installed, else onehot), text, onehot, prototype[:teacher|student|base]")
    p.add_argument("--estimator", choices=["unbiased", "biased"], default="unbiased", help="distance correlation estimator for every score")
    p.add_argument("--cam", choices=["gradcam", "hirescam"], default="gradcam", help="saliency for the Grad-CAM and UniCAM maps")
    p.add_argument("--batch-size", type=int, default=64, help="UniCAM/score batch size (maps depend on it; written into every output)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the UniCAM batch composition, the grid images, the t-SNE subsample and t-SNE")
    p.add_argument("--limit", type=int, help="use only the first N images of the split (default: all)")
    p.add_argument("--road-fraction", type=float, default=0.5,
                   help="fraction of least relevant pixels ROAD-LeRF removes for the perturbed scores")
    p.add_argument("--no-road", action="store_true", help="scores on clean inputs only")
    p.add_argument("--grid-images", type=int, default=8, help="images shown in each PNG grid, drawn with --seed one per class in turn")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_report_options(p)
    p.set_defaults(func=_cmd_explain)


def _cmd_confusion(args) -> None:
    from ..analysis.confusion import confusion_analysis
    from ..engine.device import pick_device

    stats = confusion_analysis(args.teacher, args.model, args.data, args.split, args.out, device=str(pick_device(args.device)))
    print(f"teacher M vs model Q on {args.split} ({stats['classes_compared']}/{stats['classes']} classes compared, diagonal excluded):")
    print(f"  per-class cosine (mean) {stats['cosine']:.4f}")
    print(f"  Pearson (off-diagonal)  {stats['pearson']:.4f}")
    print(f"  soft Jaccard            {stats['jaccard']:.4f}")
    print(f"  top-1: teacher {stats['teacher_top1']:.2f}%, model {stats['model_top1']:.2f}%")
    print("  wrote " + ", ".join(stats["files"]))


def _parse_groups(items: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for item in items:
        name, sep, runs = item.partition("=")
        members = [run for run in runs.split(",") if run.strip()]
        if not sep or not name or not members:
            raise DistillscopeError(f"--group '{item}': expected NAME=RUN,RUN..., e.g. --group kd=runs/kd-s0,runs/kd-s1")
        groups.setdefault(name, []).extend(members)
    return groups


def _refuse_existing(out: Path, names: list[str]) -> None:
    existing = [out / name for name in names if (out / name).exists()]
    if existing:
        raise DistillscopeError(f"'{existing[0]}' already exists; choose another --out folder")


def _cmd_interaction(args) -> None:
    from ..analysis.interaction import FIGURES, interaction_from_runs
    from ..engine.device import pick_device

    out = Path(args.out)
    _refuse_existing(out, ["interaction.json", *FIGURES])
    result = interaction_from_runs(_parse_groups(args.group), args.data, args.layer, args.n, args.split, args.components,
                                   not args.uncentred, args.correlation_percentile, args.gamma, args.presence_percentile,
                                   str(pick_device(args.device)))
    stats = result.stats
    print(f"{stats['models']} models, {stats['points']} {args.split} points, {stats['components']} components each, γ = "
          f"{stats['gamma']:.4f}: {stats['features']} features")
    for name, group in stats["groups"].items():
        print(f"  {name:<14} {group['features']:>5} features  mean frequency {group['mean_frequency']:8.1f}  features per point "
              f"{group['features_per_point_mean']:6.1f}")
    pairs = ", ".join(f"{k} {v}" for k, v in stats["shared"]["pairwise"].items())
    print(f"  shared by all groups: {stats['shared']['all_groups']}" + (f"; pairwise: {pairs}" if pairs else ""))
    for warning in stats["warnings"]:
        print(f"warning: {warning['message']}", file=sys.stderr)
    figures = result.figures(out)
    (out / "interaction.json").write_text(result.to_json())
    print("  wrote " + ", ".join(map(str, [out / "interaction.json", *figures])))


def _cmd_infoplane(args) -> None:
    from ..analysis.infoplane import FIGURE, ProbeSettings, information_plane
    from ..engine.device import pick_device

    out = Path(args.out)
    _refuse_existing(out, ["infoplane.json", FIGURE])
    layers = [layer for item in args.layers for layer in item.split(",") if layer]
    settings = ProbeSettings(epochs=args.epochs, device=str(pick_device(args.device)))
    epochs = [int(e) for e in args.checkpoints.split(",")] if args.checkpoints else None
    result = information_plane(args.runs, args.data, layers, args.n_fit, args.n_eval, settings, epochs=epochs)
    for point in result.points:
        print(f"{Path(point['run']).name:<20} {point['layer']:<12} epoch {point['epoch']:>4}  I(X;F) {point['ixf']:9.2f}  I(Y;F) "
              f"{point['iyf']:6.3f}")
    figures = result.figures(out)
    (out / "infoplane.json").write_text(result.to_json())
    print("wrote " + ", ".join(map(str, [out / "infoplane.json", *figures])))


def _cmd_explain(args) -> None:
    from ..report.html import ReportSettings, build_report

    if args.data:
        _warn_other_data(args)
    explain = {"layers": args.layers, "labels": args.labels, "estimator": args.estimator, "cam": args.cam, "batch_size": args.batch_size,
               "seed": args.seed, "road_fraction": None if args.no_road else args.road_fraction, "grid_images": args.grid_images}
    settings = ReportSettings(
        out=args.out, student=args.student, teacher=args.teacher, base=args.base, groups=_parse_groups(args.group), data=args.data,
        split=args.split, limit=args.limit, only=args.only, skip=args.skip or [], bins=args.bins, cka_images=args.cka_images,
        tsne_points=args.tsne_points, tsne_classes=args.tsne_classes, seed=args.seed, device=args.device, explain=explain,
    )
    result = build_report(settings)
    for name, reason in result["skipped"].items():
        print(f"section {name} not shown: {reason}")
    print(f"explain: {result['seconds']['total']} s  ->  {result['html']}  (every number: {result['json']})")


def _warn_other_data(args) -> None:
    """``train``'s warning for every run named on the command line that was trained on other data than ``--data``."""
    from ..engine.checkpoint import find_model_checkpoint, load_checkpoint
    from ..engine.teachers import warn_other_data

    named = {"student": args.student, "teacher": args.teacher, "base": args.base}
    named |= {f"{group} run {run}": run for group, runs in _parse_groups(args.group).items() for run in runs}
    seen = set()
    for role, run in named.items():
        if run is None or Path(run).resolve() in seen:
            continue
        seen.add(Path(run).resolve())
        state = load_checkpoint(find_model_checkpoint(run))[1]
        warn_other_data(state, args.data, None, who=role if role.endswith(run) else f"{role} {run}", use="it is explained on",
                        why="its maps and scores describe other data than it learned")


def _add_report_options(p: argparse.ArgumentParser) -> None:
    from ..report.html import SECTIONS

    p.add_argument("--group", action="append", default=[], metavar="NAME=RUN,RUN",
                   help="a group of runs (e.g. seeds) shown as mean ± std; repeatable")
    p.add_argument("--split", choices=["test", "val", "train"], default="test",
                   help="split every model is evaluated on; the CAMs always use test")
    p.add_argument("--only", nargs="+", metavar="SECTION",
                   help=f"compute only these report sections: {', '.join(SECTIONS)} (default: all but --skip)")
    p.add_argument("--skip", nargs="+", metavar="SECTION", help="leave these report sections out")
    p.add_argument("--bins", type=int, default=15, help="equal-width confidence bins of ECE and the reliability diagrams")
    p.add_argument("--cka-images", type=int, default=500, help="images for linear CKA (N×N Gram matrices)")
    p.add_argument("--tsne-points", type=int, default=500, help="images in each t-SNE plot")
    p.add_argument("--tsne-classes", type=int, default=10, help="at most this many classes (drawn with --seed) in the t-SNE plots")
