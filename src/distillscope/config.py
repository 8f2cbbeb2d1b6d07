"""Run configuration: YAML recipes validated into typed dataclasses.

YAML is read with ``yaml.safe_load`` (configs never execute code). Unknown keys, wrong types and
unknown model/method/dataset names each give one line naming the key and the valid choices.
``--set a.b=c`` overrides are parsed as YAML scalars/lists and applied before validation. Numbers may be
written as people write them (``1e-3``, ``5E-4``, ``.5``, ``1_000``) wherever a number is expected.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import DistillscopeError
from .values import as_number


@dataclass
class DataConfig:
    """``augment``: ``pad_crop`` (pad by ``pad``, crop back), ``random_resized_crop`` (area fraction
    ``crop_scale``, aspect ratio ``crop_ratio``, resized to the data's size) or ``none`` (no flip either);
    ``true``/``false`` mean ``pad_crop``/``none``. ``flip`` adds a horizontal flip to either crop."""

    spec: str = "shapes"
    val_fraction: float = 0.1
    split_seed: int = 0
    batch_size: int = 64
    eval_batch_size: int = 512
    augment: Literal["pad_crop", "random_resized_crop", "none", True, False] = "pad_crop"
    pad: int = 4
    flip: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    num_workers: int = 2

    def __post_init__(self):
        self.augment = {True: "pad_crop", False: "none"}.get(self.augment, self.augment)
        (lo, hi), (rlo, rhi) = (_pair(self.crop_scale, "data.crop_scale"), _pair(self.crop_ratio, "data.crop_ratio"))
        if not (0 < lo <= hi <= 1 and 0 < rlo <= rhi):
            raise DistillscopeError(f"config data.crop_scale {self.crop_scale} must be 0 < a <= b <= 1 and data.crop_ratio "
                                    f"{self.crop_ratio} 0 < a <= b")


def _pair(value: list[float], where: str) -> list[float]:
    if len(value) != 2:
        raise DistillscopeError(f"config {where}: give two numbers [min, max], got {value!r}")
    return value


@dataclass
class ModelConfig:
    """``name``: a zoo name, ``torchvision:NAME``, ``timm:NAME`` or a name registered with
    ``distillscope.register_model``. ``checkpoint``: weights to start from (student) or to distil from
    (teacher): a run folder, a distillscope ``.safetensors``, a plain state_dict ``.safetensors``, or a
    ``.pth``/``.pt`` state_dict. ``skip_keys`` (student only): key prefixes left at their initial values,
    e.g. ``[fc]`` to fine-tune weights trained for another number of classes."""

    name: str = "resnet8"
    checkpoint: str | None = None
    skip_keys: list[str] = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["multistep", "cosine", "onecycle", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    clip_grad_norm: float | None = None


@dataclass
class RunConfig:
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    deterministic: bool = False
    progress: bool = True
    log_every: int = 50
    threads: int | None = None
    keep_every: int | None = None  # also keep the model every k epochs as epoch_{e}.safetensors (information-plane trajectories)
    teacher_cache: str | bool = "auto"  # auto | off | DIR (engine/cache.py); YAML's bare off/on read as false/true
    teacher_cache_topk: int = 0  # 0: store all logits; k: the top-k plus one shared value for the rest
    teacher_cache_max_gib: float = 4.0  # tapped teacher features are cached too while the whole cache stays within this size
    # all caches of the root; None: $DISTILLSCOPE_CACHE_BUDGET_GIB, else 8; 0: no budget (engine/cache/budget.py)
    teacher_cache_budget_gib: float | None = None
    compile: bool = False  # torch.compile student and teacher (in place)
    cuda_graph: bool = False  # replay the whole training step as a CUDA graph (engine/cuda_graph.py)
    sync_bn: bool = False  # under torchrun: batch-norm statistics over the global batch (engine/distributed.py)
    # trackers besides metrics.csv (engine/trackers.py)
    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = field(default_factory=lambda: ["csv"])

    def __post_init__(self):
        if isinstance(self.teacher_cache, bool):
            self.teacher_cache = "auto" if self.teacher_cache else "off"


# run keys that change how a run is carried out, not what it trains: a resume may change them, tables and sweeps ignore them
RUN_ONLY_KEYS = {"progress", "log_every", "device", "threads", "keep_every", "teacher_cache", "teacher_cache_max_gib",
                 "teacher_cache_budget_gib", "loggers"}


@dataclass
class Config:
    """A whole training run: data, student, optional teacher (or ``teachers``), method, optimiser and runtime."""

    name: str = "run"
    seed: int = 0
    epochs: int = 240
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig | None = None
    # several frozen teachers, for a multi-teacher method (methods/multi_teacher.py)
    teachers: list[ModelConfig] = field(default_factory=list)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "ce"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value, tp, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:
            try:
                return _convert(value, option, where)
            except DistillscopeError:
                pass
        return _convert(value, inner[-1], where)
    if origin is Literal:
        if value not in args:
            raise DistillscopeError(f"config {where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DistillscopeError(f"config {where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise DistillscopeError(f"config {where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DistillscopeError(f"config {where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in (float, int) and (number := as_number(value, tp)) is not None:
        return number
    if tp is Any or (isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool)):
        return value
    raise DistillscopeError(f"config {where}: {value!r} should be {_type_name(tp)}")


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from a plain dict, checking keys and types recursively."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise DistillscopeError(f"config: unknown key '{prefix}{unknown[0]}'; valid keys: {', '.join(names)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a nested dict in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DistillscopeError(f"--set '{item}': expected KEY=VALUE, e.g. --set optim.lr=0.1")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise DistillscopeError(f"--set '{item}': '{part}' is not a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw else None
    return data


def validate(config: Config) -> Config:
    """Check names against the registries and the method's parameters."""
    from .data import list_datasets, parse_spec
    from .methods import create_method
    from .models import check_model_name, list_models

    roles = [("student", config.student), ("teacher", config.teacher)] + [(f"teachers[{i}]", t) for i, t in enumerate(config.teachers)]
    for role, model in roles:
        if model is not None and ":" in model.name:
            check_model_name(model.name)
        elif model is not None and model.name not in list_models():
            raise DistillscopeError(f"config {role}.name: unknown model '{model.name}'; "
                                    f"valid: {', '.join(list_models())}, torchvision:NAME, timm:NAME")
    kind = parse_spec(config.data.spec)[0]
    if kind not in list_datasets():
        raise DistillscopeError(f"config data.spec: unknown dataset '{kind}'; valid: {', '.join(list_datasets())}")
    params = dict(config.method)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise DistillscopeError("config method.name: missing; e.g. method: {name: kd, T: 4}")
    method = create_method(name, **params)
    if config.teachers:
        if config.teacher is not None:
            raise DistillscopeError("config: give either teacher (one) or teachers (a list), not both")
        if not getattr(method, "multi_teacher", False):
            raise DistillscopeError(f"config teachers: method '{name}' distils from one teacher; "
                                    "use method mtkd, aekd or aekd_f, or a single teacher section")
        missing = [i for i, t in enumerate(config.teachers) if not t.checkpoint]
        if missing:
            raise DistillscopeError(f"config teachers[{missing[0]}].checkpoint: missing; each teacher needs a run folder or .safetensors")
    elif getattr(method, "multi_teacher", False):
        raise DistillscopeError(f"config: method '{name}' combines several teachers; list them under teachers: [{{name, checkpoint}}, ...]")
    elif method.needs_teacher and (config.teacher is None or not config.teacher.checkpoint):
        raise DistillscopeError(f"config: method '{name}' needs a teacher; "
                                "set teacher.name and teacher.checkpoint (a run folder or .safetensors)")
    for key in ("epochs",):
        if getattr(config, key) < 1:
            raise DistillscopeError(f"config {key}: must be at least 1")
    if config.run.keep_every is not None and config.run.keep_every < 1:
        raise DistillscopeError("config run.keep_every: must be at least 1 (or null to keep no per-epoch checkpoints)")
    if config.data.batch_size < 1 or config.data.eval_batch_size < 1:
        raise DistillscopeError("config data.batch_size / data.eval_batch_size: must be at least 1")
    return config


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict with dotted keys: ``{"data": {"spec": "shapes"}}`` -> ``{"data.spec": "shapes"}``."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def merge(base: dict, over: dict) -> dict:
    """``over`` deep-merged onto ``base``: mappings merge key by key; lists and scalars replace."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both else value
    return out


def read_recipe(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A recipe's YAML as a dict, with its ``base:`` chain resolved.

    ``base: _base.yaml`` (a path relative to the recipe's own folder) names a file the recipe is merged onto
    with :func:`merge`; a base may name a base of its own. The result holds no ``base`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise DistillscopeError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DistillscopeError(f"config file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DistillscopeError(f"config file '{path}' must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise DistillscopeError(f"config file '{path}': base should be one file name, e.g. base: _base.yaml; got {base!r}")
    chain, base_path = (*_chain, path.resolve()), path.parent / base
    if not base_path.is_file():
        raise DistillscopeError(f"config file '{path}': its base '{base_path}' does not exist")
    if base_path.resolve() in chain:
        raise DistillscopeError(f"config file '{path}': base '{base_path}' makes a cycle "
                                f"({' -> '.join(p.name for p in (*chain, base_path))})")
    return merge(read_recipe(base_path, chain), data)


def load_config(path: str | Path | None = None, overrides: list[str] = (), data_spec: str | None = None) -> Config:
    """Read a YAML recipe (or the defaults), resolve its ``base:`` chain, apply overrides and validate."""
    data = read_recipe(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    if data_spec:
        data.setdefault("data", {})["spec"] = data_spec
    return validate(from_dict(Config, data))
