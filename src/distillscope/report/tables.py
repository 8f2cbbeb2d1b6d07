"""Results tables over seeds: runs grouped by config name, grid point and data spec, mean ± sample std.

Each row reports test top-1 at the best-validation epoch and at the last epoch, validation top-1 at its
best epoch, the precision that ran, the seeds and the epochs. A row whose seeds differ in anything but the
seed (recorded ``config`` minus ``seed`` and run-only keys; values a sweep filled from a ``{seed}``
template compare as that template) is flagged. Among rows of one config that differ only in grid point,
the one with the best mean *validation* top-1 over the seeds they all share is marked "chosen on val"; test
accuracy never selects. With a baseline row, every other row gets its test top-1 difference to it at the last
and at the best-validation epoch (:mod:`.stats`): paired over the shared seeds where each shared seed saw the
same data split, batch order and teacher, Welch's t otherwise.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
from collections import Counter
from pathlib import Path

import yaml

from ..config import RUN_ONLY_KEYS, flatten
from ..errors import DistillscopeError
from .stats import Difference, paired, welch


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_runs(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(finished, unfinished) run folders: a folder with ``summary.json`` is a run; any other folder is a
    sweep folder whose sub-folders are its runs (unfinished: ``config.yaml`` or ``sweep.json``, no summary)."""
    finished, unfinished = [], []
    for path in map(Path, paths):
        if (path / "summary.json").is_file():
            finished.append(path)
            continue
        if not path.is_dir() or (path / "config.yaml").is_file():
            raise DistillscopeError(f"'{path}' has no summary.json; is it a finished run folder?")
        subs = sorted((p for p in path.iterdir() if p.is_dir()), key=_natural)
        done = [p for p in subs if (p / "summary.json").is_file()]
        started = [p for p in subs if p not in done and ((p / "config.yaml").is_file() or (p / "sweep.json").is_file())]
        if not done and not started:
            raise DistillscopeError(f"'{path}' has no summary.json and no run folders inside; give finished run folders or a sweep folder")
        finished += done
        unfinished += started
    return finished, unfinished


def read_summaries(run_dirs: list[str | Path]) -> list[dict]:
    """Each run's ``summary.json`` plus ``folder``, ``sweep`` and ``chain`` (its sweep.json and chain.json, or
    None) and, for summaries written before they recorded it, ``config`` from the folder's config.yaml."""
    summaries = []
    for run in map(Path, run_dirs):
        path = run / "summary.json"
        if not path.is_file():
            raise DistillscopeError(f"'{run}' has no summary.json; is it a finished run folder?")
        summary = _read_record(path, f"re-run `distillscope train --resume --out {run}` (it rewrites the summary) or remove the folder")
        missing = [key for key in SUMMARY_KEYS if key not in summary]
        if missing:
            raise DistillscopeError(f"{path} lacks {', '.join(missing)}; "
                                    f"re-run `distillscope train --resume --out {run}` or remove the folder")
        summary["folder"] = str(run)
        fixes = {"sweep": "remove it (it only records the run's grid point; re-running the sweep writes it again)",
                 "chain": "re-run the `distillscope chain` command (it writes it again) or remove it"}
        for record, fix in fixes.items():
            record_path = run / f"{record}.json"
            summary[record] = _read_record(record_path, fix) if record_path.is_file() else None
        if "config" not in summary and (run / "config.yaml").is_file():
            try:
                summary["config"] = yaml.safe_load((run / "config.yaml").read_text())
            except yaml.YAMLError as err:
                raise DistillscopeError(f"{run / 'config.yaml'} is not valid YAML ({str(err).splitlines()[0]}); "
                                        "fix or remove the folder") from None
        summaries.append(summary)
    return summaries


SUMMARY_KEYS = ("name", "student", "method", "seed", "epochs", "last")  # what a table row needs from summary.json


def _read_record(path: Path, fix: str) -> dict:
    """A run's JSON record (summary.json, sweep.json, chain.json); a damaged one is one line naming the file and ``fix``."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DistillscopeError(f"{path} is not valid JSON (truncated?): line {err.lineno} column {err.colno}; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DistillscopeError(f"{path} cannot be read ({getattr(err, 'strerror', None) or err}); {fix}") from None
    if not isinstance(record, dict):
        raise DistillscopeError(f"{path} holds a JSON {type(record).__name__}, not an object; {fix}")
    return record


def mean_std(values: list[float]) -> str:
    """``mean ± sample std``; a single value alone, ``n/a`` for none."""
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "n/a"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def differing_keys(configs: list[dict]) -> list[str]:
    """Dotted keys whose values are not the same in every one of the flat dicts ``configs``."""
    missing = object()
    keys = dict.fromkeys(k for c in configs for k in c)
    return [k for k in keys if any(c.get(k, missing) != configs[0].get(k, missing) for c in configs[1:])]


def _comparable(summary: dict) -> dict | None:
    """The run's config as it should agree across seeds, or None when it was not recorded."""
    if summary.get("config") is None:
        return None
    flat = flatten(summary["config"])
    flat.pop("seed", None)
    for key in RUN_ONLY_KEYS:
        flat.pop(f"run.{key}", None)
    for key, template in ((summary.get("sweep") or {}).get("templates") or {}).items():
        flat = {k: v for k, v in flat.items() if k != key and not k.startswith(key + ".")}
        flat[key] = template
    step = _chain_step(summary)
    if step:
        flat["teacher.checkpoint"] = f"step {step - 1} of the chain"  # each seed's own assistant
    flat["precision used"] = summary.get("precision", "?")
    return flat


def _chain_step(summary: dict) -> int:
    """The run's step in a ``distillscope chain`` (0: not distilled from an earlier step)."""
    return (summary.get("chain") or {}).get("step", 0)


def _row_name(summary: dict) -> str:
    """The config name; a chain's later steps as the chain up to them (``assistant → student``)."""
    step = _chain_step(summary)
    return " → ".join(summary["chain"]["steps"][: step + 1]) if step else summary["name"]


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _notes(runs: list[dict]) -> str:
    notes = []
    configs = [_comparable(r) for r in runs]
    if len(runs) > 1 and all(c is not None for c in configs):
        differ = differing_keys(configs)
        if differ:
            notes.append(f"⚠ seeds differ in: {', '.join(differ)}")
    repeated = [str(seed) for seed, n in Counter(r["seed"] for r in runs).items() if n > 1]
    if repeated:
        notes.append(f"⚠ seed {', '.join(repeated)} counted more than once")
    notes += [f"⚠ {tag}" for tag in _unique(w.split(":", 1)[0] for r in runs for w in r.get("warnings", []))]  # e.g. test labels leaked
    return "; ".join(notes)


def _setup(summary: dict) -> dict | None:
    """What a paired comparison needs equal for one seed: ``data.*``, epochs and teachers (None: no config)."""
    config = summary.get("config")
    if config is None:
        return None
    teachers = [config.get("teacher")] + list(config.get("teachers") or [])
    return {
        "data": {k: v for k, v in flatten(config).items() if k.startswith("data.")}, "epochs": summary["epochs"],
        "teacher.checkpoint": [os.path.normpath(t["checkpoint"]) for t in teachers if t and t.get("checkpoint")],
    }


def _data_spec(summary: dict) -> str:
    """The run's ``data.spec`` as recorded in its config, ``?`` when not recorded."""
    return str(((summary.get("config") or {}).get("data") or {}).get("spec") or "?")


def table_rows(summaries: list[dict], baseline: str | None = None) -> list[dict]:
    """One row per (config name, grid point, ``data.spec``), seeds in first-seen order; values as numbers and lists.
    ``baseline`` (a row's ``run`` name, with its grid point where needed) adds ``"vs baseline"`` to the rows:
    see :func:`compare_to_baseline`."""
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        point = tuple(((s.get("sweep") or {}).get("grid") or {}).items())
        groups.setdefault((_row_name(s), point, _data_spec(s)), []).append(s)  # one recipe on two datasets: two rows
    rows = []
    for (name, point, data), runs in groups.items():
        best = [r["best"] for r in runs if r.get("best")]
        with_val = len(best) == len(runs)
        rows.append({
            "run": name, "model": runs[0]["student"], "method": runs[0]["method"],
            "grid point": " ".join(f"{k}={v}" for k, v in point),
            "precision": ", ".join(_unique(r.get("precision", "?") for r in runs)),
            "data": data,
            "seeds": [r["seed"] for r in runs],
            "test@best": [b["test/top1"] for b in best] if with_val else [],
            "test@last": [r["last"]["test/top1"] for r in runs],
            "val@best": [b["val/top1"] for b in best] if with_val else [],
            "best epochs": [b["epoch"] for b in best],
            "epochs": _unique(r["epochs"] for r in runs),
            "ensemble": [r["ensemble_test_top1"] for r in runs if "ensemble_test_top1" in r],
            "minutes": [r["seconds"] / 60 for r in runs if r.get("seconds") is not None],
            "chosen on val": False,
            "notes": _notes(runs),
            "machines": [(r.get("machine"), r.get("threads")) for r in runs],
            "folders": [r["folder"] for r in runs if "folder" in r],
            "setups": [_setup(r) for r in runs],
        })
    _mark_chosen_on_val(rows)
    if baseline is not None:
        compare_to_baseline(rows, baseline)
    return rows


def row_label(row: dict) -> str:
    """The row's run name and, where it has one, its grid point: ``kd method.T=4``."""
    return " ".join(filter(None, [row["run"], row["grid point"]]))


def find_row(rows: list[dict], name: str) -> dict:
    """The one row ``name`` names: its full label, its run name alone, or its run name and grid values
    (``sfkd logits=0.7`` for ``method.mask.logits=0.7``); a one-line error listing the rows otherwise."""
    def names(row: dict) -> bool:
        if name == row["run"]:
            return True
        items = row["grid point"].split()
        wanted = name[len(row["run"]) + 1:].split() if name.startswith(row["run"] + " ") else []
        return bool(wanted) and all(any(g == w or g.endswith("." + w) for g in items) for w in wanted)

    def with_data(row: dict) -> str:  # one recipe on several datasets: 'kd data=folder:DIR'
        return f"{row_label(row)} data={row['data']}"

    matches = ([row for row in rows if row_label(row) == name] or [row for row in rows if with_data(row) == name]
               or [row for row in rows if names(row)])
    if len(matches) == 1:
        return matches[0]
    repeated = len({row_label(row) for row in rows}) < len(rows)
    listed = ", ".join(f"'{with_data(row) if repeated else row_label(row)}'" for row in rows)
    raise DistillscopeError(f"--baseline '{name}' matches {f'{len(matches)} rows' if matches else 'no row'}; the rows are: {listed}")


def _pairing(row: dict, base: dict) -> tuple[list, str]:
    """(the shared seeds, "") when the two rows can be paired on them, else ([], why not)."""
    shared = [seed for seed in row["seeds"] if seed in base["seeds"]]
    if len(shared) < 2:
        return [], f"{len(shared)} shared seed{'s' * (len(shared) != 1)}"
    if len(set(row["seeds"])) < len(row["seeds"]) or len(set(base["seeds"])) < len(base["seeds"]):
        return [], "a seed counted twice"
    for seed in shared:
        a, b = (r["setups"][r["seeds"].index(seed)] for r in (row, base))
        if a is None or b is None:
            return [], f"seed {seed}: config not recorded"
        differ = differing_keys([a["data"], b["data"]]) + ["epochs"] * (a["epochs"] != b["epochs"])
        if a["teacher.checkpoint"] and b["teacher.checkpoint"] and a["teacher.checkpoint"] != b["teacher.checkpoint"]:
            differ.append("teacher.checkpoint")
        if differ:
            return [], f"seed {seed}: {', '.join(differ)} differ{'s' * (len(differ) == 1)}"
    return shared, ""


def compare_to_baseline(rows: list[dict], baseline: str) -> None:
    """Set ``row["vs baseline"]`` on every row: None on the baseline row itself, else ``{"last": Difference,
    "best val": Difference, "unpaired because": str}`` for test top-1 minus the baseline's."""
    base = find_row(rows, baseline)
    for row in rows:
        row["baseline"] = row_label(base)
        if row is base:
            row["vs baseline"] = None
            continue
        shared, why = _pairing(row, base)
        row["vs baseline"] = {"unpaired because": why}
        for point, key in (("last", "test@last"), ("best val", "test@best")):
            if not row[key] or not base[key]:
                sizes = (len(shared),) * 2 if shared else (len(row["seeds"]), len(base["seeds"]))
                diff = Difference("paired" if shared else "Welch", *sizes, reason="no validation split")
            elif shared:
                diff = paired(*([r[key][r["seeds"].index(seed)] for seed in shared] for r in (row, base)))
            else:
                diff = welch(row[key], base[key])
            row["vs baseline"][point] = diff


def _mark_chosen_on_val(rows: list[dict]) -> None:
    """Among ≥ 2 grid points of one config, mark the best mean validation top-1 (ties: all of them).

    Grid points are compared on the seeds they all share, so a grid run on seed 0 and then extended to more
    seeds at the chosen point keeps its choice; with no seed in common, each point's mean over its own seeds.
    """
    by_name: dict[tuple, list[dict]] = {}
    for row in rows:
        by_name.setdefault((row["run"], row["data"]), []).append(row)
    for group in by_name.values():
        if len(group) < 2 or not all(row["val@best"] for row in group):
            continue
        shared = set.intersection(*(set(row["seeds"]) for row in group))
        scores = [statistics.fmean([v for s, v in zip(row["seeds"], row["val@best"]) if s in shared] or row["val@best"]) for row in group]
        best = max(scores)
        for row, score in zip(group, scores):
            row["chosen on val"] = score == best


def _machines_note(rows: list[dict]) -> str:
    counts = Counter(m for row in rows for m in row["machines"])
    lines = []
    for (machine, threads), n in counts.items():
        runs = f"{n} run{'s' if n > 1 else ''}"
        if machine is None:
            lines.append(f"Machine not recorded: {runs} (older summaries).")
        else:
            lines.append(f"Machine: {machine}; {runs}, {threads} thread{'s' if threads != 1 else ''} each.")
    return "\n".join(lines)


def _minutes(values: list[float], runs: int) -> str:
    """Minutes per run: the mean, the range when the runs differ, and how many runs counted when not all did."""
    if not values:
        return "n/a"
    low, high = f"{min(values):.1f}", f"{max(values):.1f}"
    notes = [f"{low}–{high}"] * (low != high) + [f"{len(values)} of {runs} runs"] * (len(values) < runs)
    return f"{statistics.fmean(values):.1f}" + (f" ({'; '.join(notes)})" if notes else "")


def format_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (a ``data`` column when rows differ in ``data.spec``), the data they share and
    the machine(s) that ran them underneath."""
    grid = any(row["grid point"] for row in rows)
    data = len({row["data"] for row in rows}) > 1  # rows on different data: a column; else the data is said once below
    chosen = any(row["chosen on val"] for row in rows)
    notes = any(row["notes"] for row in rows)
    ensemble = any(row["ensemble"] for row in rows)
    minutes = any(row["minutes"] for row in rows)
    compared = any("vs baseline" in row for row in rows)
    header = ["run", "model", "method"] + ["data"] * data + ["grid point"] * grid + [
        "precision", "seeds", "test top-1 @ best val (%)", "test top-1 @ last (%)", "val top-1 @ best (%)", "best epoch", "epochs",
    ] + ["teachers' ensemble test top-1 (%)"] * ensemble + ["minutes per run"] * minutes + ["chosen on val"] * chosen + ["notes"] * notes
    if compared:
        base = rows[0]["baseline"]
        header += [f"Δ last vs {base} (95% CI)", f"Δ best val vs {base} (95% CI)", "test", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["run"], row["model"], row["method"]] + [row["data"]] * data + [row["grid point"]] * grid + [
            row["precision"], ", ".join(map(str, row["seeds"])),
            mean_std(row["test@best"]) if row["test@best"] else "n/a (no validation split)",
            mean_std(row["test@last"]), mean_std(row["val@best"]),
            ", ".join(map(str, row["best epochs"])) or "n/a", ", ".join(map(str, row["epochs"])),
        ] + [mean_std(row["ensemble"]) if row["ensemble"] else "n/a"] * ensemble + [
            _minutes(row["minutes"], len(row["seeds"]))] * minutes + ["✓" if row["chosen on val"] else ""] * chosen + [row["notes"]] * notes
        if compared:
            cells += _comparison_cells(row["vs baseline"])
        lines.append("| " + " | ".join(cells) + " |")
    same_data = f"Data: {rows[0]['data']}.\n" if rows and not data and rows[0]["data"] != "?" else ""
    return "\n".join(lines) + "\n\n" + same_data + _machines_note(rows)


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _comparison_cells(vs: dict | None) -> list[str]:
    """Δ at the last epoch, Δ at best val, the test, the verdict."""
    if vs is None:
        return ["baseline", "baseline", "", ""]
    last, best = vs["last"], vs["best val"]
    deltas = [f"{d.diff:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}], {_p(d.p)}" if d.diff is not None else "n/a" for d in (last, best)]
    test = last.label + (f" ({vs['unpaired because']})" if vs["unpaired because"] else "")
    return deltas + [test, f"last: {last.verdict()}; best val: {best.verdict()}"]


def _comparison_numbers(d: Difference) -> list:
    """diff, ci_low, ci_high, p, df, n, n_baseline, mde, test, note (blank numbers where n/a)."""
    if d.diff is None:
        return ["", "", "", "", "", d.n, d.n_other, "", d.test, d.reason]
    numbers = [round(d.diff, 4), round(d.ci_low, 4), round(d.ci_high, 4), float(f"{d.p:.6g}"), round(d.df, 3)]
    return numbers + [d.n, d.n_other, round(d.mde, 4), d.test, ""]


def _mean_and_std(values: list[float]) -> list:
    if not values:
        return ["", ""]
    return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def format_csv(rows: list[dict]) -> str:
    """The rows as CSV: means and sample stds in separate numeric columns, lists space-separated; with a
    baseline, ``vs_baseline_{last,best_val}_*`` columns (blank on the baseline row)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    compared = any("vs baseline" in row for row in rows)
    fields = ("diff", "ci_low", "ci_high", "p", "df", "n", "n_baseline", "mde", "test", "note")
    comparison = ["baseline", "vs_baseline_unpaired_because"] + [f"vs_baseline_{point}_{f}" for point in ("last", "best_val")
                                                                 for f in fields]
    writer.writerow([
        "run", "model", "method", "data", "grid_point", "precision", "seeds", "n", "test_top1_best_val_mean", "test_top1_best_val_std",
        "test_top1_last_mean", "test_top1_last_std", "val_top1_best_mean", "val_top1_best_std", "best_epochs", "epochs",
        "ensemble_test_top1_mean", "ensemble_test_top1_std", "minutes_per_run_mean", "minutes_per_run_std", "chosen_on_val", "notes",
        "machines", "folders",
    ] + comparison * compared)
    for row in rows:
        machines = "; ".join(_unique(f"{m}, threads={t}" for m, t in row["machines"] if m is not None))
        writer.writerow([
            row["run"], row["model"], row["method"], row["data"], row["grid point"], row["precision"],
            " ".join(map(str, row["seeds"])), len(row["seeds"]),
            *_mean_and_std(row["test@best"]), *_mean_and_std(row["test@last"]), *_mean_and_std(row["val@best"]),
            " ".join(map(str, row["best epochs"])), " ".join(map(str, row["epochs"])),
            *_mean_and_std(row["ensemble"]), *_mean_and_std(row["minutes"]), int(row["chosen on val"]), row["notes"],
            machines, " ".join(row["folders"]),
        ] + (_csv_comparison(row) if compared else []))
    return buf.getvalue()


def _csv_comparison(row: dict) -> list:
    vs = row["vs baseline"]
    if vs is None:
        return [row["baseline"], ""] + [""] * 20
    return [row["baseline"], vs["unpaired because"], *_comparison_numbers(vs["last"]), *_comparison_numbers(vs["best val"])]


def results_table(summaries: list[dict], baseline: str | None = None) -> str:
    """Markdown table of ``summaries`` (see :func:`table_rows`)."""
    return format_markdown(table_rows(summaries, baseline))
