"""Data specs: one string names a dataset everywhere (config, CLI, Python).

``cifar10:DIR``, ``cifar100:DIR``, ``folder:DIR`` (``DIR/train`` and ``DIR/test`` class folders, or
ImageNet's ``DIR/train`` and ``DIR/val``; ``test=NAME`` picks the held-out folder; an optional
``DIR/classes.txt`` fixes the class order, else sorted folder names), ``shapes`` (the built-in generated set)
and datasets registered from Python (:func:`~distillscope.data.user.register_dataset`). Options follow ``?``:
``shapes?n=2000&seed=0&size=32``, ``folder:DIR?size=224&crop=0.875&memory=8GB&workers=8``.

A folder whose images, decoded at ``size`` × ``size``, fit in ``memory`` (default 2GB; ``memory=0``
always streams) is decoded once into an :class:`ArrayDataset`, like CIFAR; a larger one streams.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

import re

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DistillscopeError
from ..registry import Registry
from .base import ArrayDataset


@dataclass
class DataBundle:
    """Train/validation/test sets of one dataset plus what models need to know about it."""

    spec: str
    train: ArrayDataset | Dataset
    val: ArrayDataset | Dataset | None
    test: ArrayDataset | Dataset
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: Registry[Callable[..., tuple]] = Registry("dataset")


def list_datasets() -> list[str]:
    return DATASETS.names()


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``'kind:path?k=v&k2=v2'`` -> ``(kind, path, {k: v})``."""
    head, _, query = spec.partition("?")
    kind, _, path = head.partition(":")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    return kind, path, options


def _int_option(options: dict[str, str], key: str, default: int, spec: str) -> int:
    value = options.pop(key, default)
    try:
        return int(value)
    except ValueError:
        raise DistillscopeError(f"data spec '{spec}': option {key}={value!r} must be an integer") from None


def _float_option(options: dict[str, str], key: str, default: float, spec: str) -> float:
    value = options.pop(key, default)
    try:
        return float(value)
    except ValueError:
        raise DistillscopeError(f"data spec '{spec}': option {key}={value!r} must be a number") from None


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30, "T": 2**40, "TB": 2**40}


def parse_bytes(text: str) -> int:
    """``'2GB'`` -> 2 * 2**30 (K/M/G/T are powers of 1024; ``B`` optional, case ignored)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).upper().replace("IB", "B")
    if not match or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size such as 512MB or 2GB")
    return int(float(match.group(1)) * _UNITS[unit])


def _need_path(kind: str, path: str, spec: str) -> Path:
    if not path:
        raise DistillscopeError(f"data spec '{spec}': give a directory, e.g. '{kind}:/data/{kind}'")
    root = Path(path).expanduser()
    if not root.exists():
        raise DistillscopeError(f"data spec '{spec}': directory '{root}' does not exist")
    return root


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255).transpose(0, 1).flatten(1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def _cifar_loader(kind: str, num_classes: int):
    def load(path: str, options: dict, spec: str):
        from . import cifar

        root = _need_path(kind, path, spec)
        train, test = cifar.load_cifar(root, train=True), cifar.load_cifar(root, train=False)
        if train.num_classes != num_classes:
            other = "cifar100" if kind == "cifar10" else "cifar10"
            raise DistillscopeError(f"data spec '{spec}': '{root}' holds {train.num_classes} classes; use {other}:{path}")
        return train, test, getattr(cifar, f"{kind.upper()}_MEAN"), getattr(cifar, f"{kind.upper()}_STD")

    return load


for _kind, _classes in (("cifar10", 10), ("cifar100", 100)):
    DATASETS.register(_kind)(_cifar_loader(_kind, _classes))


@DATASETS.register("shapes")
def _shapes(path: str, options: dict, spec: str):
    from .shapes import make_shapes

    n = _int_option(options, "n", 2000, spec)
    seed = _int_option(options, "seed", 0, spec)
    size = _int_option(options, "size", 32, spec)
    n_test = _int_option(options, "n_test", max(n // 4, 10), spec)
    shape_options = {"clutter": _float_option(options, "clutter", 1.0, spec)}
    if "scale" in options:  # object radius range as a fraction of the side, e.g. scale=0.3-0.44
        low, _, high = options.pop("scale").partition("-")
        try:
            shape_options["scale"] = (float(low), float(high))
        except ValueError:
            raise DistillscopeError(f"data spec '{spec}': option scale must be MIN-MAX, e.g. scale=0.3-0.44") from None
    train = make_shapes(n, seed=seed, size=size, train=True, **shape_options)
    test = make_shapes(n_test, seed=seed, size=size, train=False, **shape_options)
    return (train, test, *_channel_stats(train.images))


def _held_out_folder(root: Path, spec: str) -> str:
    """``test`` or ImageNet's ``val``: whichever of the two folders exists (``test`` when neither does)."""
    present = [name for name in ("test", "val") if (root / name).is_dir()]
    if len(present) == 2:
        raise DistillscopeError(f"data spec '{spec}': {root} holds both test/ and val/; "
                                "choose the held-out split with ?test=test or ?test=val")
    return present[0] if present else "test"


@DATASETS.register("folder")
def _folder(path: str, options: dict, spec: str):
    from .folder import FolderDataset, default_workers, read_class_list

    root = _need_path("folder", path, spec)
    size = _int_option(options, "size", 32, spec)
    crop = _float_option(options, "crop", 1.0, spec)
    memory = options.pop("memory", "2GB")
    try:
        limit = parse_bytes(memory)
    except ValueError as err:
        raise DistillscopeError(f"data spec '{spec}': option memory={err}") from None
    held_out = options.pop("test", None) or _held_out_folder(root, spec)
    splits = [root / name for name in ("train", held_out)]
    missing = [str(p) for p in splits if not p.is_dir()]
    if missing:
        raise DistillscopeError(f"data spec '{spec}': expected class folders under {' and '.join(missing)} (test/ or ImageNet's val/)")
    listed = read_class_list(root / "classes.txt") if (root / "classes.txt").is_file() else None
    train, test = (FolderDataset(p, size=size, crop=crop, classes=listed) for p in splits)
    if train.classes != test.classes:
        raise DistillscopeError(f"data spec '{spec}': train and {held_out} class folders differ")
    workers = _int_option(options, "workers", default_workers(len(train) + len(test)), spec)
    rows = range(0, len(train), max(1, len(train) // 512))
    if train.decoded_bytes() + test.decoded_bytes() <= limit:
        train, test = (ds.to_array(workers, desc=f"decoding {name} ({len(ds)} images)") for ds, name in ((train, "train"), (test, "test")))
        sample = train.images[list(rows)]
    else:
        sample = torch.stack([train[i][0] for i in rows])
    return (train, test, *_channel_stats(sample))


def same_data(spec_a: str, spec_b: str) -> bool:
    """Whether two specs name the same data: same kind, same options, same directory (after resolving it)."""
    (kind_a, path_a, opts_a), (kind_b, path_b, opts_b) = parse_spec(spec_a), parse_spec(spec_b)
    same_path = path_a == path_b or (bool(path_a) and bool(path_b)
                                     and Path(path_a).expanduser().resolve() == Path(path_b).expanduser().resolve())
    return kind_a == kind_b and opts_a == opts_b and same_path


def split_rows(targets: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split of row numbers into (train_rows, val_rows), reproducible from ``seed``."""
    if not 0 <= val_fraction < 1:
        raise DistillscopeError(f"val_fraction={val_fraction} must be in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    train_rows, val_rows = [], []
    for c in targets.unique():
        rows = (targets == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        k = round(len(rows) * val_fraction)
        val_rows.append(rows[:k])
        train_rows.append(rows[k:])
    return torch.cat(train_rows).sort().values, torch.cat(val_rows).sort().values


def _take(dataset: ArrayDataset | Dataset, rows: torch.Tensor):
    return dataset.subset(rows) if hasattr(dataset, "subset") else Subset(dataset, rows.tolist())


def index_and_targets(dataset: ArrayDataset | Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset indices and labels of every sample (datasets with ``index``, or a ``Subset`` of one without)."""
    if hasattr(dataset, "index"):
        return torch.as_tensor(dataset.index), torch.as_tensor(dataset.targets)
    if isinstance(dataset, Subset):
        rows = torch.as_tensor(dataset.indices)
        return rows, torch.as_tensor(dataset.dataset.targets)[rows]
    return torch.arange(len(dataset)), torch.as_tensor(dataset.targets)


def load_data(spec: str, val_fraction: float = 0.0, split_seed: int = 0) -> DataBundle:
    """Load a dataset from its spec and carve a validation split from its training set."""
    kind, path, options = parse_spec(spec)
    if kind not in DATASETS:
        raise DistillscopeError(f"data spec '{spec}': unknown dataset '{kind}'; valid: {', '.join(list_datasets())}")
    loaded = DATASETS.get(kind)(path, options, spec)  # (train, test, mean, std), or a DataBundle (register_dataset)
    if options:
        raise DistillscopeError(f"data spec '{spec}': unknown option(s) {', '.join(options)} for '{kind}'")
    if not isinstance(loaded, DataBundle):
        train, test, mean, std = loaded
        loaded = DataBundle(spec, train, None, test, list(test.classes), mean, std)
    return carve_val(loaded, val_fraction, split_seed)


def carve_val(data: DataBundle, val_fraction: float, split_seed: int = 0) -> DataBundle:
    """``data`` with a stratified validation split of ``val_fraction`` carved from its training set, reproducible
    from ``split_seed``; ``data`` itself when it has a validation set already or ``val_fraction`` is 0."""
    if data.val is not None or val_fraction == 0:
        return data
    train_rows, val_rows = split_rows(index_and_targets(data.train)[1], val_fraction, split_seed)
    return replace(data, train=_take(data.train, train_rows), val=_take(data.train, val_rows))
