"""Command line: ``distillscope list | train | eval | download | demo | sweep | table | confusion | interaction | infoplane |
explain | cache | synthesize | chain``.

``--import MODULE`` (before or after the command, repeatable) imports a module or a ``.py`` file first,
so the models it registers (``distillscope.register_model``) can be named in configs and checkpoints.

Each module here registers its commands' parsers beside their handlers (``add_parser(subparsers)``): ``listing``,
``train`` (train, eval, download, demo), ``sweep`` (sweep, table), ``analysis`` (confusion, interaction, infoplane,
explain), ``cache``, ``synthesize`` (synthesize, chain).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

from ..errors import DistillscopeError
from . import analysis, cache, export, listing, sweep, synthesize, train

COMMANDS = (listing, train, sweep, analysis, cache, synthesize, export)


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
            raise DistillscopeError(f"--import {name}: it does not import ({type(exc).__name__}: {reason}); "
                                    "give a module on the Python path or a .py file") from None


def _add_import_flag(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--import", dest=dest, action="append", default=[], metavar="MODULE",
        help="import a module or .py file first (its register_model calls run); repeatable",
    )


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with ``(default: VALUE)``, unless its text already says what the default is (it
    holds the word "default", as an option whose default comes from elsewhere must: "(default: the run's own)"),
    or there is none to show (None, a flag, an empty list). Set on every parser by :func:`build_parser`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if (action.nargs == 0 or default is None or default is argparse.SUPPRESS or default == [] or "default" in text
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def _all_parsers(parser: argparse.ArgumentParser):
    """``parser`` and every (sub)command parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _all_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="distillscope", description="Distil a teacher into a student, then show what it learned.")
    parser.add_argument("--version", action="version", version=f"distillscope {__version__}")
    _add_import_flag(parser, "imports")
    parser.add_argument("--threads", type=int, help="torch CPU threads for this command, e.g. explain or synthesize beside a training "
                        "(default: torch's; a recipe's run.threads wins in train, sweep has its own --threads)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    for command in sub.choices.values():
        _add_import_flag(command, "command_imports")
    for each in _all_parsers(parser):
        each.formatter_class = DefaultsHelpFormatter  # every --help shows each option's default
    return parser


def set_threads(threads: int) -> None:
    """``--threads``: torch's intra-op CPU threads for the whole command."""
    if threads < 1:
        raise DistillscopeError(f"--threads {threads}: give at least 1 (the CPU threads torch may use)")
    import torch

    torch.set_num_threads(threads)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from ..errors import DistillscopeWarning

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
