"""Teacher-assistant chains (Mirzadeh et al., AAAI 2020; paper 002): teacher → assistant(s) → student.

``distillscope chain T.yaml TA.yaml S.yaml --out DIR`` trains the configs in order, each as an ordinary run
folder ``DIR/{i}-{name}``; every step after the first distils from the previous step's run (its
``teacher.name`` and ``teacher.checkpoint`` are set to that run's student and folder). Re-running the same
command resumes the chain: finished steps (``summary.json``) are skipped, an interrupted one is resumed.
Each finished step gets a ``chain.json`` (its index and the chain's step names), so ``table`` shows a distilled
step as its own row, ``assistant → student``, apart from runs of the same config distilled directly.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import load_config
from .errors import DistillscopeError


def write_record(folder: Path, step: int, names: list[str]) -> None:
    """``chain.json``: the step's index and the names of every step of its chain (``table`` reads it)."""
    (folder / "chain.json").write_text(json.dumps({"step": step, "steps": names}, indent=2) + "\n")


def run_chain(configs: list[str | Path], out: str | Path, overrides: list[str] = (), echo=print) -> list[dict]:
    """Train every step in order (skipping finished ones); returns each step's summary."""
    from .engine import Trainer

    if len(configs) < 2:
        raise DistillscopeError("chain: give at least two configs (a teacher and a student), in training order")
    summaries, previous, previous_folder = [], None, None
    names = [load_config(path).name for path in configs]
    for i, (path, name) in enumerate(zip(configs, names)):
        folder = Path(out) / f"{i}-{name}"
        extra = list(overrides)
        if previous is not None:
            extra += [f"teacher.name={previous.student.name}", f"teacher.checkpoint={previous_folder}"]
        config = load_config(path, extra)
        if previous is not None and config.teachers:
            raise DistillscopeError(f"chain step {i} ({path}): a chain step distils from the previous step alone; remove its teachers list")
        if (folder / "summary.json").is_file():
            echo(f"chain step {i}: {folder} finished, skipped")
            summaries.append(json.loads((folder / "summary.json").read_text()))
        else:
            resume = (folder / "config.yaml").is_file()
            echo(f"chain step {i}: {'resuming' if resume else 'training'} {config.name} -> {folder}")
            summaries.append(Trainer(config, folder, resume=resume).fit())
        write_record(folder, i, names)
        previous, previous_folder = config, folder
    return summaries
