"""Every command's --help shows each option's default."""
import argparse

from distillscope.cli import DefaultsHelpFormatter, build_parser


def parsers(parser: argparse.ArgumentParser, name: str = "distillscope"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def shown(default) -> str:
    return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


def test_every_option_with_a_default_shows_it_in_its_help():
    checked, missing = 0, []
    for name, parser in parsers(build_parser()):
        assert parser.formatter_class is DefaultsHelpFormatter, name
        formatter = parser._get_formatter()
        for action in parser._actions:
            default = action.default
            if action.nargs == 0 or default is None or default is argparse.SUPPRESS or default == []:
                continue  # flags, options without a value of their own, repeatable options that start empty
            text = formatter._expand_help(action) if action.help else ""  # argparse prints no line for an option without help
            checked += 1
            if shown(default) not in text:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: default {default!r} not in {text!r}")
    assert not missing, "\n".join(missing)
    assert checked > 50


def test_the_commands_walked_include_nested_ones_and_synthesize_shows_its_real_defaults():
    names = {name for name, _ in parsers(build_parser())}
    assert {"distillscope synthesize", "distillscope cache prune", "distillscope eval", "distillscope explain"} <= names
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["synthesize"].format_help().split())
    assert "--steps STEPS Adam steps per batch (default: 2000)" in text and "--mode {deepinversion,adi,deepdream,noise}" in text
    assert "(default: deepinversion)" in text


def test_an_option_whose_help_gives_no_default_is_caught():
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    given = parser.add_argument("--steps", type=int, default=2000, help="Adam steps per batch")
    # says "default", not the value
    said = parser.add_argument("--lr", type=float, default=0.1, help="learning rate (default: the recipe's)")
    formatter = parser._get_formatter()
    assert formatter._expand_help(given) == "Adam steps per batch (default: 2000)"
    assert "0.1" not in formatter._expand_help(said)  # the walker above reports such an option
