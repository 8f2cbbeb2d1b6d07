"""Batches for training and evaluation, identical whether images live on the device or on disk.

:class:`Loader` draws, per epoch, one shuffled order and one augmentation per sample from a generator
seeded by ``(seed, epoch)``. Any epoch can therefore be replayed, and a run resumed mid-epoch skips the
batches it already saw. In-memory datasets are moved to the device once and augmented there; streamed
datasets are read through a ``DataLoader`` with workers. A ``random_resized_crop`` box depends on the
source image's size, so a streamed dataset that accepts ``(row, draw)`` items (``accepts_crop_draws``,
e.g. the image folder) crops and resizes the full-resolution source in the worker and reports the box;
flips always run on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DistillscopeError
from .augment import (BOX_KEYS, apply_augmentation, augment_name, draw_augmentation, draw_resized_crop, normalize, relative_box,
                      resolve_resized_crop)
from .base import ArrayDataset


@dataclass
class Batch:
    """One batch: normalised images, targets, dataset indices and the augmentation each sample drew."""

    images: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor
    aug: dict[str, torch.Tensor] = field(default_factory=dict)
    pair: Batch | None = None  # each sample's partner (e.g. same-class), when the loader pairs rows

    def __len__(self) -> int:
        return len(self.targets)


class _FixedOrder(Sampler):
    """The epoch's batches of items, each made when the ``DataLoader`` asks for it: rows, or ``(row, draw)``
    pairs where the worker crops (an epoch of ImageNet's crop draws as Python objects takes ~1.2 GB)."""

    def __init__(self, chunks: list[torch.Tensor], augs: list[dict[str, torch.Tensor]], ratio: tuple[float, float] | None):
        self.chunks, self.augs, self.ratio = chunks, augs, ratio

    def __iter__(self):
        for rows, aug in zip(self.chunks, self.augs):
            yield rows.tolist() if self.ratio is None else list(zip(rows.tolist(), _crop_draws(aug, self.ratio)))

    def __len__(self) -> int:
        return len(self.chunks)


class Loader:
    """Iterate ``epoch(e)`` for batches of ``dataset``.

    ``train=True`` shuffles and augments with ``augment`` (``pad_crop`` with ``pad``,
    ``random_resized_crop`` with ``scale``/``ratio``, or ``none``; ``True``/``False`` mean ``pad_crop``/``none``),
    each followed by a flip when ``flip``; otherwise order is fixed and images are only normalised.
    ``dataset`` is an :class:`ArrayDataset` (kept on ``device``) or a map-style dataset returning
    ``(uint8 image, target, index)`` (streamed with ``num_workers``).
    ``pair_rows(order, generator) -> rows`` (training only), when set, gives every sample a partner
    row, drawn after the epoch's order and augmentation; partners come augmented as ``batch.pair``.
    """

    def __init__(
        self,
        dataset: ArrayDataset | Dataset,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        train: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        pad: int = 4,
        flip: bool = True,
        augment: bool | str = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        num_workers: int = 0,
        pair_rows: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ):
        self.dataset, self.batch_size, self.mean, self.std = dataset, batch_size, mean, std
        self.train, self.seed, self.device = train, seed, torch.device(device)
        self.pad, self.flip, self.scale, self.ratio = pad, flip, tuple(scale), tuple(ratio)
        self.augment = augment_name(augment) if train else "none"
        self.in_memory = isinstance(dataset, ArrayDataset)
        if self.augment == "random_resized_crop" and not (self.in_memory or getattr(dataset, "accepts_crop_draws", False)):
            raise DistillscopeError(
                f"random_resized_crop needs an in-memory dataset or an image folder; {type(dataset).__name__} "
                "returns fixed-size images: use data.augment=pad_crop"
            )
        self.drop_last, self.dtype, self.channels_last, self.num_workers = drop_last, dtype, channels_last, num_workers
        self.pair_rows = pair_rows
        if self.in_memory:
            self._images = dataset.images.to(self.device)
            self._targets = dataset.targets.to(self.device)
            self._index = dataset.index.to(self.device)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def plan(self, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The epoch's row order and the random numbers of each row's augmentation (aligned with the order).

        For ``pad_crop`` these are the record itself; for ``random_resized_crop`` they are the draws
        the box is resolved from (:func:`~distillscope.data.augment.resolve_resized_crop`).
        """
        return self._plan(epoch)[:2]

    def _plan(self, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Generator | None]:
        n = len(self.dataset)
        if not self.train:
            return torch.arange(n), {}, None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        aug = self._draw_augmentation(n, gen)
        return order, aug, gen

    def _draw_augmentation(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        if self.augment == "pad_crop":
            return draw_augmentation(n, gen, self.pad, self.flip)
        if self.augment == "random_resized_crop":
            return draw_resized_crop(n, gen, self.scale, self.ratio, self.flip)
        return {}

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[Batch]:
        order, aug, gen = self._plan(epoch)
        batches = self._batches(order, aug, start_step)
        if self.pair_rows is None or gen is None:
            yield from batches
            return
        partners = self.pair_rows(order, gen)  # drawn after the anchors' plan, which stays unchanged
        for batch, pair in zip(batches, self._batches(partners, self._draw_augmentation(len(partners), gen), start_step)):
            batch.pair = pair
            yield batch

    def _batches(self, order: torch.Tensor, aug: dict[str, torch.Tensor], start_step: int) -> Iterator[Batch]:
        steps = len(self)
        chunks = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(start_step, steps)]
        augs = [{k: v[i * self.batch_size : (i + 1) * self.batch_size] for k, v in aug.items()} for i in range(start_step, steps)]
        for (images, targets, index, boxes), batch_aug in zip(self._fetch(chunks, augs), augs):
            if self.augment == "random_resized_crop":
                if boxes is None:  # in memory: resolve on the stored image size
                    h, w = images.shape[2:]
                    boxes = relative_box(resolve_resized_crop(batch_aug, h, w, self.ratio), h, w)
                    images = apply_augmentation(images, boxes)
                batch_aug = {**boxes, "flip": batch_aug["flip"]}
                images = apply_augmentation(images, {"flip": batch_aug["flip"]})
            elif batch_aug:
                images = apply_augmentation(images, batch_aug, self.pad)
            batch_aug = {k: v.to(self.device) for k, v in batch_aug.items()}
            images = normalize(images, self.mean, self.std, self.dtype, self.channels_last)
            yield Batch(images, targets, index, batch_aug)

    def _fetch(self, chunks: list[torch.Tensor], augs: list[dict[str, torch.Tensor]]):
        """``(images, targets, index, boxes)`` per chunk; ``boxes`` only where a worker cropped the source."""
        if self.in_memory:
            for rows in chunks:
                rows = rows.to(self.device)
                yield self._images[rows], self._targets[rows], self._index[rows], None
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=_FixedOrder(chunks, augs, self.ratio if self.augment == "random_resized_crop" else None),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, targets, index, *box in loader:
            images, targets, index = (t.to(self.device, non_blocking=True) for t in (images, targets, index))
            yield images, targets, index, ({k: box[0][:, i] for i, k in enumerate(BOX_KEYS)} if box else None)


def _crop_draws(aug: dict[str, torch.Tensor], ratio: tuple[float, float]) -> list[dict]:
    """Per-sample draws as plain Python values (cheap to send to loader workers)."""
    values = {k: aug[k].tolist() for k in ("area", "log_ratio", "y", "x")}
    return [{**{k: v[j] for k, v in values.items()}, "ratio": ratio} for j in range(len(values["y"]))]
