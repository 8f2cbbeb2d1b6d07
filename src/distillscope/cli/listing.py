"""``distillscope list``: registered models, methods or datasets."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("list", help="print registered models, methods or datasets")
    p.add_argument("what", choices=["models", "methods", "datasets"])
    p.set_defaults(func=_cmd_list)


def _cmd_list(args) -> None:
    from ..data import list_datasets
    from ..methods.registry import methods_markdown
    from ..models import list_models

    if args.what == "methods":  # a Markdown table: name, family, paper, year, taps (docs/design.md holds a copy)
        print(methods_markdown())
        return
    names = {"models": list_models, "datasets": list_datasets}[args.what]()
    print("\n".join(names))
