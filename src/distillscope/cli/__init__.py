"""Command line: ``distillscope list | train | sweep | eval | table | download | cache | demo | confusion | explain | interaction | infoplane | synthesize | chain``.

``--import MODULE`` (before or after the command, repeatable) imports a module or a ``.py`` file first,
so the models it registers (``distillscope.register_model``) can be named in configs and checkpoints.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import DistillscopeError


def _cmd_list(args) -> None:
    from .data import list_datasets
    from .methods import list_methods
    from .models import list_models

    names = {"models": list_models, "methods": list_methods, "datasets": list_datasets}[args.what]()
    print("\n".join(names))


def _cmd_train(args) -> None:
    from .api import fresh_folder
    from .config import load_config
    from .engine import Trainer

    config_path = args.config
    if args.resume:
        if args.out is None:
            raise DistillscopeError("--resume needs --out RUN_FOLDER (the run to continue)")
        config_path = config_path or Path(args.out) / "config.yaml"
    config = load_config(config_path, args.set, args.data)
    out = Path(args.out) if args.out else fresh_folder(Path("runs") / config.name)
    trainer = Trainer(config, out, resume=args.resume)
    summary = trainer.fit()
    if trainer.dist.is_main:
        print(_summary_line(summary, out))


def _summary_line(summary: dict, out: Path) -> str:
    last, best = summary["last"], summary["best"]
    text = f"{summary['name']}: last epoch test top-1 {last['test/top1']:.2f}%"
    if best:
        text += f", best-val epoch {best['epoch']} test top-1 {best['test/top1']:.2f}%"
    return text + f"  ->  {out}"


def _cmd_eval(args) -> None:
    import torch

    from .data import Loader, load_data
    from .engine import evaluate, load_model
    from .engine.precision import AMP_DTYPES, choose_precision
    from .engine.trainer import pick_device

    device = pick_device(args.device)
    model, state = load_model(args.checkpoint, device)
    data = load_data(args.data)
    if data.num_classes != state["num_classes"]:
        raise DistillscopeError(f"checkpoint has {state['num_classes']} classes but '{args.data}' has {data.num_classes}")
    run = state["config"]["run"]  # evaluate as the run did, unless told otherwise
    amp_dtype = AMP_DTYPES[choose_precision(args.precision or state.get("precision") or run["precision"], device)[0]]
    if run["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    loader = Loader(data.test, args.batch_size, tuple(state["mean"]), tuple(state["std"]), device=device, channels_last=run["channels_last"])
    metrics = evaluate(model, loader, amp_dtype)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{state['model']} on {args.data} test: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  NLL {metrics['nll']:.4f}  ({metrics['count']} images)")


def _cmd_download(args) -> None:
    from .data.cifar import download_cifar

    target = download_cifar(args.name, args.dest)
    print(f"{args.name} is in {target}; use it as --data {args.name}:{target}")


def _cmd_sweep(args) -> int:
    from .sweep import SweepFailed, SweepInterrupted, run_sweep

    try:
        run_sweep(args.configs, args.seeds, args.grid, args.set, args.out, args.workers, args.threads, args.dry_run,
                  imports=args.imports + args.command_imports, gpus=args.gpus, baseline=args.baseline)
    except SweepInterrupted as err:
        print(f"distillscope: {err}", file=sys.stderr)
        return 130
    except SweepFailed as err:
        print(f"distillscope: error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_table(args) -> None:
    from .report import find_runs, format_csv, format_markdown, read_summaries, table_rows

    finished, unfinished = find_runs(args.runs)
    if not finished:
        raise DistillscopeError(f"no finished runs in {' '.join(args.runs)} (unfinished: {', '.join(p.name for p in unfinished)})")
    csv_path, figure_path = (Path(p) if p else None for p in (args.csv, args.figure))
    for option, path in (("--csv", csv_path), ("--figure", figure_path)):
        if path and path.exists():
            raise DistillscopeError(f"{option} '{path}' already exists; choose another file name or remove it")
    rows = table_rows(read_summaries(finished), baseline=args.baseline)
    print(format_markdown(rows))
    if unfinished:
        print(f"\nNot finished, left out: {', '.join(map(str, unfinished))}")
    if csv_path:
        csv_path.write_text(format_csv(rows))
        print(f"\nCSV: {csv_path}")
    if figure_path:
        from .report.figures import results_chart

        figure_path.write_bytes(results_chart(rows, "test top-1 over seeds; precision " + ", ".join(sorted({row["precision"] for row in rows}))))
        print(f"\nFigure: {figure_path}")


def _cmd_confusion(args) -> None:
    from .analysis.confusion import confusion_analysis
    from .engine.trainer import pick_device

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
    from .analysis.interaction import FIGURES, interaction_from_runs
    from .engine.trainer import pick_device

    out = Path(args.out)
    _refuse_existing(out, ["interaction.json", *FIGURES])
    result = interaction_from_runs(_parse_groups(args.group), args.data, args.layer, args.n, args.split, args.components, not args.uncentred,
                                   args.correlation_percentile, args.gamma, args.presence_percentile, str(pick_device(args.device)))
    stats = result.stats
    print(f"{stats['models']} models, {stats['points']} {args.split} points, {stats['components']} components each, γ = {stats['gamma']:.4f}: {stats['features']} features")
    for name, group in stats["groups"].items():
        print(f"  {name:<14} {group['features']:>5} features  mean frequency {group['mean_frequency']:8.1f}  features per point {group['features_per_point_mean']:6.1f}")
    pairs = ", ".join(f"{k} {v}" for k, v in stats["shared"]["pairwise"].items())
    print(f"  shared by all groups: {stats['shared']['all_groups']}" + (f"; pairwise: {pairs}" if pairs else ""))
    for warning in stats["warnings"]:
        print(f"warning: {warning['message']}", file=sys.stderr)
    figures = result.figures(out)
    (out / "interaction.json").write_text(result.to_json())
    print("  wrote " + ", ".join(map(str, [out / "interaction.json", *figures])))


def _cmd_infoplane(args) -> None:
    from .analysis.infoplane import FIGURE, ProbeSettings, information_plane
    from .engine.trainer import pick_device

    out = Path(args.out)
    _refuse_existing(out, ["infoplane.json", FIGURE])
    layers = [layer for item in args.layers for layer in item.split(",") if layer]
    settings = ProbeSettings(epochs=args.epochs, device=str(pick_device(args.device)))
    epochs = [int(e) for e in args.checkpoints.split(",")] if args.checkpoints else None
    result = information_plane(args.runs, args.data, layers, args.n_fit, args.n_eval, settings, epochs=epochs)
    for point in result.points:
        print(f"{Path(point['run']).name:<20} {point['layer']:<12} epoch {point['epoch']:>4}  I(X;F) {point['ixf']:9.2f}  I(Y;F) {point['iyf']:6.3f}")
    figures = result.figures(out)
    (out / "infoplane.json").write_text(result.to_json())
    print("wrote " + ", ".join(map(str, [out / "infoplane.json", *figures])))


def _cmd_cache_build(args) -> None:
    from .config import load_config
    from .engine.cache import build_cache
    from .engine.checkpoint import find_model_checkpoint, load_checkpoint

    if not args.config and not args.data:
        raise DistillscopeError("cache build: give --data SPEC (e.g. cifar100:DIR) or a --config recipe that names its data")
    configs = []
    for teacher in args.teacher:
        _, state = load_checkpoint(find_model_checkpoint(teacher))
        configs.append(load_config(args.config, [*args.set, f"teacher.name={state['model']}", f"teacher.checkpoint={teacher}"], args.data))
    if not args.teacher:
        if not args.config:
            raise DistillscopeError("cache build: give teacher run folders, or a --config whose teacher(s) have checkpoints")
        configs.append(load_config(args.config, args.set, args.data))
    for config in configs:
        for cache, calls in build_cache(config, args.dir, args.batch_size, progress=True):
            print(f"teacher cache {cache.folder} ({cache.storage.describe()}): {len(cache.rows)} images x {cache.views} views filled ({calls} teacher batches); "
                  f"share it with run.teacher_cache={cache.folder.parent}")


def _cmd_cache_list(args) -> None:
    from .engine.cache import default_cache_root, list_caches

    root = args.root or default_cache_root()
    caches = list_caches(root)
    if not caches:
        print(f"no teacher caches in {root}")
    for c in caches:
        features = f"  + features {', '.join(c['features'])}" if c["features"] else ""
        print(f"{c['folder']}  {c['teacher']}  {c['classes']} classes{features}  {c['rows']} rows x {c['views']} views  "
              f"{100 * c['filled']:.1f}% filled  {c['bytes_on_disk'] / 2**20:.1f} MiB on disk")


def _cmd_demo(args) -> None:
    from .demo import run_demo
    from .sweep import parse_seeds

    run_demo(Path(args.out), seeds=parse_seeds(args.seeds), epochs=args.epochs, n=args.n, n_test=args.n_test, size=args.size, report=not args.no_report)


def _cmd_synthesize(args) -> None:
    from .engine.trainer import pick_device
    from dataclasses import fields

    from .synthesize import SynthesisSettings, synthesize

    given = {f.name: getattr(args, f.name) for f in fields(SynthesisSettings) if getattr(args, f.name) is not None}
    settings = SynthesisSettings(**given)  # flags left out keep the settings' defaults
    out = synthesize(args.teacher, args.out, settings, device=pick_device(args.device))
    print(f"{args.n} images in {out / 'train'} (grid: {out / 'grid.png'}); train on them with data.spec=folder:{out}")
    fit = json.loads((out / "teacher_fit.json").read_text())
    print(f"the teacher's top-1 on the saved images against their target classes: {fit['top1']:.1f}% (cross-entropy {fit['nll']:.2f})")
    if settings.mode != "noise" and fit["top1"] < 50:
        print(f"warning: the images carry their class poorly for the teacher that made them; more --steps (now {settings.steps}) usually helps", file=sys.stderr)


def _cmd_chain(args) -> None:
    from .chain import run_chain
    from .sweep import parse_seeds

    chains = [(Path(args.out), args.set)] if args.seeds is None else [
        (Path(args.out) / f"s{seed}", [*args.set, f"seed={seed}"]) for seed in parse_seeds(args.seeds)]
    for out, overrides in chains:
        summaries = run_chain(args.configs, out, overrides)
        for i, summary in enumerate(summaries):
            print(f"{out} step {i}: {summary['name']} ({summary['student']}): last epoch test top-1 {summary['last']['test/top1']:.2f}%")


def import_modules(names: list[str]) -> None:
    """Import each module name (found from the current folder too) or ``.py`` file, for its registrations."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                if not path.is_file():
                    raise FileNotFoundError(f"no file {path}")
                if getattr(sys.modules.get(path.stem), "__file__", None) == str(path):
                    continue  # imported already, like import_module would
                spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except Exception as exc:  # the user's module may fail in any way; report it in one line
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise DistillscopeError(f"--import {name}: it does not import ({type(exc).__name__}: {reason}); give a module on the Python path or a .py file") from None


def _add_import_flag(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--import", dest=dest, action="append", default=[], metavar="MODULE",
        help="import a module or .py file first (its register_model calls run); repeatable",
    )


def _cmd_explain(args) -> None:
    from .report.html import ReportSettings, build_report

    explain = {"layers": args.layers, "labels": args.labels, "estimator": args.estimator, "cam": args.cam, "batch_size": args.batch_size,
               "seed": args.seed, "road_fraction": None if args.no_road else args.road_fraction, "grid_images": args.grid_images}
    settings = ReportSettings(
        out=args.out, student=args.student, teacher=args.teacher, base=args.base, groups=_parse_groups(args.group), data=args.data, split=args.split,
        limit=args.limit, only=args.only, skip=args.skip or [], bins=args.bins, cka_images=args.cka_images, tsne_points=args.tsne_points,
        tsne_classes=args.tsne_classes, seed=args.seed, device=args.device, explain=explain,
    )
    result = build_report(settings)
    for name, reason in result["skipped"].items():
        print(f"section {name} not shown: {reason}")
    print(f"explain: {result['seconds']['total']} s  ->  {result['html']}  (every number: {result['json']})")


def _add_report_options(p: argparse.ArgumentParser) -> None:
    from .report.html import SECTIONS

    p.add_argument("--group", action="append", default=[], metavar="NAME=RUN,RUN", help="a group of runs (e.g. seeds) shown as mean ± std; repeatable")
    p.add_argument("--split", choices=["test", "val", "train"], default="test", help="split every model is evaluated on (default test; CAMs: test)")
    p.add_argument("--only", nargs="+", metavar="SECTION", help=f"compute only these report sections: {', '.join(SECTIONS)}")
    p.add_argument("--skip", nargs="+", metavar="SECTION", help="leave these report sections out")
    p.add_argument("--bins", type=int, default=15, help="equal-width confidence bins of ECE and the reliability diagrams (default 15)")
    p.add_argument("--cka-images", type=int, default=500, help="images for linear CKA (N×N Gram matrices; default 500)")
    p.add_argument("--tsne-points", type=int, default=500, help="images in each t-SNE plot (default 500)")
    p.add_argument("--tsne-classes", type=int, default=10, help="at most this many classes (drawn with --seed) in the t-SNE plots")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .demo import DEFAULTS as DEMO

    parser = argparse.ArgumentParser(prog="distillscope", description="Distil a teacher into a student, then show what it learned.")
    parser.add_argument("--version", action="version", version=f"distillscope {__version__}")
    _add_import_flag(parser, "imports")
    parser.add_argument("--threads", type=int, help="torch CPU threads for this command, e.g. explain or synthesize beside a training "
                        "(default: torch's; a recipe's run.threads wins in train, sweep has its own --threads)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="print registered models, methods or datasets")
    p.add_argument("what", choices=["models", "methods", "datasets"])
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("train", help="train a teacher, a baseline or a student from a YAML recipe")
    p.add_argument("config", nargs="?", help="YAML recipe (default: built-in defaults; with --resume: the run's config.yaml)")
    p.add_argument("--data", help="data spec overriding the recipe's, e.g. cifar10:DIR or shapes?n=2000")
    p.add_argument("--out", help="run folder (default: runs/NAME, never an existing one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set optim.lr=0.1")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sweep", help="train configs × grid points × seeds, N at a time; re-run: finished runs skipped, others resumed")
    p.add_argument("configs", nargs="+", help="YAML recipes; run folders are OUT/<file stem>[-KEY=VALUE…]-s<seed>")
    p.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2 or 0-4 (default 0); {seed} in a --set/--grid value is filled per run")
    p.add_argument("--grid", action="append", default=[], metavar="[CONFIG:]KEY=V1,V2",
                   help="one axis of the grid, e.g. --grid method.T=2,4,8 (CONFIG: the recipe's file stem, to give it to one recipe only)")
    p.add_argument("--set", action="append", default=[], metavar="[CONFIG:]KEY=VALUE",
                   help="override for every run (or one recipe's), e.g. --set 'kd:teacher.checkpoint=runs/t-s{seed}'")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores // workers)")
    p.add_argument("--gpus", help="GPU indices, e.g. 0 or 0,1: each run gets the least busy one (--workers 4 --gpus 0: four runs share GPU 0)")
    p.add_argument("--out", required=True, help="folder for the run folders, logs/ and table.md/table.csv")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands, run nothing")
    p.add_argument("--baseline", metavar="ROW", help="compare every row of the final table to this one (see table --baseline)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split")
    p.add_argument("checkpoint", help="run folder (uses best, else last) or .safetensors file")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="autocast for evaluation (default: the run's own)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("download", help="fetch the official CIFAR-10/100 archive (MD5-checked) into a folder")
    p.add_argument("name", choices=["cifar10", "cifar100"])
    p.add_argument("dest", help="parent folder, e.g. data")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("table", help="mean ± std over seeds of finished runs, by config and grid point")
    p.add_argument("runs", nargs="+", help="run folders or sweep folders; runs sharing a config name and grid point are seeds of one row")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV (a new file)")
    p.add_argument("--figure", metavar="FILE", help="also draw the rows as a PNG: each seed, mean ± std at the last epoch, mean at best val (a new file)")
    p.add_argument("--baseline", metavar="ROW",
                   help="a row's run name (with its grid point where needed, e.g. 'kd method.T=4'): each other row's test top-1 "
                        "difference to it, 95%% CI, p-value and minimum detectable effect; paired t where seeds share data and teacher, else Welch")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("confusion", help="teacher class-mean softmax vs a model's confusion matrix (off-diagonal): numbers and figures")
    p.add_argument("teacher", help="teacher run folder or .safetensors")
    p.add_argument("model", help="model run folder or .safetensors")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--out", required=True, help="folder for confusion.json and the PNG figures (existing files are never overwritten)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_confusion)

    p = sub.add_parser("interaction", help="Interaction Tensor of model groups: features shared across models and their frequency over the data")
    p.add_argument("--group", action="append", required=True, metavar="NAME=RUN,RUN", help="a named group of runs (e.g. seeds), repeatable: --group ce=runs/ce-s0,runs/ce-s1 --group kd=...")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--layer", default="stage:-1", help="tap of every model, flattened C·H·W (default: stage:-1, the last stage map before "
                   "pooling, as paper 000; embedding, the pooled feature, is too narrow for 50 components)")
    p.add_argument("--n", type=int, help="first N images of the split (default: all)")
    p.add_argument("--split", choices=["train", "test"], default="test")
    p.add_argument("--components", type=int, default=50, help="PCA components per model (default 50)")
    p.add_argument("--uncentred", action="store_true", help="PCA without mean-centring (the uncentred SVD variant)")
    p.add_argument("--correlation-percentile", type=float, default=99.0, help="γ = this percentile of |correlation| (default 99)")
    p.add_argument("--gamma", type=float, help="absolute correlation threshold instead of the percentile")
    p.add_argument("--presence-percentile", type=float, default=90.0, help="a component is present above this percentile of its model (default 90)")
    p.add_argument("--out", required=True, help="folder for interaction.json and the PNG figures (existing files are never overwritten)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_interaction)

    p = sub.add_parser("infoplane", help="information-plane trajectories I(X;F), I(Y;F) over a run's kept epochs (train with run.keep_every)")
    p.add_argument("runs", nargs="+", help="run folders holding epoch_{e}.safetensors")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--layers", nargs="+", default=["embedding"], help="taps, e.g. --layers stage:0 stage:1 embedding (default embedding)")
    p.add_argument("--n-fit", type=int, default=2000, help="training images the decoder and classifier learn from (default 2000)")
    p.add_argument("--n-eval", type=int, default=1000, help="held-out test images they are scored on (default 1000)")
    p.add_argument("--epochs", type=int, default=60, help="at most this many epochs per head, early-stopped (default 60)")
    p.add_argument("--checkpoints", help="kept epochs to score, e.g. 3,9,30 (default: every kept epoch)")
    p.add_argument("--out", required=True, help="folder for infoplane.json and infoplane.png (existing files are never overwritten)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_infoplane)

    p = sub.add_parser("cache", help="precompute or list teacher-output caches (run.teacher_cache)")
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    c = cache_sub.add_parser("build", help="teacher logits (and the features a recipe's method taps, within run.teacher_cache_max_gib) of every augmentation view of every training image, in one pass")
    c.add_argument("teacher", nargs="*", help="teacher run folders or .safetensors (none: the teacher or teachers of --config)")
    c.add_argument("--data", help="data spec, e.g. cifar100:DIR (default: the --config's)")
    c.add_argument("--config", help="recipe whose data, method and run settings (validation split, augmentation, precision, device, teacher features to store) the runs use")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set run.precision=fp32")
    c.add_argument("--dir", help="cache root (default: run.teacher_cache if it names a folder, else the default cache folder)")
    c.add_argument("--batch-size", type=int, default=256)
    c.set_defaults(func=_cmd_cache_build)
    c = cache_sub.add_parser("list", help="caches under a cache root, with how full they are")
    c.add_argument("root", nargs="?", help="cache root (default: $DISTILLSCOPE_CACHE/teacher, else ~/.cache/distillscope/teacher)")
    c.set_defaults(func=_cmd_cache_list)

    p = sub.add_parser("demo", help="teacher, CE student and KD student on the built-in data; prints a table and a verdict")
    p.add_argument("--out", default="runs/demo", help="folder for the runs (default runs/demo, never an existing one)")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 or 0-4: mean ± std over them (the data stays fixed)")
    p.add_argument("--epochs", type=int, default=DEMO["epochs"])
    p.add_argument("--n", type=int, default=DEMO["n"], help="training images of the built-in set")
    p.add_argument("--n-test", type=int, default=DEMO["n_test"], help="test images of the built-in set")
    p.add_argument("--size", type=int, default=DEMO["size"], help="image side in pixels")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report of the KD student at the end")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("synthesize", help="data-free training images from a teacher (DeepInversion, ADI with a student; noise/DeepDream floors); re-run resumes")
    p.add_argument("teacher", help="teacher run folder or .safetensors")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="output folder (DIR/train, DIR/test, DIR/grid.png); re-run with the same settings to resume")
    p.add_argument("--mode", choices=["deepinversion", "adi", "deepdream", "noise"],
                   help="adi: DeepInversion plus a competition with a student KD-trained on the images as they are made (needs --student-arch or --student)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="Adam steps per batch")
    p.add_argument("--lr", type=float, help="Adam learning rate on the images")
    p.add_argument("--bn-weight", type=float, help="weight of the BN-statistics term (deepinversion)")
    p.add_argument("--tv-weight", type=float, help="weight of the total-variation prior")
    p.add_argument("--l2-weight", type=float, help="weight of the image L2 prior")
    p.add_argument("--ce-weight", type=float, help="weight of the cross-entropy to the target classes")
    p.add_argument("--size", type=int, help="image side in pixels")
    p.add_argument("--seed", type=int)
    p.add_argument("--student-arch", help="adi: a fresh zoo student, e.g. resnet8")
    p.add_argument("--student", help="adi: a trained student run folder or .safetensors to start from")
    p.add_argument("--competition-weight", type=float, help="adi: weight α_c of the competition term 1 - JS(p_T, p_S)")
    p.add_argument("--temperature", type=float, help="adi: softmax temperature of the JS term and of the student's KD")
    p.add_argument("--student-steps", type=int, help="adi: student KD steps after each batch, on mini-batches of every image made so far")
    p.add_argument("--student-lr", type=float, help="adi: the student's SGD learning rate (momentum 0.9, weight decay 5e-4)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_synthesize)

    p = sub.add_parser("chain", help="teacher -> assistant -> student: train configs in order, each distilling from the previous run; re-run resumes")
    p.add_argument("configs", nargs="+", help="YAML recipes in training order (the first is the teacher)")
    p.add_argument("--out", required=True, help="folder for the step runs (OUT/{i}-{name}; with --seeds OUT/s{seed}/{i}-{name})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override applied to every step, e.g. --set epochs=5")
    p.add_argument("--seeds", help="one whole chain per seed, in turn: 0,1,2 or 0-4 (every step gets seed=S)")
    p.set_defaults(func=_cmd_chain)

    p = sub.add_parser("explain", help="one HTML report of a distillation: curves, accuracy, calibration, similarity, Grad-CAM/UniCAM, FSS/RS, ...")
    p.add_argument("--student", help="run folder of the KD student (default: the first run of the first --group)")
    p.add_argument("--teacher", help="run folder of its teacher, the reference of every comparison (default: the one the student recorded)")
    p.add_argument("--base", help="run folder of the base: the student's architecture trained without KD (default: first run of a group named base; UniCAM: the teacher)")
    p.add_argument("--data", help="data spec, e.g. 'shapes?n=2000' or cifar10:DIR (default: the student's recorded one)")
    p.add_argument("--layers", nargs="+", default=["stage:-1"], help="tap specs present in every model (default stage:-1), e.g. stage:0 stage:1 stage:2")
    p.add_argument("--out", required=True, help="new folder for report.html, report.json, the PNG grids, tables and summary.md")
    p.add_argument("--labels", default="auto", help="label embeddings: auto (text if installed, else onehot), text, onehot, prototype[:teacher|student|base]")
    p.add_argument("--estimator", choices=["unbiased", "biased"], default="unbiased", help="distance correlation estimator for every score")
    p.add_argument("--cam", choices=["gradcam", "hirescam"], default="gradcam", help="saliency for the Grad-CAM and UniCAM maps")
    p.add_argument("--batch-size", type=int, default=64, help="UniCAM/score batch size (maps depend on it; written into every output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the UniCAM batch composition, the t-SNE subsample and t-SNE")
    p.add_argument("--limit", type=int, help="use only the first N images of the split")
    p.add_argument("--road-fraction", type=float, default=0.5, help="fraction of least relevant pixels ROAD-LeRF removes for the perturbed scores")
    p.add_argument("--no-road", action="store_true", help="scores on clean inputs only")
    p.add_argument("--grid-images", type=int, default=8, help="images shown in each PNG grid")
    p.add_argument("--device", default="auto")
    _add_report_options(p)
    p.set_defaults(func=_cmd_explain)

    for command in sub.choices.values():
        _add_import_flag(command, "command_imports")
    return parser


def set_threads(threads: int) -> None:
    """``--threads``: torch's intra-op CPU threads for the whole command."""
    if threads < 1:
        raise DistillscopeError(f"--threads {threads}: give at least 1 (the CPU threads torch may use)")
    import torch

    torch.set_num_threads(threads)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from .errors import DistillscopeWarning

    if issubclass(category, DistillscopeWarning):
        print(f"distillscope: warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        if args.threads is not None:
            set_threads(args.threads)
        import_modules(args.imports + args.command_imports)
        return args.func(args) or 0
    except DistillscopeError as err:
        print(f"distillscope: error: {err}", file=sys.stderr)
        return 130 if type(err).__name__ == "TrainingInterrupted" else 2


if __name__ == "__main__":
    sys.exit(main())
