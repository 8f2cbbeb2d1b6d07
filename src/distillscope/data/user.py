"""Data from Python: your own ``Dataset`` objects as a run's data, and ``register_dataset``.

:func:`as_bundle` makes a :class:`~distillscope.data.spec.DataBundle` of ``(train_set, test_set)``: map-style
datasets (``len`` and ``[i]``) whose items are ``(image, label)``, the image a PIL image, a uint8 tensor
(C, H, W) or a float tensor in [0, 1], with 1 or 3 channels, the label an integer. When the images of both sets
fit in ``memory`` (2 GB) they are read once into on-device uint8 tensors, as CIFAR is (every augmentation, the
teacher cache); larger sets stream through the loader's workers, which needs every image the same size and the
labels as ``dataset.targets`` (augmentation ``pad_crop`` or ``none``). Class names come from
``train_set.classes``, else ``"0"``, ``"1"`` ...

:func:`register_dataset` names a factory, so that a spec ``name:PATH?k=v`` builds the data wherever a spec is
read (recipes, the command line, ``eval``, the report, ``--resume``).

A run on objects that no spec names records ``python:<type name>`` as its spec; loading that spec fails with
one line: a run folder cannot re-create Python objects.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DistillscopeError
from .base import ArrayDataset
from .spec import DATASETS, DataBundle, _channel_stats

MEMORY = 2 * 2**30  # bytes of uint8 images read into memory; larger sets stream (as folder:'s default)
NOT_RECREATED = ("names Python objects given to distillscope.train(data=...), which a run folder cannot re-create: "
                 "pass the same data= again, or register a factory with @distillscope.register_dataset and name its spec")


def to_uint8(image, where: str) -> torch.Tensor:
    """A PIL image or a (C, H, W) / (H, W) tensor (uint8, or float in [0, 1]) as uint8 (3, H, W)."""
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(image.convert("RGB")).transpose(2, 0, 1)))
    if not torch.is_tensor(image):
        raise DistillscopeError(f"{where}: the image is a {type(image).__name__}; return a PIL image or a (C, H, W) tensor")
    x = image[None] if image.ndim == 2 else image
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise DistillscopeError(f"{where}: an image tensor of shape {tuple(image.shape)}; return (3, H, W) or (1, H, W)")
    if x.is_floating_point():
        low, high = x.min().item(), x.max().item()
        if low < 0 or high > 1:
            raise DistillscopeError(f"{where}: float images must be in [0, 1] (distillscope normalises them itself), "
                                    f"got [{low:.3g}, {high:.3g}]")
        x = (x * 255).round()
    elif x.dtype != torch.uint8:
        raise DistillscopeError(f"{where}: an image tensor of dtype {x.dtype}; return uint8 or float in [0, 1]")
    return x.to(torch.uint8).expand(3, -1, -1).contiguous()


def read_item(dataset, i: int) -> tuple[torch.Tensor, int]:
    """Item ``i`` of a user dataset as ``(uint8 (3, H, W), label)``."""
    where = f"{type(dataset).__name__}[{i}]"
    item = dataset[i]
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DistillscopeError(f"{where} returned a {type(item).__name__}; a dataset item must be (image, label)")
    return to_uint8(item[0], where), int(item[1])


class StreamedDataset(Dataset):
    """A user dataset read item by item (in the loader's workers): items ``(uint8 image, target, index)``."""

    def __init__(self, dataset, classes: list[str]):
        self.dataset, self.classes = dataset, classes
        self.targets = torch.as_tensor(list(dataset.targets), dtype=torch.int64)
        self.index = torch.arange(len(dataset))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        row = int(self.index[i])
        return (*read_item(self.dataset, row), row)

    def subset(self, rows: torch.Tensor) -> "StreamedDataset":
        part = copy.copy(self)
        part.targets, part.index = self.targets[rows], self.index[rows]
        return part


def as_bundle(data, spec: str | None = None, memory: int = MEMORY) -> DataBundle:
    """A run's data from a :class:`DataBundle` (returned as is) or ``(train_set, test_set)``; ``spec`` names it
    (default ``python:<type of train_set>``)."""
    if isinstance(data, DataBundle):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise DistillscopeError(f"data: got a {type(data).__name__}; give (train_set, test_set) or a DataBundle: "
                                "a run needs a test set besides the training set")
    for which, ds in zip(("train", "test"), data):
        if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")) or len(ds) == 0:
            raise DistillscopeError(f"data: the {which} set ({type(ds).__name__}) must be a non-empty map-style dataset (len and [i])")
    train, test = data
    first = read_item(train, 0)[0]
    need = (len(train) + len(test)) * first.numel()
    if need <= memory:
        parts = [_read_all(ds) for ds in data]
        classes = _class_names(train, [targets for _, targets in parts])
        train_set, test_set = (ArrayDataset(images, targets, classes) for images, targets in parts)
        sample = train_set.images
    else:
        for which, ds in zip(("train", "test"), data):
            if not hasattr(ds, "targets"):
                raise DistillscopeError(f"data: {len(train) + len(test)} images of {tuple(first.shape)} take {need / 2**30:.1f} GB, "
                                        f"more than the {memory / 2**30:.1f} GB read into memory, so they stream, "
                                        f"which needs the {which} set's labels as .targets; add that attribute")
        classes = _class_names(train, [torch.as_tensor(list(ds.targets)) for ds in data])
        train_set, test_set = (StreamedDataset(ds, classes) for ds in data)
        sample = torch.stack([train_set[i][0] for i in range(0, len(train_set), max(1, len(train_set) // 512))])
    return DataBundle(spec or f"python:{type(train).__name__}", train_set, None, test_set, classes, *_channel_stats(sample))


def _read_all(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item read once into one uint8 tensor (filled in place: no second copy) and the labels."""
    first = read_item(dataset, 0)[0]
    images, labels = torch.empty(len(dataset), *first.shape, dtype=torch.uint8), torch.empty(len(dataset), dtype=torch.int64)
    for i in range(len(dataset)):
        image, labels[i] = read_item(dataset, i)
        if image.shape != first.shape:
            raise DistillscopeError(f"data: {type(dataset).__name__} returns images of different sizes ({tuple(first.shape)} and "
                                    f"{tuple(image.shape)}); return one size")
        images[i] = image
    return images, labels


def _class_names(train, targets: list[torch.Tensor]) -> list[str]:
    count = 1 + max(int(t.max()) for t in targets)
    if min(int(t.min()) for t in targets) < 0:
        raise DistillscopeError("data: labels must be class numbers 0, 1, ...; found a negative label")
    names = getattr(train, "classes", None)
    if names is None:
        return [str(c) for c in range(count)]
    if len(names) < count:
        raise DistillscopeError(f"data: {type(train).__name__}.classes names {len(names)} classes but a label is {count - 1}")
    return [str(name) for name in names]


def register_dataset(name: str) -> Callable[[Callable], Callable]:
    """Decorator: ``@register_dataset("mine")`` over ``f(**options) -> DataBundle | (train_set, test_set)``.

    The spec ``mine:PATH?n=100&flag=true`` calls ``f(path="PATH", n=100, flag=True)`` (each value converted to the
    type of the parameter's default: int, float, bool, else str), then :func:`as_bundle`. A validation split is
    carved from train by ``data.val_fraction`` unless the factory returns a ``DataBundle`` with one.
    """
    if not name or any(c in name for c in ":?&/"):
        raise ValueError(f"dataset name {name!r} must be non-empty, without ':', '?', '&' or '/'")

    def decorator(factory: Callable) -> Callable:
        def load(path: str, options: dict, spec: str) -> DataBundle:
            kwargs = _arguments(factory, name, path, options, spec)
            options.clear()
            return replace(as_bundle(factory(**kwargs), spec), spec=spec)

        DATASETS.register(name)(load)
        return factory

    return decorator


def _arguments(factory: Callable, name: str, path: str, options: dict, spec: str) -> dict:
    signature = inspect.signature(factory)
    kwargs = {"path": path} if path else {}
    for key, text in options.items():
        default = signature.parameters[key].default if key in signature.parameters else None
        kwargs[key] = _typed(text, type(default), f"data spec '{spec}': option {key}={text!r}")
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        takes = ", ".join(signature.parameters) or "no options"
        raise DistillscopeError(f"data spec '{spec}': {err}; dataset '{name}' takes {takes}") from None
    return kwargs


def _typed(text: str, kind: type, where: str):
    if kind is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise DistillscopeError(f"{where} must be true or false")
        return text.lower() in ("1", "true", "yes")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise DistillscopeError(f"{where} must be {'an integer' if kind is int else 'a number'}") from None
    return text


@DATASETS.register("python")
def _python_objects(path: str, options: dict, spec: str):
    raise DistillscopeError(f"data spec '{spec}' {NOT_RECREATED}")
