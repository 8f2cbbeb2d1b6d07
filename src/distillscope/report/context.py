"""What every report section shares: the settings, the context (runs resolved once; summaries, metrics, data,
models and logits loaded lazily, once, and handed out), the section registry and the HTML helpers.

A section is a function ``section_x(ctx) -> Section`` in its own module under ``sections/``, registered with
:func:`section`; it takes every run, model and image from the context and never loads one itself. A section
whose inputs or analysis module are missing raises :class:`SectionSkipped` and the page says why instead.
"""
from __future__ import annotations

import base64
import csv
import html
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from ..errors import DistillscopeError
from ..registry import Registry
from .tables import read_summaries

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


REGISTRY = Registry("report section")


def section(name: str, title: str, order: int):
    """Register a section function under ``name`` (``--only`` / ``--skip``), shown as ``title``, in ``order`` on the page."""
    return REGISTRY.register(name, title=title, order=order)


class ReportContext:
    """Resolved runs and lazily computed, cached inputs shared by the sections."""

    def __init__(self, settings: ReportSettings):
        from ..engine.device import pick_device

        if settings.split not in SPLITS:
            raise DistillscopeError(f"split '{settings.split}' is not one of {', '.join(SPLITS)}")
        for name, value, least in (("bins", settings.bins, 1), ("cka-images", settings.cka_images, 2),
                                   ("tsne-points", settings.tsne_points, 5), ("tsne-classes", settings.tsne_classes, 1),
                                   ("limit", 1 if settings.limit is None else settings.limit, 1)):
            if value < least:
                raise DistillscopeError(f"--{name} {value}: must be at least {least}")
        self.settings = settings
        self.device = pick_device(settings.device)
        self.groups = {name: [_run_folder(r) for r in runs] for name, runs in settings.groups.items()}
        all_runs = [r for runs in self.groups.values() for r in runs]
        if settings.student is None and not all_runs:
            raise DistillscopeError("give --student RUN or at least one --group NAME=RUN,...")
        self._summaries: dict[Path, dict] = {}
        self._metrics: dict[Path, list[dict]] = {}
        self._datasets: dict[tuple, object] = {}
        self._models: dict[Path, tuple] = {}
        self._logits: dict[Path, torch.Tensor] = {}
        self.student = _run_folder(settings.student) if settings.student else all_runs[0]
        self.teacher = _run_folder(settings.teacher) if settings.teacher else self._recorded_teacher()
        self.base = _run_folder(settings.base) if settings.base else (self.groups["base"][0] if "base" in self.groups else None)
        for role, run in (("student", self.student), ("base", self.base), ("teacher", self.teacher)):
            if run is not None and self.group_of(run) is None:
                self.groups[role] = [run]

    @property
    def runs(self) -> list[Path]:
        return [r for runs in self.groups.values() for r in runs]

    def group_of(self, run: Path) -> str | None:
        return next((name for name, runs in self.groups.items() if run in runs), None)

    @property
    def base_group(self) -> str | None:
        return self.group_of(self.base) if self.base is not None else None

    @property
    def feature_runs(self) -> dict[str, Path]:
        """The models whose features are shown: ``{"teacher": …, "student": …, "base": …}`` (base when there is one)."""
        runs = {"teacher": self.teacher, "student": self.student}
        if self.base is not None:
            runs["base"] = self.base
        return runs

    def _recorded_teacher(self) -> Path:
        checkpoint = (self.summary(self.student).get("config", {}).get("teacher") or {}).get("checkpoint")
        if not checkpoint:
            raise DistillscopeError(f"'{self.student}' records no teacher checkpoint; give --teacher RUN")
        for candidate in (Path(checkpoint), self.student.parent / Path(checkpoint).name):
            if candidate.is_dir() and (candidate / "summary.json").is_file():
                return candidate.resolve()
        raise DistillscopeError(f"the student's teacher '{checkpoint}' is not a finished run folder here; give --teacher RUN")

    def label(self, run: Path) -> str:
        group = self.group_of(run)
        seed = self.summary(run).get("seed")
        same_seed = [r for r in self.groups[group] if self.summary(r).get("seed") == seed]
        label = f"{group} s{seed}"
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
        return ",".join(str(self.summary(r).get("seed")) for r in (self.compared(group) if compared else self.groups[group]))

    def summary(self, run: Path) -> dict:
        """The run's ``summary.json`` as :func:`read_summaries` gives it, cached."""
        if run not in self._summaries:
            self._summaries[run] = read_summaries([run])[0]
        return self._summaries[run]

    def metrics(self, run: Path) -> list[dict]:
        """The rows of the run's ``metrics.csv`` as numbers (none without the file), cached."""
        if run not in self._metrics:
            path = run / "metrics.csv"
            rows = []
            if path.is_file():
                with open(path, newline="") as fh:
                    rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
            self._metrics[run] = rows
        return self._metrics[run]

    def dataset(self, val_fraction: float = 0.0, split_seed: int = 0):
        """The report's data spec loaded (a validation split carved when ``val_fraction``), cached."""
        from ..data import load_data

        key = (val_fraction, split_seed)
        if key not in self._datasets:
            spec = self.settings.data or self.summary(self.student)["config"]["data"]["spec"]
            self._datasets[key] = load_data(spec, val_fraction, split_seed)
        return self._datasets[key]

    @cached_property
    def data(self):
        """The data the report's split is taken from."""
        data_cfg = self.summary(self.student)["config"]["data"]
        if self.settings.split == "val":
            if not data_cfg.get("val_fraction"):
                raise DistillscopeError(f"'{self.student}' was trained without a validation split; use --split test")
            return self.dataset(data_cfg["val_fraction"], data_cfg.get("split_seed", 0))
        return self.dataset()

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
        """``(model, state)`` of a run's best (else last) checkpoint on the report's device, in eval mode, cached."""
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


# --------------------------------------------------------------------------- HTML helpers


def img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def figure_row(pngs: dict[str, bytes]) -> str:
    """PNGs side by side (two per row), each with its name as alt text."""
    return '<div class="figs">' + "".join(img(data, name) for name, data in pngs.items()) + "</div>"


def table(header: list[str], rows: list[list], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def mean_std(values: list[float], digits: int = 2) -> str:
    """mean ± sample std (one value alone)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'
