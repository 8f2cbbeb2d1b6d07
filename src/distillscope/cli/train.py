"""``distillscope train``, ``eval``, ``download`` and ``demo``."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DistillscopeError

DEVICE_HELP = "auto (cuda where torch sees a GPU, else cpu), cpu, cuda or cuda:N"


def add_parser(subparsers) -> None:
    from ..demo import DEFAULTS as DEMO

    p = subparsers.add_parser("train", help="train a teacher, a baseline or a student from a YAML recipe")
    p.add_argument("config", nargs="?", help="YAML recipe (default: built-in defaults; with --resume: the run's config.yaml)")
    p.add_argument("--data", help="data spec overriding the recipe's, e.g. cifar10:DIR or shapes?n=2000 (default: the recipe's data.spec)")
    p.add_argument("--out", help="run folder (default: runs/NAME, never an existing one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set optim.lr=0.1")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a dataset's test split")
    p.add_argument("checkpoint", help="run folder (uses best, else last) or .safetensors file")
    p.add_argument("--data", required=True, help="data spec, e.g. cifar10:DIR")
    p.add_argument("--batch-size", type=int, default=512, help="images per evaluation batch")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="autocast for evaluation (default: the run's own)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser("download", help="fetch the official CIFAR-10/100 archive (MD5-checked) into a folder")
    p.add_argument("name", choices=["cifar10", "cifar100"])
    p.add_argument("dest", help="parent folder, e.g. data")
    p.set_defaults(func=_cmd_download)

    p = subparsers.add_parser("demo", help="teacher, CE student and KD student on the built-in data; prints a table and a verdict")
    p.add_argument("--out", default="runs/demo", help="folder for the runs, never an existing one")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 or 0-4: mean ± std over them (the data stays fixed)")
    p.add_argument("--epochs", type=int, default=DEMO["epochs"], help="epochs of each of the three runs")
    p.add_argument("--n", type=int, default=DEMO["n"], help="training images of the built-in set")
    p.add_argument("--n-test", type=int, default=DEMO["n_test"], help="test images of the built-in set")
    p.add_argument("--size", type=int, default=DEMO["size"], help="image side in pixels")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report of the KD student at the end")
    p.set_defaults(func=_cmd_demo)


def _cmd_train(args) -> None:
    from ..api import fresh_folder
    from ..config import load_config
    from ..engine import Trainer

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

    from ..data import Loader, load_data
    from ..engine import evaluate, load_model
    from ..engine.device import pick_device
    from ..engine.precision import AMP_DTYPES, choose_precision
    from ..engine.teachers import warn_other_data

    device = pick_device(args.device)
    model, state = load_model(args.checkpoint, device)
    data = load_data(args.data)
    if data.num_classes != state["num_classes"]:
        raise DistillscopeError(f"checkpoint has {state['num_classes']} classes but '{args.data}' has {data.num_classes}")
    warn_other_data(state, args.data, data.classes, who="checkpoint", use="is evaluated on",
                    why="the numbers are for other data than it learned")
    run = state["config"]["run"]  # evaluate as the run did, unless told otherwise
    amp_dtype = AMP_DTYPES[choose_precision(args.precision or state.get("precision") or run["precision"], device)[0]]
    if run["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    loader = Loader(data.test, args.batch_size, tuple(state["mean"]), tuple(state["std"]), device=device,
                    channels_last=run["channels_last"])
    metrics = evaluate(model, loader, amp_dtype)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{state['model']} on {args.data} test: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  NLL "
              f"{metrics['nll']:.4f}  ({metrics['count']} images)")


def _cmd_download(args) -> None:
    from ..data.cifar import download_cifar

    target = download_cifar(args.name, args.dest)
    print(f"{args.name} is in {target}; use it as --data {args.name}:{target}")


def _cmd_demo(args) -> None:
    from ..demo import run_demo
    from ..sweep import parse_seeds

    run_demo(Path(args.out), seeds=parse_seeds(args.seeds), epochs=args.epochs, n=args.n, n_test=args.n_test, size=args.size,
             report=not args.no_report)
