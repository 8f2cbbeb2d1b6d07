"""Checkpoints as safetensors (tensors) with their JSON state embedded, written atomically.

One ``.safetensors`` file holds every tensor (model, method, optimiser state, RNG states) and, in its
header metadata, the JSON state (config, epoch, metrics, optimiser hyper-parameters, ...), so a single
``os.replace`` swaps the whole checkpoint. A readable ``.json`` copy of the state sits beside it.
Nothing here unpickles: loading never executes code.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import RUN_ONLY_KEYS, Config, from_dict
from ..errors import DistillscopeError, UnknownNameError

META_KEY = "distillscope"


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` a sibling temporary file, sync it, then rename it over ``path``: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy any tensor whose storage an earlier entry already holds (e.g. a module both the method and
    SimKD's deployable model own): safetensors writes each storage once."""
    seen, out = set(), {}
    for key, value in tensors.items():
        storage = value.untyped_storage().data_ptr()
        out[key] = value.clone() if storage in seen else value
        seen.add(storage)
    return out


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Atomically write ``tensors`` (on the CPU) with the JSON ``state`` in the file's header, as :func:`load_checkpoint` reads it."""
    text = json.dumps(state, sort_keys=True)
    tensors = _unshared({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: text}))


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Atomically write ``tensors`` + JSON ``state`` to ``path`` (.safetensors) and ``path.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, tensors, state)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(state, indent=2, sort_keys=True)))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's per-parameter state as ``optim.{index}.{key}`` tensors and ``{index}.{key}`` other values."""
    tensors, scalars = {}, {}
    for index, entries in optimizer.state_dict()["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, scalars


def optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any] | None = None) -> dict[int, dict]:
    """The ``state`` of an optimiser's state dict, back from :func:`optimizer_tensors` (the ``optim.*`` keys of ``tensors``)."""
    per_param: dict[int, dict] = {}
    for key, value in [*unprefixed("optim", tensors).items(), *(scalars or {}).items()]:
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    return per_param


def _read_safetensors(path: Path, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the header metadata of a safetensors file; a damaged file is one clear error."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata() or {}
    except Exception as err:  # safetensors raises several types for damaged files
        raise DistillscopeError(f"checkpoint '{path}' is not a readable safetensors file ({err})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and JSON state from a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise DistillscopeError(f"checkpoint '{path}' does not exist")
    tensors, meta = _read_safetensors(path, device)
    if META_KEY not in meta:
        raise DistillscopeError(f"checkpoint '{path}' was not written by distillscope (no '{META_KEY}' metadata)")
    return tensors, json.loads(meta[META_KEY])


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def find_model_checkpoint(path: str | Path) -> Path:
    """A run folder resolves to its ``best.safetensors`` (else ``last.safetensors``); a file to itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise DistillscopeError(f"run folder '{path}' holds no best.safetensors or last.safetensors; train it first")
    if not path.is_file():
        raise DistillscopeError(f"checkpoint '{path}' does not exist (give a run folder, a .safetensors or a .pth file)")
    return path


TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
NESTED_KEYS = ("state_dict", "model", "model_state_dict")


# Globals a torch.load(weights_only=True) may rebuild besides tensors and containers: RepDistiller/mdistiller save their
# final checkpoint as {'opt': argparse.Namespace, 'model': state_dict, ...}; a Namespace holds only plain values.
SAFE_GLOBALS = [argparse.Namespace]
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def load_torch_file(file: str | Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load(file, weights_only=True)`` allowing :data:`SAFE_GLOBALS` only: no pickled code runs.

    A file that needs any other Python global fails with one line naming it."""
    try:
        if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                return torch.load(file, map_location=device, weights_only=True)
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as err:  # pickle refusals and damaged archives alike
        needed = _GLOBAL.search(str(err))
        if needed:
            reason = (f"it needs the Python global '{needed.group(1)}', which is not loaded because unpickling it could run code "
                      "(only tensors, containers, numbers, strings and argparse.Namespace are)")
        else:
            reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        raise DistillscopeError(
            f"checkpoint '{file}' cannot be read with torch.load(weights_only=True) ({reason}); "
            "save model.state_dict() (not the model object) or convert it to safetensors"
        ) from None


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Path]:
    """A model's state_dict from a run folder, a ``.safetensors`` or a ``.pth``/``.pt`` file.

    Returns ``(state_dict, state, file)``: ``state`` is the JSON state of a distillscope checkpoint
    (model name, classes, ...) and ``None`` for other files. ``.pth`` files are read with
    :func:`load_torch_file` (``torch.load(weights_only=True)``: no code runs); a dict nesting the weights under
    ``state_dict``, ``model`` or ``model_state_dict`` is unwrapped (RepDistiller/mdistiller's
    ``{'epoch', 'model', 'accuracy', 'optimizer'}`` and ``{'opt': Namespace, 'model', ...}`` among them), and a
    ``module.`` prefix (DataParallel) is dropped. Other code bases' parameter names are translated by
    :func:`fit_weights` (``models/convert.py``).
    """
    file = find_model_checkpoint(path)
    if file.suffix == ".safetensors":
        tensors, meta = _read_safetensors(file, device)
        if META_KEY in meta:
            return unprefixed("model", tensors), json.loads(meta[META_KEY]), file
        return _strip_module(tensors), None, file
    if file.suffix not in TORCH_SUFFIXES:
        raise DistillscopeError(f"checkpoint '{file}': unknown format '{file.suffix}'; "
                                "give a run folder, a .safetensors or a .pth/.pt state_dict")
    obj = load_torch_file(file, device)
    for key in NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        found = f"a dict with keys {', '.join(map(str, list(obj)[:5]))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DistillscopeError(f"checkpoint '{file}' holds {found}, not a state_dict of tensors (nor one under {'/'.join(NESTED_KEYS)})")
    return _strip_module(obj), None, file


def _strip_module(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith("module.") for k in tensors):
        return {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _classifier(model: torch.nn.Module) -> str | None:
    """Path of the last ``nn.Linear`` (the classifier head of nearly every vision model)."""
    linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return linear[-1] if linear else None


def _listed(keys: list[str], what: str, limit: int = 4) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} {what} ({', '.join(keys[:limit])}{more})"


def _extra_prefix(missing: list[str], unexpected: list[str]) -> str | None:
    """The prefix (e.g. ``backbone.``) that turns every missing key into a key of the file, if one does."""
    first = missing[0]
    present = set(unexpected)
    for key in unexpected:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(prefix + k in present for k in missing):
                return prefix
    return None


def fit_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str, skip_keys: tuple[str, ...] | list[str] = ()) -> str:
    """Load ``weights`` into ``model`` strictly, except keys under a ``skip_keys`` prefix (left as they are).

    Weights named as another code base names the same architecture (RepDistiller/mdistiller's CIFAR zoo,
    torchvision's ImageNet ResNets; ``models/convert.py``) are renamed to the model's names first, then checked
    as strictly as any (a mismatch is reported in the model's names, saying which layout the file was read in).
    Any missing, unexpected or differently shaped key fails with one error listing the first few of each
    and their counts; a classifier trained for another number of classes is named as such. Returns the
    layout the weights were read in (``"its own names"`` or e.g. ``"RepDistiller/mdistiller models/resnet.py"``).
    """
    def skipped(key: str) -> bool:
        return any(key == p or key.startswith(p.rstrip(".") + ".") for p in skip_keys)

    layout, hint = "its own names", None
    if weights.keys() != model.state_dict().keys():
        from ..models.convert import foreign_hint, translate

        found = translate(model, weights)
        if found is not None:
            weights, layout = found
        hint = foreign_hint(model, weights)
    own = {k: v for k, v in model.state_dict().items() if not skipped(k)}
    weights = {k: v for k, v in weights.items() if not skipped(k)}
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = [_listed(keys, what) for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]
        if reshaped:
            shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped]
            parts.append(_listed(shapes, "with another shape (file vs model)"))
        name = getattr(model, "name", type(model).__name__)
        read_as = "" if layout == "its own names" else f" (read in {layout} names)"
        text = f"weights '{source}'{read_as} do not fit model '{name}': " + "; ".join(parts)
        head = _classifier(model)
        head_keys = [k for k in reshaped if k.startswith(f"{head}.")]
        if head_keys:
            out_file, out_model = weights[head_keys[0]].shape[0], own[head_keys[0]].shape[0]
            text += (
                f". The classifier '{head}' was trained for {out_file} classes and this model has {out_model} "
                f"(the data's): to fine-tune, load all but the head with skip_keys: [{head}]"
            )
        elif hint:
            text += f". {hint[0].upper()}{hint[1:]}"
        elif missing and unexpected:
            prefix = _extra_prefix(missing, unexpected)
            text += (
                f". Every missing key is in the file with the prefix '{prefix}': save the wrapped model's inner module"
                if prefix
                else ". The key names differ: the file was probably saved from another architecture or wrapper; check the model name"
            )
        raise DistillscopeError(text)
    model.load_state_dict(weights, strict=False)
    return layout


def load_weights(model: torch.nn.Module, path: str | Path, skip_keys: tuple[str, ...] | list[str] = (),
                 device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Read weights from ``path`` (see :func:`read_weights`) into ``model``; returns the distillscope state or None.

    A distillscope checkpoint must hold the same model name as ``model.name``.
    """
    weights, state, file = read_weights(path, device)
    name = getattr(model, "name", None)
    if state is not None and name is not None and state["model"] != name:
        raise DistillscopeError(f"checkpoint '{file}' holds a '{state['model']}', not a '{name}'; fix the model name or the checkpoint")
    fit_weights(model, weights, str(file), skip_keys)
    return state


def _deployable(student: torch.nn.Module, state: dict[str, Any]) -> torch.nn.Module:
    """The run's method model around ``student`` (e.g. SimKD's projector + teacher classifier), rebuilt from
    the method config and the feature shapes the trainer saved (``DistillMethod.deployable``)."""
    from ..methods import TrainingInfo, create_method

    params = dict(state["config"]["method"])
    method = create_method(params.pop("name"), **params)
    shapes = {role: {k: torch.Size(v) for k, v in state["deploy"][role].items()} for role in ("student", "teacher")}
    no_samples = torch.zeros(0, dtype=torch.long)
    method.build(shapes["student"], shapes["teacher"], TrainingInfo(state["num_classes"], no_samples, no_samples, 0, 0))
    return method.deployable(student)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model with its weights from a distillscope checkpoint file or run folder.

    Zoo, torchvision/timm and registered models alike: a registered model's module must be imported
    first (``--import MODULE`` on the command line).
    """
    from ..models import create_model

    file = find_model_checkpoint(path)
    tensors, state = load_checkpoint(file, device)
    try:
        model = create_model(state["model"], num_classes=state["num_classes"])
    except UnknownNameError:
        raise DistillscopeError(
            f"checkpoint '{file}' holds model '{state['model']}', which is not registered here; import the module that "
            "registers it first (distillscope --import MODULE ...)"
        ) from None
    if state.get("deploy"):
        model = _deployable(model, state)
    model = model.to(device)
    fit_weights(model, unprefixed("model", tensors), str(file))
    return model, state


# ----------------------------------------------------------------- a run's checkpoints
def resumable(out: Path, resume: bool, is_main: bool = True) -> bool:
    """Whether run folder ``out`` holds a checkpoint to resume; refuses to start over an existing run (rank 0 checks)."""
    saved, config = out / "last.safetensors", out / "config.yaml"
    if not is_main:  # rank 0 checks (and creates the folder); the others only read it
        return resume and saved.is_file()
    if resume and not saved.is_file() and not config.is_file():
        raise DistillscopeError(f"cannot resume: '{saved}' does not exist; start the run without --resume")
    if not resume and (saved.exists() or config.exists()):
        raise DistillscopeError(f"run folder '{out}' already holds a run; pass --resume to continue it or choose another --out")
    return resume and saved.is_file()


def start_run_folder(out: Path, config: dict) -> None:
    """Create run folder ``out`` and record the run's ``config`` (``config.yaml``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def model_meta(model: str, precision: str, data, data_spec: str, deploy: dict | None = None) -> dict[str, Any]:
    """What a saved model carries besides its weights: architecture, precision, classes, normalisation and data;
    ``deploy``: the feature shapes :func:`load_model` rebuilds a method's deployable model from."""
    meta = {"model": model, "precision": precision, "num_classes": data.num_classes, "classes": data.classes, "mean": list(data.mean),
            "std": list(data.std), "data": data_spec}
    if deploy is not None:
        meta["deploy"] = deploy
    return meta


def save_model(path: Path, model: torch.nn.Module, meta: dict[str, Any], row: dict, config: dict) -> None:
    """A model alone (``best.safetensors``, ``epoch_{e}.safetensors``), with its metrics ``row`` and the run's config."""
    save_checkpoint(path, prefixed("model", model.state_dict()), {**meta, "metrics": row, "config": config})


def save_last(out: Path, model: torch.nn.Module, method: torch.nn.Module, teacher: torch.nn.Module | None, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, device: torch.device, state: dict[str, Any]) -> None:
    """``out/last.safetensors``: the model, the method, a trained ``teacher``, the optimiser's tensors and the RNG
    states; in its header ``state`` with the optimiser's hyper-parameters and scalars and the scaler's state."""
    groups = [{k: float(v) if torch.is_tensor(v) else v for k, v in g.items() if k != "params"}
              for g in optimizer.state_dict()["param_groups"]]
    tensors = {**prefixed("model", model.state_dict()), **prefixed("method", method.state_dict()), "rng.torch": torch.get_rng_state()}
    if teacher is not None:
        tensors.update(prefixed("teacher", teacher.state_dict()))
    optim_tensors, scalars = optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    save_checkpoint(out / "last.safetensors", tensors,
                    {**state, "optim_groups": groups, "optim_scalars": scalars, "scaler": scaler.state_dict()})


def _training_config(cfg: dict) -> dict:
    return {**cfg, "run": {k: v for k, v in cfg["run"].items() if k not in RUN_ONLY_KEYS}}


def restore_last(out: Path, config: dict, model: torch.nn.Module, method: torch.nn.Module, teacher: torch.nn.Module | None,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device) -> dict[str, Any]:
    """Load what :func:`save_last` wrote into the run's objects and the RNG states; returns the saved state.
    Refuses a run whose config differs from ``config`` (a ``Config.to_dict()``) beyond the run-only keys."""
    tensors, state = load_checkpoint(out / "last.safetensors", device)
    saved = from_dict(Config, state["config"]).to_dict()
    if _training_config(saved) != _training_config(config):
        diff = [k for k in saved if saved[k] != config[k]]
        raise DistillscopeError(f"cannot resume '{out}': config differs from the saved run in {', '.join(diff)}; "
                                "resume with the saved config.yaml")
    model.load_state_dict(unprefixed("model", tensors))
    method.load_state_dict(unprefixed("method", tensors))
    if teacher is not None:
        teacher.load_state_dict(unprefixed("teacher", tensors))
    optim_state = optimizer.state_dict()
    for idx, group in enumerate(state["optim_groups"]):
        if torch.is_tensor(optim_state["param_groups"][idx]["lr"]):
            group = {**group, "lr": torch.tensor(group["lr"], device=device)}
        optim_state["param_groups"][idx].update(group)
    optim_state["state"] = optimizer_state(tensors, state["optim_scalars"])
    optimizer.load_state_dict(optim_state)
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors["rng.torch"].cpu())
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"].cpu(), device)
    return state
