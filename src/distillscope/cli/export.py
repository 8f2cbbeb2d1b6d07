"""``distillscope export``: a run's deployable student as safetensors, ONNX or TorchScript, with a model card."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a run's student alone (safetensors, ONNX or TorchScript) with a model card README.md")
    p.add_argument("run", help="run folder (with summary.json)")
    p.add_argument("--format", choices=["safetensors", "onnx", "torchscript"], default="safetensors",
                   help="safetensors (default), onnx (needs distillscope[export]) or torchscript")
    p.add_argument("--out", required=True, help="new folder for the model, README.md and config.yaml (never an existing one)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="best validation epoch (default) or the last epoch")
    p.add_argument("--input-size", type=int, help="image side of the example input (default: the data spec's size=, else 32)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> None:
    from ..export import export_run

    path = export_run(args.run, args.out, args.format, args.checkpoint, args.input_size)
    print(f"exported {args.run} ({args.checkpoint}) as {args.format}: {path}; model card: {path.parent / 'README.md'}")
