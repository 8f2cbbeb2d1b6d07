"""One self-contained HTML page (``report.html``) and ``report.json`` with every number, for a distillation.

Inputs are run folders: a student, its teacher, optionally a base (the student's architecture trained
without distillation) and groups of runs (``{"KD": [seed0, seed1], "CE": [...]}``) for statistics over
seeds. Each section is one small function ``section_x(ctx) -> Section`` that computes its numbers and its
HTML; a section whose inputs or analysis module are missing raises :class:`SectionSkipped` and the page
says why instead of showing it. Figures are PNGs embedded as base64; the page loads nothing from outside.
Every comparison to "the teacher" uses the one teacher run of the report (``--teacher``). Models are
evaluated in float32 and eval mode on the chosen split without augmentation.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DistillscopeError
from . import figures

SPLITS = ("test", "val", "train")


@dataclass
class ReportSettings:
    """What the report is about and how much it computes. ``explain``, ``interaction`` and ``infoplane`` are keyword
    options of ``ExplainSettings``, ``interaction_from_runs`` and ``information_plane`` (``probe``: ``ProbeSettings``);
    ``interaction``'s ``layer`` defaults to ``stage:-1`` (the last stage map, flattened C·H·W)."""

    out: str
    student: str | None = None
    teacher: str | None = None
    base: str | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)
    data: str | None = None
    split: str = "test"
    limit: int | None = None
    only: list[str] | None = None
    skip: list[str] = field(default_factory=list)
    bins: int = 15
    cka_images: int = 500
    tsne_points: int = 500
    tsne_classes: int = 10
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    progress: bool = True
    explain: dict = field(default_factory=dict)
    interaction: dict = field(default_factory=dict)
    infoplane: dict = field(default_factory=dict)


@dataclass
class Section:
    html: str
    numbers: dict
    basis: str


class SectionSkipped(Exception):
    """A section cannot be computed here (missing input or analysis); the message says why."""


# --------------------------------------------------------------------------- context: runs, data, logits


class ReportContext:
    """Resolved runs and lazily computed, cached inputs shared by the sections."""

    def __init__(self, settings: ReportSettings):
        from ..engine.trainer import pick_device

        if settings.split not in SPLITS:
            raise DistillscopeError(f"split '{settings.split}' is not one of {', '.join(SPLITS)}")
        for name, value, least in (("bins", settings.bins, 1), ("cka-images", settings.cka_images, 2), ("tsne-points", settings.tsne_points, 5),
                                   ("tsne-classes", settings.tsne_classes, 1), ("limit", 1 if settings.limit is None else settings.limit, 1)):
            if value < least:
                raise DistillscopeError(f"--{name} {value}: must be at least {least}")
        self.settings = settings
        self.device = pick_device(settings.device)
        self.groups = {name: [_run_folder(r) for r in runs] for name, runs in settings.groups.items()}
        all_runs = [r for runs in self.groups.values() for r in runs]
        if settings.student is None and not all_runs:
            raise DistillscopeError("give --student RUN or at least one --group NAME=RUN,...")
        self.student = _run_folder(settings.student) if settings.student else all_runs[0]
        self.teacher = _run_folder(settings.teacher) if settings.teacher else self._recorded_teacher()
        self.base = _run_folder(settings.base) if settings.base else (self.groups["base"][0] if "base" in self.groups else None)
        for role, run in (("student", self.student), ("base", self.base), ("teacher", self.teacher)):
            if run is not None and self.group_of(run) is None:
                self.groups[role] = [run]
        self.summaries = {run: _summary(run) for run in self.runs}
        self._models: dict[Path, tuple] = {}
        self._logits: dict[Path, torch.Tensor] = {}

    @property
    def runs(self) -> list[Path]:
        return [r for runs in self.groups.values() for r in runs]

    def group_of(self, run: Path) -> str | None:
        return next((name for name, runs in self.groups.items() if run in runs), None)

    @property
    def base_group(self) -> str | None:
        return self.group_of(self.base) if self.base is not None else None

    def _recorded_teacher(self) -> Path:
        checkpoint = (_summary(self.student).get("config", {}).get("teacher") or {}).get("checkpoint")
        if not checkpoint:
            raise DistillscopeError(f"'{self.student}' records no teacher checkpoint; give --teacher RUN")
        for candidate in (Path(checkpoint), self.student.parent / Path(checkpoint).name):
            if candidate.is_dir() and (candidate / "summary.json").is_file():
                return candidate.resolve()
        raise DistillscopeError(f"the student's teacher '{checkpoint}' is not a finished run folder here; give --teacher RUN")

    def label(self, run: Path) -> str:
        group = self.group_of(run)
        same_seed = [r for r in self.groups[group] if self.summaries[r].get("seed") == self.summaries[run].get("seed")]
        label = f"{group} s{self.summaries[run].get('seed')}"
        return label if len(same_seed) == 1 else f"{label} ({run.name})"

    def named(self, role: str, run: Path) -> str:
        """``role (label)``, or the label alone when it already starts with the role."""
        label = self.label(run)
        return label if label.startswith(role) else f"{role} ({label})"

    def compared(self, group: str) -> list[Path]:
        """The group's runs other than the reference teacher (a teacher group may hold it): those compared with it."""
        return [r for r in self.groups[group] if r != self.teacher]

    @property
    def compared_runs(self) -> list[Path]:
        return [r for group in self.groups for r in self.compared(group)]

    def seeds(self, group: str, compared: bool = False) -> str:
        """The group's seeds; with ``compared``, only those of the runs compared with the reference teacher."""
        return ",".join(str(self.summaries[r].get("seed")) for r in (self.compared(group) if compared else self.groups[group]))

    @cached_property
    def data(self):
        from ..data import load_data

        spec = self.settings.data or self.summaries[self.student]["config"]["data"]["spec"]
        data_cfg = self.summaries[self.student]["config"]["data"]
        if self.settings.split == "val":
            if not data_cfg.get("val_fraction"):
                raise DistillscopeError(f"'{self.student}' was trained without a validation split; use --split test")
            return load_data(spec, data_cfg["val_fraction"], data_cfg.get("split_seed", 0))
        return load_data(spec)

    @cached_property
    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and targets of the first ``limit`` rows of the split."""
        dataset = getattr(self.data, self.settings.split)
        n = len(dataset) if self.settings.limit is None else min(self.settings.limit, len(dataset))
        if hasattr(dataset, "images"):
            return dataset.images[:n], dataset.targets[:n]
        items = [dataset[i] for i in range(n)]
        return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])

    @property
    def targets(self) -> torch.Tensor:
        return self.images[1]

    def basis(self, count: int | None = None, runs: str = "every run") -> str:
        n = len(self.targets) if count is None else count
        return f"{self.settings.split} split of <code>{html.escape(self.data.spec)}</code>, N = {n:,} images; {runs}"

    def model(self, run: Path):
        """``(model, state)`` of a run's best (else last) checkpoint, cached."""
        from ..engine import load_model

        if run not in self._models:
            model, state = load_model(run, self.device)
            if state["num_classes"] != self.data.num_classes:
                raise DistillscopeError(f"'{run}' has {state['num_classes']} classes but '{self.data.spec}' has {self.data.num_classes}")
            self._models[run] = (model.eval(), state)
        return self._models[run]

    def normalised(self, run: Path, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The split's images (or ``rows`` of them) normalised as ``run`` was trained, on the device."""
        from ..data import normalize

        _, state = self.model(run)
        images = self.images[0] if rows is None else self.images[0][rows]
        return normalize(images.to(self.device), tuple(state["mean"]), tuple(state["std"]))

    @torch.no_grad()
    def logits(self, run: Path) -> torch.Tensor:
        """float32 CPU logits of ``run`` on every image of the split, cached."""
        if run not in self._logits:
            model, _ = self.model(run)
            parts = []
            for rows in torch.arange(len(self.targets)).split(self.settings.batch_size):
                parts.append(model(self.normalised(run, rows)).float().cpu())
            self._logits[run] = torch.cat(parts)
        return self._logits[run]

    def all_logits(self, runs: list[Path]) -> dict[Path, torch.Tensor]:
        from tqdm.auto import tqdm

        return {run: self.logits(run) for run in tqdm(runs, desc="logits", disable=not self.settings.progress, leave=False)}


def _run_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not (folder / "summary.json").is_file():
        raise DistillscopeError(f"'{folder}' is not a finished run folder (no summary.json)")
    return folder.resolve()


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# --------------------------------------------------------------------------- HTML helpers


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(header: list[str], rows: list[list], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def _ms(values: list[float], digits: int = 2) -> str:
    """mean ± sample std (one value alone)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# --------------------------------------------------------------------------- sections


def section_curves(ctx: ReportContext) -> Section:
    histories, last = {}, {}
    for group, runs in ctx.groups.items():
        histories[group] = []
        for run in runs:
            rows = _metrics(run)
            histories[group].append((ctx.label(run), rows))
            last[ctx.label(run)] = rows[-1] if rows else {}
    figure = _img(figures.training_curves(histories), "training curves")
    return Section(figure, {"last_epoch": last}, "metrics.csv of every run (as logged during training)")


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def section_accuracy(ctx: ReportContext) -> Section:
    from .tables import read_summaries, table_rows

    header = ["group", "model", "method", "seeds", "test top-1 @ best val (%)", "test top-1 @ last (%)", "val top-1 @ best (%)", "epochs", "precision", "notes"]
    rows, numbers = [], {}
    for group, runs in ctx.groups.items():
        for row in table_rows(read_summaries(runs)):
            rows.append([group, row["model"], row["method"], ", ".join(map(str, row["seeds"])), _ms(row["test@best"]), _ms(row["test@last"]),
                         _ms(row["val@best"]), ", ".join(map(str, row["epochs"])), row["precision"], row["notes"]])
            numbers.setdefault(group, []).append({k: v for k, v in row.items() if k not in ("machines",)})
    return Section(_table(header, rows), numbers, "summary.json of every run (accuracy as recorded at training time; mean ± std over seeds)")


def section_calibration(ctx: ReportContext) -> Section:
    from ..analysis.calibration import calibration_stats, reliability

    bins = ctx.settings.bins
    logits = ctx.all_logits(ctx.runs)
    per_run = {ctx.label(r): calibration_stats(logits[r], ctx.targets, bins) for r in ctx.runs}
    rows, groups, tables = [], {}, {}
    for group, runs in ctx.groups.items():
        stats = [per_run[ctx.label(r)] for r in runs]
        summary = {key: [s[key] for s in stats] for key in ("top1", "ece", "nll", "mean_confidence")}
        groups[group] = summary
        rows.append([group, ctx.seeds(group), _ms(summary["top1"]), _ms(summary["ece"], 4), _ms(summary["nll"], 4), _ms(summary["mean_confidence"], 4)])
        pooled = torch.cat([logits[r] for r in runs])
        table = reliability(pooled, ctx.targets.repeat(len(runs)), bins)
        tables[group] = {**table, "ece": statistics.fmean(summary["ece"])}
    body = _table(["group", "seeds", "top-1 (%)", f"ECE ({bins} bins)", "NLL (nats)", "mean confidence"], rows)
    body += _img(figures.reliability_diagram(tables), "reliability diagrams")
    body += _note(f"ECE: Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over {bins} equal-width confidence bins (Guo et al., 2017); "
                  "diagrams pool the images of all seeds of a group; panel titles give the mean ECE over seeds.")
    return Section(body, {"per_run": per_run, "per_group": groups, "bins": bins}, ctx.basis(runs="every run, float32, eval mode"))


def section_agreement(ctx: ReportContext) -> Section:
    from ..analysis.similarity import agreement, kl_to_teacher

    teacher = ctx.logits(ctx.teacher)
    logits = ctx.all_logits(ctx.compared_runs)
    per_run = {ctx.label(r): {"agreement": 100 * agreement(teacher, z), "kl": kl_to_teacher(teacher, z)} for r, z in logits.items()}
    rows, groups = [], {}
    for group in ctx.groups:
        stats = [per_run[ctx.label(r)] for r in ctx.compared(group)]
        if not stats:
            continue
        groups[group] = {key: [s[key] for s in stats] for key in ("agreement", "kl")}
        rows.append([group, ctx.seeds(group, compared=True), _ms(groups[group]["agreement"]), _ms(groups[group]["kl"], 4)])
    body = _table(["group", "seeds", "top-1 agreement with the teacher (%)", "KL(teacher ‖ model), T = 1 (nats)"], rows)
    return Section(body, {"per_run": per_run, "per_group": groups, "teacher": str(ctx.teacher)},
                   ctx.basis(runs=f"reference teacher: {html.escape(ctx.label(ctx.teacher))}"))


def section_per_class(ctx: ReportContext) -> Section:
    from ..analysis.calibration import per_class_accuracy

    if ctx.base_group is None:
        raise SectionSkipped("no base run (--base RUN or a group named 'base'): per-class gains need one")
    classes, k = ctx.data.classes, ctx.data.num_classes

    def group_accuracy(group: str) -> np.ndarray:
        return np.mean([per_class_accuracy(ctx.logits(r), ctx.targets, k) for r in ctx.groups[group]], axis=0)

    base = group_accuracy(ctx.base_group)
    gains = {group: group_accuracy(group) - base for group in ctx.groups if group != ctx.base_group}
    body = _img(figures.class_bars(gains, classes, f"top-1 gain over {ctx.base_group} (points)"), "per-class gains")
    rows = [[group, f"{np.nanmean(g):+.2f}", f"{classes[int(np.nanargmax(g))]} ({np.nanmax(g):+.2f})", f"{classes[int(np.nanargmin(g))]} ({np.nanmin(g):+.2f})",
             int(np.sum(g > 0)), int(np.sum(g < 0))] for group, g in gains.items()]
    body += _table(["group", "mean gain (points)", "largest gain", "largest loss", "classes up", "classes down"], rows)
    return Section(body, {"base_group": ctx.base_group, "base_per_class": base, "gains": gains, "classes": classes},
                   ctx.basis(runs=f"per-class top-1 averaged over seeds, minus the {html.escape(ctx.base_group)} group's"))


def section_confusion(ctx: ReportContext) -> Section:
    from ..analysis.confusion import class_mean_softmax, compare_confusion, confusion_figures, hard_confusion

    k = ctx.data.num_classes
    teacher_m = class_mean_softmax(ctx.logits(ctx.teacher), ctx.targets, k)
    per_run, notes = {}, []
    for run, z in ctx.all_logits(ctx.compared_runs).items():
        try:
            per_run[ctx.label(run)] = compare_confusion(teacher_m, hard_confusion(z, ctx.targets, k))
        except DistillscopeError as err:
            notes.append(f"{ctx.label(run)}: {err}")
    if not per_run:
        raise SectionSkipped("; ".join(notes) or "no model besides the teacher")
    rows = []
    for group in ctx.groups:
        stats = [per_run[ctx.label(r)] for r in ctx.compared(group) if ctx.label(r) in per_run]
        if stats:
            rows.append([group, ctx.seeds(group, compared=True)] + [_ms([s[key] for s in stats], 3) for key in ("cosine", "pearson", "jaccard")])
    body = _table(["group", "seeds", "per-class cosine", "Pearson", "soft Jaccard"], rows)
    if ctx.label(ctx.student) in per_run:
        with tempfile.TemporaryDirectory() as tmp:
            heatmap = confusion_figures(teacher_m, hard_confusion(ctx.logits(ctx.student), ctx.targets, k), per_run[ctx.label(ctx.student)], Path(tmp), ctx.data.classes)[0]
            body += _img(heatmap.read_bytes(), "teacher class-mean softmax vs student confusion")
    body += _note("Teacher's class-mean softmax M vs each model's confusion Q, diagonal excluded and rows renormalised (analysis/confusion.py). "
                  + " ".join(notes))
    numbers = {label: {k2: v for k2, v in s.items() if not k2.startswith("spectrum")} for label, s in per_run.items()}
    return Section(body, {"per_run": numbers}, ctx.basis(runs=f"reference teacher: {html.escape(ctx.label(ctx.teacher))}"))


def _feature_models(ctx: ReportContext) -> dict[str, Path]:
    models = {"teacher": ctx.teacher, "student": ctx.student}
    if ctx.base is not None:
        models["base"] = ctx.base
    return models


def section_cka(ctx: ReportContext) -> Section:
    from ..analysis.similarity import cka_matrix, layer_grams, stage_taps

    n = min(ctx.settings.cka_images, len(ctx.targets))
    rows = torch.arange(n)
    grams, layers = {}, {}
    for role, run in _feature_models(ctx).items():
        model, _ = ctx.model(run)
        taps = stage_taps(model)
        layers[role] = list(taps)
        grams[role] = layer_grams(model, taps, ctx.normalised(run, rows), ctx.settings.batch_size, ctx.settings.progress, desc=f"CKA {role}")
    others = [role for role in grams if role != "teacher"]
    matrices = {role: cka_matrix(grams[role], grams["teacher"]) for role in others}
    figure = figures.heatmaps([matrices[r] for r in others], [f"{r} (rows) vs teacher (columns)" for r in others],
                              [layers[r] for r in others], [layers["teacher"]] * len(others), xlabel="teacher layer", ylabel="model layer",
                              vmin=0, vmax=1, cmap="magma", annotate=True)
    body = _img(figure, "linear CKA heatmaps")
    body += _note("Linear CKA (Kornblith et al., 2019) between every stage output and the penultimate feature (embedding) of each model "
                  "and the teacher's; 1 = the same representation up to rotation and isotropic scale.")
    numbers = {"layers": layers, "cka_vs_teacher": matrices, "images": n}
    return Section(body, numbers, ctx.basis(n, runs=", ".join(html.escape(ctx.named(r, p)) for r, p in _feature_models(ctx).items())))


def section_tsne(ctx: ReportContext) -> Section:
    from tqdm.auto import tqdm

    from ..analysis.similarity import collect_features, subsample, tsne_2d

    s = ctx.settings
    rows = subsample(ctx.targets, s.tsne_points, s.seed, s.tsne_classes)
    points = {}
    for role, run in tqdm(_feature_models(ctx).items(), desc="t-SNE", disable=not s.progress, leave=False):
        model, _ = ctx.model(run)
        features = collect_features(model, {"embedding": "embedding"}, ctx.normalised(run, rows), s.batch_size)["embedding"]
        points[ctx.named(role, run)] = tsne_2d(features, seed=s.seed)
    labels = ctx.targets[rows].numpy()
    body = _img(figures.tsne_panels(points, labels, ctx.data.classes), "t-SNE of penultimate features")
    classes = len(set(labels.tolist()))
    body += _note(f"t-SNE (scikit-learn, PCA init, seed {s.seed}) of the penultimate features of {len(rows)} images drawn with seed {s.seed} "
                  f"from {classes} classes.")
    return Section(body, {"rows": rows, "seed": s.seed, "points": points}, ctx.basis(len(rows), runs="teacher, student" + (", base" if ctx.base else "")))


def section_weights(ctx: ReportContext) -> Section:
    from ..analysis.similarity import classifier_weights, correlation_difference, weight_correlation

    def correlation(run: Path) -> np.ndarray:
        from ..engine import load_model

        model = ctx._models[run][0] if run in ctx._models else load_model(run, "cpu")[0]
        return weight_correlation(classifier_weights(model))

    teacher = correlation(ctx.teacher)
    l1 = {ctx.label(r): correlation_difference(teacher, correlation(r))[1] for r in ctx.compared_runs}
    shown = {role: run for role, run in _feature_models(ctx).items() if role != "teacher"}
    matrices = [teacher] + [correlation(run) for run in shown.values()]
    diffs = [correlation_difference(teacher, m)[0] for m in matrices[1:]]
    classes = ctx.data.classes
    body = _img(figures.heatmaps(matrices, ["teacher"] + list(shown), [classes] * len(matrices), [classes] * len(matrices), vmin=-1, vmax=1, cmap="coolwarm",
                                 mask_diagonal=True), "classifier weight correlation")
    largest = max(float(np.max(d)) for d in diffs)
    body += _img(figures.heatmaps(diffs, [f"|C_teacher − C_{role}|  (mean {l1[ctx.label(run)]:.3f})" for role, run in shown.items()],
                                  [classes] * len(diffs), [classes] * len(diffs), vmin=0, vmax=largest, cmap="viridis", mask_diagonal=True), "difference heatmaps")
    rows = [[group, ctx.seeds(group, compared=True), _ms([l1[ctx.label(r)] for r in ctx.compared(group)], 4)]
            for group in ctx.groups if ctx.compared(group)]
    body += _table(["group", "seeds", "L1 error: mean |C_t − C_s| off the diagonal"], rows)
    body += _note("C = Ŵ Ŵᵀ with each class row of the final linear layer L2-normalised: the cosine between class weight vectors "
                  "(paper 003, SFKD, Fig. 5, \"computed using normalized weights\").")
    return Section(body, {"l1_per_run": l1, "teacher_correlation": teacher}, "final linear layer weights of every run (no data)")


def section_cam(ctx: ReportContext) -> Section:
    try:
        from ..explain import ExplainSettings, run_explain
    except ImportError:
        raise SectionSkipped("Grad-CAM / UniCAM (distillscope explain) is not part of this build") from None
    out = Path(ctx.settings.out)  # explain's own files (grids, scores.csv, summary.md) sit beside report.html
    settings = ExplainSettings(student=str(ctx.student), teacher=str(ctx.teacher), base=str(ctx.base) if ctx.base else None, data=ctx.data.spec,
                               out=str(out), device=str(ctx.device), progress=ctx.settings.progress, **{"limit": ctx.settings.limit, **ctx.settings.explain})
    result = run_explain(settings)
    body = "".join(_img(path.read_bytes(), path.stem) for path in sorted(out.glob("grid*.png")))
    table: dict = {}
    for row in result["scores"]:
        table.setdefault((row["reference"], row["layer"], row["condition"]), {})[row["statistic"]] = row["pooled"]
    stat_names = list(dict.fromkeys(row["statistic"] for row in result["scores"]))
    body += _table(["reference", "layer", "condition", *stat_names], [[*key, *(v.get(k, float("nan")) for k in stat_names)] for key, v in table.items()],
                   "FSS and RS pooled over batches (per-batch mean ± std in scores.csv)")
    if result["localisation"]:
        body += _table(list(result["localisation"][0]), [list(r.values()) for r in result["localisation"]], "localisation on the object masks")
    notes = result["settings"].get("notes", [])
    body += _note(" ".join(notes) + f" UniCAM batches of {settings.batch_size} drawn with seed {settings.seed}; files in {out}.")
    return Section(body, {"scores": result["scores"], "localisation": result["localisation"], "settings": result["settings"]},
                   f"test split of <code>{html.escape(ctx.data.spec)}</code>, N = {result['settings']['images']:,} images; student, teacher"
                   + (", base" if ctx.base else ""))


def _embedded_figures(write: Callable[[Path], list[Path]]) -> str:
    """Run ``write(folder)`` into a temporary folder and embed the PNGs it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        return '<div class="figs">' + "".join(_img(path.read_bytes(), path.stem) for path in write(Path(tmp) / "figures")) + "</div>"


def section_interaction(ctx: ReportContext) -> Section:
    try:
        from ..analysis.interaction import DEFAULT_LAYER, MIN_GROUP, interaction_from_runs
    except ImportError:
        raise SectionSkipped("the Interaction Tensor (analysis/interaction.py) is not part of this build") from None
    if ctx.settings.split == "val":
        raise SectionSkipped("the Interaction Tensor is computed on the train or test split; use --split test")
    options = {"layer": DEFAULT_LAYER, **ctx.settings.interaction}
    result = interaction_from_runs({g: [str(r) for r in runs] for g, runs in ctx.groups.items()}, ctx.data.spec, n=ctx.settings.limit,
                                   split=ctx.settings.split, device=str(ctx.device), progress=ctx.settings.progress, **options)
    stats = result.stats
    body = _note(f"The Interaction Tensor compares groups of models (paper 000: 20 models per group): a group's features are the union "
                 f"over its models, so its numbers are statistics of the group; groups of fewer than {MIN_GROUP} models are flagged ⚠.")
    body += "".join('<p class="warning" style="color:#7a4100;background:#fff4e0;border-left:3px solid #e0a030;padding:4px 8px">'
                    f"⚠ {html.escape(w['message'])}</p>" for w in stats["warnings"])
    rows = [[("⚠ " if len(e["models"]) < MIN_GROUP else "") + g, ctx.seeds(g), e["features"], f"{e['mean_frequency']:.1f}",
             f"{e['features_per_point_mean']:.1f}", e["features_never_present"],
             f"{e.get('top1', float('nan')):.2f}", _cell((e.get("confidence_vs_features") or {}).get("pearson") or float("nan"))]
            for g, e in stats["groups"].items()]
    body += _table(["group", "seeds", "features", "mean frequency (points)", "features per point", "never present", "top-1 (%)",
                    "r(features, confidence)"], rows)
    dims = sorted(set(result.layer_dims or []))
    span = f"{dims[0]:,}" + (f"–{dims[-1]:,}" if len(dims) > 1 else "") if dims else ""
    width = f" ({span} dims per image, maps flattened C·H·W)" if dims else ""
    pairs = ", ".join(f"{k}: {v}" for k, v in stats["shared"]["pairwise"].items())
    body += _note(f"{stats['features']} features from {stats['models']} models × {stats['components']} PCA components of the "
                  f"{options['layer']} feature{width} on {stats['points']:,} points; γ = {stats['gamma']:.4f}. Shared by all groups: "
                  f"{stats['shared']['all_groups']}" + (f"; pairwise: {pairs}." if pairs else ".")
                  + " Paper 000 (CIFAR-100, the last convolutional stage, 20 models per group; baseline / KD student / teacher): "
                  "531 / 281 / 264 features, mean frequency 1329 / 2121 / 2243, ≈ 71 / 60 / 59 features per point.")
    body += _embedded_figures(result.figures)
    numbers = {k: v for k, v in result.to_dict().items() if k not in ("assignment", "best_correlation")}
    return Section(body, numbers, ctx.basis(stats["points"], runs="every run, grouped: " + "; ".join(f"{g} seeds {ctx.seeds(g)}" for g in ctx.groups)))


def section_infoplane(ctx: ReportContext) -> Section:
    try:
        from ..analysis.infoplane import ProbeSettings, information_plane
    except ImportError:
        raise SectionSkipped("the information plane (analysis/infoplane.py) is not part of this build") from None
    runs = {role: run for role, run in _feature_models(ctx).items() if any(run.glob("epoch_*.safetensors"))}
    if not runs:
        raise SectionSkipped("no run kept per-epoch checkpoints; train with --set run.keep_every=K for the information plane")
    options = {"n_fit": 2000, "n_eval": 1000, "layers": ["embedding"], **ctx.settings.infoplane}
    probe = ProbeSettings(device=str(ctx.device), seed=ctx.settings.seed, **options.pop("probe", {}))
    result = information_plane([str(r) for r in runs.values()], ctx.data.spec, settings=probe, progress=ctx.settings.progress, **options)
    rows = [[Path(p["run"]).name, p["layer"], p["epoch"], p["ixf"], p["iyf"]] for p in result.points]
    body = _embedded_figures(result.figures)
    body += _table(["run", "layer", "epoch", "I(X;F) estimate (nats / image)", "I(Y;F) estimate (nats)"], rows)
    body += _note("I(X;F): reconstruction gain of a decoder trained on F; I(Y;F): label entropy minus an auxiliary classifier's held-out "
                  "cross-entropy (analysis/infoplane.py; both biased low by the heads' capacity). Runs: "
                  + ", ".join(ctx.named(role, run) for role, run in runs.items()) + ".")
    return Section(body, result.to_dict(), f"heads fit on {result.settings['fit']}, scored on {result.settings['held_out']} of "
                   f"<code>{html.escape(ctx.data.spec)}</code>; every kept epoch of " + ", ".join(runs))


SECTIONS: dict[str, tuple[str, Callable[[ReportContext], Section]]] = {
    "curves": ("Training curves", section_curves),
    "accuracy": ("Accuracy", section_accuracy),
    "calibration": ("Calibration", section_calibration),
    "agreement": ("Agreement with the teacher", section_agreement),
    "per_class": ("Per-class accuracy gains", section_per_class),
    "confusion": ("Confusion vs the teacher", section_confusion),
    "cka": ("Linear CKA per layer pair", section_cka),
    "tsne": ("t-SNE of penultimate features", section_tsne),
    "weights": ("Classifier-weight correlation", section_weights),
    "cam": ("Grad-CAM, UniCAM, FSS/RS", section_cam),
    "interaction": ("Interaction Tensor", section_interaction),
    "infoplane": ("Information plane", section_infoplane),
}


# --------------------------------------------------------------------------- the page


def chosen_sections(only: list[str] | None, skip: list[str]) -> list[str]:
    for name in [*(only or []), *skip]:
        if name not in SECTIONS:
            raise DistillscopeError(f"unknown report section '{name}'; valid: {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if (only is None or name in only) and name not in skip]


def build_report(settings: ReportSettings) -> dict:
    """Compute the chosen sections and write ``report.html`` and ``report.json`` into a new folder ``settings.out``."""
    from tqdm.auto import tqdm

    out = Path(settings.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DistillscopeError(f"--out '{out}' already exists and is not empty; choose a new folder")
    names = chosen_sections(settings.only, settings.skip)
    started = time.perf_counter()
    ctx = ReportContext(settings)
    done, skipped, seconds = {}, {}, {}
    for name in tqdm(names, desc="report", disable=not settings.progress):
        t0 = time.perf_counter()
        try:
            done[name] = SECTIONS[name][1](ctx)
        except (SectionSkipped, DistillscopeError) as reason:
            skipped[name] = str(reason)
        seconds[name] = round(time.perf_counter() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": asdict(settings), "student": str(ctx.student), "teacher": str(ctx.teacher), "base": str(ctx.base) if ctx.base else None,
        "groups": {g: [{"run": str(r), "seed": ctx.summaries[r].get("seed")} for r in runs] for g, runs in ctx.groups.items()},
        "data": ctx.data.spec if done else None, "split": settings.split, "images": len(ctx.targets) if done else None,
        "sections": {name: {"title": SECTIONS[name][0], "basis": _plain(s.basis), "numbers": s.numbers} for name, s in done.items()},
        "skipped": skipped, "seconds": {**seconds, "total": round(time.perf_counter() - started, 2)},
    }
    (out / "report.json").write_text(json.dumps(_jsonable(record), indent=1))
    (out / "report.html").write_text(_page(ctx, names, done, skipped, record))
    return {"html": out / "report.html", "json": out / "report.json", "skipped": skipped, "seconds": record["seconds"]}


def _plain(text: str) -> str:
    return text.replace("<code>", "").replace("</code>", "").replace("&amp;", "&")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d232a;background:#f4f6f8}
header{background:#1d3557;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}header p{margin:2px 0;opacity:.9}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid #dde2e7;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#1d3557;text-decoration:none;font-size:13px}nav a.off{color:#98a2ad}
main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border:1px solid #dde2e7;border-radius:8px;padding:14px 20px;margin:16px 0}
h2{margin:0 0 6px;font-size:18px;color:#1d3557}.basis{color:#56606b;font-size:12.5px;margin:0 0 10px}
img{max-width:100%;height:auto;display:block;margin:10px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #e3e7eb;padding:4px 10px;text-align:left}th{background:#eef2f6}
tbody tr:nth-child(even){background:#fafbfc}.note{color:#56606b;font-size:12.5px}
.skipped{color:#8a5a00;background:#fff8e6;border-color:#f1d9a6}
code{font-size:12.5px}#page-check{font-size:11px;color:#98a2ad}
.figs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.figs img{max-width:calc(50% - 4px);margin:4px 0}
"""

CHECK_JS = """
window.reportErrors=[];
window.addEventListener('error',function(e){window.reportErrors.push(e.message||('failed to load '+(e.target&&e.target.tagName)))},true);
window.addEventListener('load',function(){
 var imgs=Array.prototype.slice.call(document.images),bad=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)});
 document.body.setAttribute('data-images',bad.length?'broken:'+bad.length:'ok:'+imgs.length);
 document.body.setAttribute('data-errors',String(window.reportErrors.length));
 document.body.setAttribute('data-height',String(document.documentElement.scrollHeight));
 document.getElementById('page-check').textContent=imgs.length+' figures, '+bad.length+' not decoded; '+window.reportErrors.length+' script errors'+(window.reportErrors.length?': '+window.reportErrors.join(' | '):'');
});
"""


def _page(ctx: ReportContext, names: list[str], done: dict[str, Section], skipped: dict[str, str], record: dict) -> str:
    groups = "; ".join(f"{html.escape(g)}: seeds {ctx.seeds(g)}" for g in ctx.groups)
    student = ctx.summaries[ctx.student]
    nav = "".join(f'<a href="#{n}"{"" if n in done else " class=off"}>{html.escape(SECTIONS[n][0])}</a>' for n in names)
    parts = []
    for name in names:
        title = html.escape(SECTIONS[name][0])
        if name in done:
            s = done[name]
            parts.append(f'<section id="{name}"><h2>{title}</h2><p class="basis">Computed on: {s.basis}. '
                         f'{record["seconds"][name]} s.</p>{s.html}</section>')
        else:
            parts.append(f'<section id="{name}" class="skipped"><h2>{title}</h2><p>Not shown: {html.escape(skipped[name])}</p></section>')
    data = html.escape(record["data"] or "–")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>distillscope report: {html.escape(ctx.label(ctx.student))}</title><script>{CHECK_JS}</script><style>{CSS}</style></head>
<body><header><h1>What {html.escape(student.get('student', '?'))} ({html.escape(student.get('method', '?'))}) learned from its teacher</h1>
<p>student <code>{html.escape(str(ctx.student))}</code> · teacher <code>{html.escape(str(ctx.teacher))}</code>{' · base <code>' + html.escape(str(ctx.base)) + '</code>' if ctx.base else ''}</p>
<p>data <code>{data}</code>, {ctx.settings.split} split{', ' + format(record['images'], ',') + ' images' if record['images'] else ''} · groups: {groups} · {record['seconds']['total']} s</p></header>
<nav>{nav}</nav><main>{''.join(parts)}<p id="page-check"></p></main></body></html>
"""


def write_demo_report(demo_folder: str | Path, **options) -> Path:
    """The report of ``make demo``'s KD student (teacher, CE student as base; groups over the demo's seeds) in
    ``demo_folder/report``, on the first 1,000 test images (bench/report_cost.py measures the cost); returns the path of
    ``report.html``. ``options``: other :class:`ReportSettings` fields (e.g. ``limit=None`` for every image)."""
    folder = Path(demo_folder)
    seeds = sorted(folder.glob("seed*/kd_student"), key=lambda p: int(p.parent.name[4:])) or [folder / "kd_student"]
    roots = [p.parent for p in seeds]
    groups = {"KD student": [str(r / "kd_student") for r in roots], "CE student": [str(r / "ce_student") for r in roots],
              "teacher": [str(r / "teacher") for r in roots]}
    settings = ReportSettings(out=str(folder / "report"), student=groups["KD student"][0], teacher=groups["teacher"][0],
                              base=groups["CE student"][0], groups=groups, **{"limit": 1000, **options})
    return build_report(settings)["html"]
