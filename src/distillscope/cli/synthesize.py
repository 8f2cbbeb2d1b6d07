"""``distillscope synthesize`` and ``chain``: data-free images from a teacher, teacher -> assistant -> student chains."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .train import DEVICE_HELP


def add_parser(subparsers) -> None:
    from dataclasses import fields

    from ..synthesize import SynthesisSettings

    d = {f.name: f.default for f in fields(SynthesisSettings)}  # one set of defaults, for every mode (the paper's CIFAR-10 setting)
    p = subparsers.add_parser("synthesize", help="data-free training images from a teacher (DeepInversion, ADI with a student; "
                              "noise/DeepDream floors); re-run resumes")
    p.add_argument("teacher", help="teacher run folder or .safetensors")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True,
                   help="output folder (DIR/train, DIR/test, DIR/grid.png); re-run with the same settings to resume")
    p.add_argument("--mode", choices=["deepinversion", "adi", "deepdream", "noise"], default=d["mode"],
                   help="adi: DeepInversion plus a competition with a student KD-trained on the images as they are made (needs "
                   "--student-arch or --student)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="images optimised together")
    p.add_argument("--steps", type=int, default=d["steps"], help="Adam steps per batch")
    p.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate on the images")
    p.add_argument("--bn-weight", type=float, default=d["bn_weight"], help="weight of the BN-statistics term (deepinversion)")
    p.add_argument("--tv-weight", type=float, default=d["tv_weight"], help="weight of the total-variation prior")
    p.add_argument("--l2-weight", type=float, default=d["l2_weight"], help="weight of the image L2 prior")
    p.add_argument("--ce-weight", type=float, default=d["ce_weight"], help="weight of the cross-entropy to the target classes")
    p.add_argument("--size", type=int, default=d["size"], help="image side in pixels")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed of the starting images (and of an adi student's initial weights)")
    p.add_argument("--student-arch", help="adi: a fresh zoo student, e.g. resnet8 (default: none; adi needs this or --student)")
    p.add_argument("--student", help="adi: a trained student run folder or .safetensors to start from")
    p.add_argument("--competition-weight", type=float, default=d["competition_weight"],
                   help="adi: weight α_c of the competition term 1 - JS(p_T, p_S)")
    p.add_argument("--temperature", type=float, default=d["temperature"],
                   help="adi: softmax temperature of the JS term and of the student's KD")
    p.add_argument("--student-steps", type=int, default=d["student_steps"],
                   help="adi: student KD steps after each batch, on mini-batches of every image made so far")
    p.add_argument("--student-lr", type=float, default=d["student_lr"],
                   help="adi: the student's SGD learning rate (momentum 0.9, weight decay 5e-4)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_cmd_synthesize)

    p = subparsers.add_parser("chain", help="teacher -> assistant -> student: train configs in order, each distilling from the previous "
                              "run; re-run resumes")
    p.add_argument("configs", nargs="+", help="YAML recipes in training order (the first is the teacher)")
    p.add_argument("--out", required=True, help="folder for the step runs (OUT/{i}-{name}; with --seeds OUT/s{seed}/{i}-{name})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override applied to every step, e.g. --set epochs=5")
    p.add_argument("--seeds",
                   help="one whole chain per seed, in turn: 0,1,2 or 0-4 (every step gets seed=S; default: one chain, the recipes' seeds)")
    p.set_defaults(func=_cmd_chain)


def _cmd_synthesize(args) -> None:
    from ..engine.device import pick_device
    from dataclasses import fields

    from ..synthesize import SynthesisSettings, synthesize

    given = {f.name: getattr(args, f.name) for f in fields(SynthesisSettings) if getattr(args, f.name) is not None}
    settings = SynthesisSettings(**given)  # flags left out keep the settings' defaults
    out = synthesize(args.teacher, args.out, settings, device=pick_device(args.device))
    print(f"{args.n} images in {out / 'train'} (grid: {out / 'grid.png'}); train on them with data.spec=folder:{out}")
    fit = json.loads((out / "teacher_fit.json").read_text())
    print(f"the teacher's top-1 on the saved images against their target classes: {fit['top1']:.1f}% (cross-entropy {fit['nll']:.2f})")
    if settings.mode != "noise" and fit["top1"] < 50:
        print("warning: the images carry their class poorly for the teacher that made them; "
              f"more --steps (now {settings.steps}) usually helps", file=sys.stderr)


def _cmd_chain(args) -> None:
    from ..chain import run_chain
    from ..sweep import parse_seeds

    chains = [(Path(args.out), args.set)] if args.seeds is None else [
        (Path(args.out) / f"s{seed}", [*args.set, f"seed={seed}"]) for seed in parse_seeds(args.seeds)]
    for out, overrides in chains:
        summaries = run_chain(args.configs, out, overrides)
        for i, summary in enumerate(summaries):
            print(f"{out} step {i}: {summary['name']} ({summary['student']}): last epoch test top-1 {summary['last']['test/top1']:.2f}%")
