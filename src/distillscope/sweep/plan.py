"""Planning a sweep: every (config × grid point × seed) run, its folder, its overrides and the runs it waits for."""
from __future__ import annotations

import itertools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import RUN_ONLY_KEYS, Config, flatten, from_dict, load_config
from ..errors import DistillscopeError
from ..methods.registry import METHODS
from ..report.tables import differing_keys

TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


@dataclass
class SweepRun:
    """One training run of a sweep: a config file, a grid point and a seed."""

    name: str
    config: Path
    seed: int
    grid: dict[str, str]
    sets: list[str]  # the --set values for this config, as written (templates unfilled)
    templates: dict[str, str]  # KEY -> value as written, for values holding a {…} template
    overrides: list[str]  # KEY=VALUE as the run gets them, templates filled
    folder: Path
    depends_on: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # --import modules, passed on to the run's process

    @property
    def group(self) -> str:
        """The run's name without its seed: runs of one group should take about as long."""
        return self.name.rsplit("-s", 1)[0]

    @property
    def state(self) -> str:
        if (self.folder / "summary.json").is_file():
            return "finished"
        return "resume" if (self.folder / "config.yaml").is_file() else "new"

    def command(self, threads: int) -> list[str]:
        train = [sys.executable, "-m", "distillscope.cli", *(arg for name in self.imports for arg in ("--import", name)), "train"]
        run_only = ["--set", f"run.threads={threads}", "--set", "run.progress=false"]
        if self.state == "resume":
            return [*train, "--resume", "--out", str(self.folder), *run_only]
        sets = [arg for item in self.overrides for arg in ("--set", item)]
        return [*train, str(self.config), *sets, *run_only, "--out", str(self.folder)]

    def write_record(self) -> None:
        """``sweep.json``: what the sweep asked of this run; ``table`` reads ``grid`` and ``templates``."""
        record = {
            "config": str(self.config), "grid": self.grid, "seed": self.seed,
            "set": self.sets, "templates": self.templates, "overrides": self.overrides,
        }
        (self.folder / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")


def parse_seeds(seeds) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` (inclusive), an int or a list of ints."""
    if isinstance(seeds, int):
        return [seeds]
    text = seeds if isinstance(seeds, str) else ",".join(map(str, seeds))
    out = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or int(match[2] or match[1]) < int(match[1]):
            raise DistillscopeError(f"--seeds '{text}': expected seeds like 0,1,2 or a range like 0-4")
        out += range(int(match[1]), int(match[2] or match[1]) + 1)
    if len(set(out)) != len(out):
        raise DistillscopeError(f"--seeds '{text}' names a seed twice")
    return out


def split_values(text: str) -> list[str]:
    """Grid values: commas separate them except inside brackets (``2,4,8``; ``[30,60],[40,80]``)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    return values + [current.strip()]


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _split_target(target: str, flag: str, example: str) -> tuple[str | None, str]:
    """``[CONFIG:]KEY`` -> (CONFIG or None, KEY)."""
    scope, _, key = target.rpartition(":")
    if not key or key == "seed" or key == "run.threads":
        hints = {"seed": "give seeds with --seeds", "run.threads": "give threads per run with --threads"}
        hint = hints.get(key, f"expected [CONFIG:]KEY=VALUE, e.g. {flag} {example}")
        raise DistillscopeError(f"{flag} '{target}': {hint}")
    return scope or None, key


def _parse_sets(sets) -> list[tuple[str | None, str, str]]:
    if not isinstance(sets, dict) and any("=" not in item for item in sets):
        bad = next(item for item in sets if "=" not in item)
        raise DistillscopeError(f"--set '{bad}': expected [CONFIG:]KEY=VALUE, e.g. --set optim.lr=0.1")
    items = sets.items() if isinstance(sets, dict) else [item.partition("=")[::2] for item in sets]
    parsed = []
    for target, value in items:
        parsed.append((*_split_target(target, "--set", "optim.lr=0.1"), _as_text(value)))
    return parsed


def _parse_grid(grid) -> list[tuple[str | None, str, list[str]]]:
    if isinstance(grid, dict):
        items = [(target, [_as_text(v) for v in values]) for target, values in grid.items()]
    else:
        bad = [item for item in grid if "=" not in item]
        if bad:
            raise DistillscopeError(f"--grid '{bad[0]}': expected [CONFIG:]KEY=V1,V2,…, e.g. --grid method.T=2,4,8")
        items = [(item.partition("=")[0], split_values(item.partition("=")[2])) for item in grid]
    parsed = []
    for target, values in items:
        scope, key = _split_target(target, "--grid", "method.T=2,4,8")
        if not values or "" in values or len(set(values)) != len(values):
            raise DistillscopeError(f"--grid '{target}': give distinct, non-empty values, e.g. --grid {key}=2,4,8")
        parsed.append((scope, key, values))
    return parsed


def _short_names(keys: list[str]) -> dict[str, str]:
    """Grid keys as they appear in folder names: the last part (``T`` for ``method.T``) unless ambiguous."""
    last = Counter(key.rsplit(".", 1)[-1] for key in keys)
    return {key: key.rsplit(".", 1)[-1] if last[key.rsplit(".", 1)[-1]] == 1 else key for key in keys}


def _folder_safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", value).strip("_") or "_"


def _fill(key: str, value: str, names: dict[str, str]) -> str:
    def replace(match):
        if match[1] not in names:
            known = ", ".join("{" + n + "}" for n in names)
            raise DistillscopeError(f"'{key}={value}': unknown template {{{match[1]}}}; known here: {known}")
        return names[match[1]]

    return TEMPLATE.sub(replace, value)


def plan_sweep(configs: list[str | Path], seeds="0", grid=(), sets=(), out: str | Path = "runs/sweep") -> list[SweepRun]:
    """Every run of the sweep, checked: configs validate, checkpoints exist or are runs of the sweep,
    existing run folders hold the same config. ``grid``/``sets``: ``["[CONFIG:]KEY=V1,V2", …]`` or dicts."""
    out = Path(out)
    if (out / "config.yaml").is_file():
        raise DistillscopeError(f"--out '{out}' is a run folder; give a folder for the sweep's run folders, e.g. runs/my-sweep")
    paths: dict[str, Path] = {}
    for config in map(Path, configs):
        if not config.is_file():
            raise DistillscopeError(f"config file '{config}' does not exist")
        if config.stem in paths:
            raise DistillscopeError(
                f"configs '{paths[config.stem]}' and '{config}' are both named '{config.stem}'; "
                "run folders are named after the file, so rename one"
            )
        paths[config.stem] = config
    if not paths:
        raise DistillscopeError("sweep: give at least one config file")
    seeds, set_items, grid_items = parse_seeds(seeds), _parse_sets(sets), _parse_grid(grid)
    for scope, key, _ in set_items + grid_items:
        if scope is not None and scope not in paths:
            raise DistillscopeError(f"'{scope}:{key}' names no config of this sweep; configs: {', '.join(paths)}")

    runs = []
    for stem, path in paths.items():
        axes = [(key, values) for scope, key, values in grid_items if scope in (None, stem)]
        keys = [key for key, _ in axes]
        if len(set(keys)) != len(keys):
            raise DistillscopeError(f"config '{stem}': a --grid key is given twice ({', '.join(keys)})")
        short = _short_names(keys)
        assigned_by_set = [(key, value) for scope, key, value in set_items if scope in (None, stem)]
        for point in itertools.product(*(values for _, values in axes)):
            grid_point = dict(zip(keys, point))
            label = "".join(f"-{short[k]}={_folder_safe(v)}" for k, v in grid_point.items())
            assigned = assigned_by_set + list(grid_point.items())
            for seed in seeds:
                names = {"seed": str(seed), **grid_point, **{short[k]: v for k, v in grid_point.items()}}
                runs.append(SweepRun(
                    name=f"{stem}{label}-s{seed}", config=path, seed=seed, grid=grid_point,
                    sets=[f"{k}={v}" for k, v in assigned_by_set], templates={k: v for k, v in assigned if TEMPLATE.search(v)},
                    overrides=[f"{k}={_fill(k, v, names)}" for k, v in assigned] + [f"seed={seed}"], folder=out / f"{stem}{label}-s{seed}",
                ))
    clashes = [name for name, n in Counter(r.name for r in runs).items() if n > 1]
    if clashes:
        raise DistillscopeError(f"two grid points give the same run folder '{clashes[0]}'; use grid values differing in letters or digits")
    _check_runs(runs)
    return runs


def _comparable_config(config: dict) -> dict:
    flat = flatten(config)
    return {k: v for k, v in flat.items() if k not in {f"run.{key}" for key in RUN_ONLY_KEYS}}


def _check_runs(runs: list[SweepRun]) -> None:
    by_folder = {run.folder.resolve(): run for run in runs}
    for run in runs:
        try:
            config = load_config(run.config, run.overrides)
        except DistillscopeError as err:
            raise DistillscopeError(f"run {run.name}: {err}") from None
        if config.teacher and config.teacher.checkpoint and not METHODS.get(config.method["name"]).needs_teacher:
            raise DistillscopeError(
                f"run {run.name}: method '{config.method['name']}' uses no teacher, yet teacher.checkpoint is set; "
                "give it to the distilling configs only: --set STEM:teacher.checkpoint=… (STEM: the recipe's file name without .yaml)"
            )
        for role in ("teacher", "student"):
            model = getattr(config, role)
            if model is None or not model.checkpoint:
                continue
            path = Path(model.checkpoint)
            target = by_folder.get((path.parent if path.suffix == ".safetensors" else path).resolve())
            if target is run:
                raise DistillscopeError(f"run {run.name}: {role}.checkpoint '{path}' is the run's own folder")
            if target is not None:
                run.depends_on.append(target.name)
            elif not path.exists():
                raise DistillscopeError(f"run {run.name}: {role}.checkpoint '{path}' does not exist and is not a run of this sweep")
        _check_existing_folder(run, config)
    _check_no_cycle(runs)


def _check_existing_folder(run: SweepRun, config: Config) -> None:
    """A folder that already holds a run must hold this very run (else resuming would mix two setups)."""
    saved = run.folder / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = from_dict(Config, yaml.safe_load(saved.read_text()) or {}).to_dict()
    except (DistillscopeError, yaml.YAMLError) as err:
        raise DistillscopeError(f"run folder '{run.folder}': its config.yaml cannot be read ({err}); move that folder away") from None
    differ = differing_keys([_comparable_config(old), _comparable_config(config.to_dict())])
    if differ:
        raise DistillscopeError(
            f"run folder '{run.folder}' holds a run with a different config ({', '.join(differ)}); "
            "use another --out, or move that folder away"
        )


def _check_no_cycle(runs: list[SweepRun]) -> None:
    waiting = {run.name: set(run.depends_on) for run in runs}
    ready: set[str] = set()
    while waiting:
        now = {name for name, deps in waiting.items() if deps <= ready}
        if not now:
            raise DistillscopeError(f"runs wait for each other in a cycle: {', '.join(waiting)}")
        ready |= now
        waiting = {name: deps for name, deps in waiting.items() if name not in now}
