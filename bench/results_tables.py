"""Check (or rewrite) the tables of docs/results.md against what their kept records give.

A table made from records sits between two HTML comments, the first naming the command that makes it:

    <!-- table: distillscope table bench/records/c10k-sfkd -->
    | run | model | ... |
    ...

    Machine: ...
    <!-- /table -->

Everything between the two lines is exactly what the command prints (standard output, trailing newlines
dropped), so a `distillscope table` keeps its machine lines. Commands run from the repository root:
`distillscope ...` in-process through the CLI's own main (arguments passed through as they are),
`python SCRIPT ...` as a subprocess.

    python bench/results_tables.py           # --check: a unified diff per table that differs, exit 1
    python bench/results_tables.py --write   # rewrite the marked tables; no other byte of the file changes
    python bench/results_tables.py --list    # the markers, then the tables that have none (no records yet)
"""
import argparse
import contextlib
import difflib
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "results.md"
OPEN = re.compile(r"<!-- table: (.+?) -->\s*$")
CLOSE = re.compile(r"<!-- /table -->\s*$")
SEPARATOR = re.compile(r"\|(\s*:?-+:?\s*\|)+\s*$")


class CommandFailed(Exception):
    pass


def marked(lines: list[str], name: str = "docs") -> list[tuple[str, int, int]]:
    """``(command, index of its first table line, index of the closing marker)`` per marker in ``lines``
    (markers inside code fences do not count)."""
    found, start, fence = [], None, False
    for i, line in enumerate(lines):
        if line.startswith(("```", "~~~")):
            fence = not fence
        elif fence:
            continue
        elif OPEN.match(line):
            if start is not None:
                raise SystemExit(f"{name}:{i + 1}: a table marker while the one on line {start + 1} is still open")
            start = i
        elif CLOSE.match(line):
            if start is None:
                raise SystemExit(f"{name}:{i + 1}: '<!-- /table -->' with no '<!-- table: COMMAND -->' above it")
            found.append((OPEN.match(lines[start]).group(1).strip(), start + 1, i))
            start = None
    if start is not None:
        raise SystemExit(f"{name}:{start + 1}: table marker with no '<!-- /table -->' after it")
    return found


def unmarked(lines: list[str]) -> list[tuple[int, str]]:
    """``(line number, the heading above it)`` of each Markdown table outside the markers and code fences."""
    inside = {i for _, first, close in marked(lines) for i in range(first, close)}
    tables, fence, heading = [], False, ""
    for i, line in enumerate(lines):
        if line.startswith(("```", "~~~")):
            fence = not fence
        elif not fence and line.startswith("#"):
            heading = line.strip()
        elif (not fence and i not in inside and line.startswith("|") and i + 1 < len(lines)
              and SEPARATOR.match(lines[i + 1]) and not (i and lines[i - 1].startswith("|"))):
            tables.append((i + 1, heading))
    return tables


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run(command: str, root: Path = ROOT) -> str:
    """What ``command`` prints when run from ``root``, trailing newlines dropped."""
    argv = shlex.split(command)
    if argv[0] == "distillscope":
        from distillscope.cli import main

        out, err = io.StringIO(), io.StringIO()
        with _cwd(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            try:
                code = main(argv[1:])
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 1
        stdout, stderr = out.getvalue(), err.getvalue()
    elif argv[0] in ("python", "python3"):
        done = subprocess.run([sys.executable, *argv[1:]], cwd=root, capture_output=True, text=True)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        raise CommandFailed(f"`{command}`: only `distillscope ...` and `python ...` commands are run")
    if code:
        raise CommandFailed(f"`{command}` exited with {code}:\n{stderr.strip()}")
    return stdout.rstrip("\n")


def regenerate(docs: Path, root: Path = ROOT) -> tuple[str, list[str], list[str]]:
    """``(the docs text with every marked table regenerated, a unified diff per table that differs, a message per
    command that failed)``; a failed command's table is left as it is."""
    lines = docs.read_bytes().decode().splitlines(keepends=True)
    out, diffs, failed, done = [], [], [], 0
    for command, first, close in marked(lines, str(docs)):
        out += lines[done:first]
        old = new = lines[first:close]
        try:
            new = [line + "\n" for line in run(command, root).split("\n")]
        except CommandFailed as err:
            failed.append(f"{docs}:{first}: {err}")
        if new != old:
            diffs.append("".join(difflib.unified_diff(old, new, f"{docs}:{first} (docs)", f"`{command}` (records)")))
        out += new
        done = close
    return "".join(out + lines[done:]), diffs, failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="diff each marked table against its command (the default)")
    mode.add_argument("--write", action="store_true", help="replace each marked table by what its command prints")
    mode.add_argument("--list", action="store_true", help="list the markers and the tables with no marker")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file (default docs/results.md)")
    parser.add_argument("--root", type=Path, default=ROOT, help="where the commands run (default the repository root)")
    args = parser.parse_args(argv)
    name = os.path.relpath(args.docs) if not os.path.relpath(args.docs).startswith("..") else str(args.docs)
    if args.list:
        lines = args.docs.read_bytes().decode().splitlines(keepends=True)
        print("Tables made from records (marked):")
        for command, first, _ in marked(lines, name):
            print(f"  {name}:{first}: {command}")
        print("Tables with no marker (no records yet):")
        for number, heading in unmarked(lines):
            print(f"  {name}:{number}: under '{heading}'")
        return 0
    text, diffs, failed = regenerate(args.docs, args.root)
    for message in failed:
        print(message, file=sys.stderr)
    if args.write:
        if diffs:
            args.docs.write_bytes(text.encode())  # bytes: line ends stay as they were
        print(f"{name}: {len(diffs)} table(s) rewritten", file=sys.stderr)
        return 1 if failed else 0
    print("".join(diffs), end="")
    count = len(marked(args.docs.read_bytes().decode().splitlines(keepends=True)))
    print(f"{name}: {count - len(diffs) - len(failed)} of {count} marked table(s) agree with their records", file=sys.stderr)
    return 1 if diffs or failed else 0

if __name__ == "__main__":
    sys.exit(main())
