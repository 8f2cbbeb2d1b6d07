"""Short entry points for notebooks and scripts."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .config import Config, ModelConfig, apply_overrides, from_dict, read_recipe, validate
from .data import DataBundle, Loader, as_bundle, carve_val, list_datasets, load_data, parse_spec
from .data.user import StreamedDataset
from .engine import Trainer
from .errors import DistillscopeError
from .models import list_models

PYTHON = "python:"  # what a run records for an object that no name or spec can re-create


def train(
    config: str | Path | None = None,
    out: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    resume: bool = False,
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    data: DataBundle | tuple | str | None = None,
) -> dict:
    """Train one run from a YAML recipe and return its summary (the same dict as ``summary.json``).

    ``overrides`` is ``{"optim.lr": 0.1, "seed": 1}`` or ``["optim.lr=0.1"]``, as ``--set`` on the CLI (string
    values are read as ``--set`` reads them, so ``"1e-3"`` and ``"true"`` work too).
    ``out`` defaults to ``runs/NAME`` (a fresh folder); ``resume=True`` continues the run in ``out``.

    Your own objects replace what the recipe names: ``student`` (an ``nn.Module`` mapping normalised images to
    logits, trained in place), ``teacher`` (an ``nn.Module``, frozen in place) and ``data`` (``(train_set, test_set)``
    of ``(image, label)`` datasets, a ``DataBundle`` or a spec string; see :mod:`distillscope.data.user`). The run
    records a model's registered name (``create_model`` sets ``model.name``) and a ``DataBundle``'s spec; anything
    else is recorded as ``python:<type>``, which ``eval``, the report and ``--resume`` cannot re-create: resume such
    a run from Python, passing the same objects again.

    >>> summary = distillscope.train("configs/cifar10_5k/resnet8_ce.yaml", out="runs/ce", overrides={"epochs": 2})
    """
    if isinstance(overrides, Mapping):
        overrides = [f"{key}={_yaml_scalar(value)}" for key, value in overrides.items()]
    overrides = list(overrides) + ([f"data.spec={data}"] if isinstance(data, str) else [])
    data = None if isinstance(data, str) else data
    if resume and out is None:
        raise ValueError("resume=True needs out=RUN_FOLDER (the run to continue)")
    if resume and config is None:
        config = Path(out) / "config.yaml"
    raw = apply_overrides(read_recipe(config) if config is not None else {}, overrides)
    given = Given(student, teacher, None if data is None else as_bundle(data))
    cfg = given.config(raw)
    return Trainer(cfg, Path(out) if out else fresh_folder(Path("runs") / cfg.name), resume=resume, build=given.factories()).fit()


class Given:
    """The objects given to :func:`train`: what the run records for them, and the Trainer's factories that return them."""

    def __init__(self, student: nn.Module | None, teacher: nn.Module | None, data: DataBundle | None):
        self.student, self.teacher, self.data = student, teacher, data
        self.bundle: DataBundle | None = None  # the run's data, once loaded

    def config(self, raw: dict) -> Config:
        """The recipe ``raw`` with the given objects' names and spec written in, validated but for those."""
        self._refuse_missing(raw)
        if self.student is not None:
            raw["student"] = {**(raw.get("student") or {}), "name": recorded_name(self.student)}
        if self.teacher is not None:
            raw["teacher"] = {"name": recorded_name(self.teacher), "checkpoint": f"{PYTHON}{type(self.teacher).__name__}"}
        if self.data is not None:
            spec = self.data.spec if parse_spec(self.data.spec)[0] in list_datasets() else f"{PYTHON}{self.data.spec}"  # no factory
            raw["data"] = {**(raw.get("data") or {}), "spec": spec}
            run = raw.get("run") or {}
            if isinstance(self.data.train, StreamedDataset) and run.get("teacher_cache", "auto") == "auto":
                raw["run"] = {**run, "teacher_cache": "off"}  # a streamed set of objects has no files or pixels to key a cache on
        cfg = from_dict(Config, raw)
        probe = replace(  # the given objects pass; validate checks the rest of the recipe
            cfg,
            student=ModelConfig("resnet8") if self.student is not None else cfg.student,
            teacher=ModelConfig("resnet8", "given") if self.teacher is not None else cfg.teacher,
            data=replace(cfg.data, spec="shapes") if self.data is not None else cfg.data,
        )
        validate(probe)
        if self.teacher is not None and not _needs_teacher(cfg):
            raise DistillscopeError(f"teacher=: method '{cfg.method['name']}' uses no teacher; leave teacher= out or choose one that does")
        return cfg

    def _refuse_missing(self, raw: dict) -> None:
        """One line when the recipe (a run's config.yaml) records objects that are not given again."""
        recorded = {"student": (raw.get("student") or {}).get("name"), "teacher": (raw.get("teacher") or {}).get("checkpoint"),
                    "data": (raw.get("data") or {}).get("spec")}
        missing = [role for role, value in recorded.items() if str(value).startswith(PYTHON) and getattr(self, role) is None]
        if missing:
            listed = ", ".join(f"{role} '{recorded[role]}'" for role in missing)
            again = ", ".join(f"{role}=..." for role in missing)
            raise DistillscopeError(f"the config records Python objects ({listed}) that a run folder cannot re-create; "
                                    f"pass them again: distillscope.train(..., {again})")

    def factories(self) -> dict:
        """Replacements for the Trainer's ``data``, ``student`` and ``teacher`` factories."""
        build = {"data": self.load_data}
        if self.student is not None:
            build["student"] = lambda name, num_classes: self._checked(self.student, "student")
        if self.teacher is not None:
            build["teacher"] = self.load_teacher
        return build

    def load_data(self, spec: str, val_fraction: float, split_seed: int) -> DataBundle:
        self.bundle = load_data(spec, val_fraction, split_seed) if self.data is None else carve_val(self.data, val_fraction, split_seed)
        return self.bundle

    def load_teacher(self, spec, data, data_spec, device, memory_format, role: str = "teacher") -> nn.Module:
        return self._checked(self.teacher, "teacher").eval().requires_grad_(False).to(device, memory_format=memory_format)

    def _checked(self, model: nn.Module, role: str) -> nn.Module:
        """``model``, once two training images gave logits of the data's class count (eval mode, no gradient)."""
        if not isinstance(model, nn.Module):
            raise DistillscopeError(f"{role}=: got a {type(model).__name__}; give a torch.nn.Module")
        data = self.bundle
        images = next(Loader(data.train, 2, data.mean, data.std).epoch(0)).images
        device = next(model.parameters(), torch.empty(0)).device
        training = model.training
        with torch.no_grad():
            out = model.eval()(images.to(device))
        model.train(training)
        if not torch.is_tensor(out) or tuple(out.shape) != (len(images), data.num_classes):
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise DistillscopeError(f"{role}=: {type(model).__name__} maps {len(images)} images to {got}, "
                                    f"not logits ({len(images)}, {data.num_classes}) for the data's {data.num_classes} classes")
        return model


def recorded_name(model: nn.Module) -> str:
    """The model's name when ``create_model`` can build it again (a zoo, torchvision/timm or registered name), else
    ``python:<class name>``."""
    name = getattr(model, "name", None)
    if isinstance(name, str) and (name in list_models() or name.startswith(("torchvision:", "timm:"))):
        return name
    return f"{PYTHON}{type(model).__name__}"


def _needs_teacher(cfg: Config) -> bool:
    from .methods import create_method

    params = {k: v for k, v in cfg.method.items() if k != "name"}
    return create_method(cfg.method["name"], **params).needs_teacher


def fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3`` ... : the first that does not exist yet."""
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{base.name}-{i}")
    return out


def _yaml_scalar(value: Any) -> str:
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()
