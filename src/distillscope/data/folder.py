"""Image-folder dataset: ``root/<class name>/*.png|jpg|jpeg``, any image sizes.

Classes are the sorted folder names (as torchvision's ``ImageFolder``), or the order of a list given as
``classes`` (a ``classes.txt``, :func:`read_class_list`), which must name every folder exactly once.
File names are kept in one numpy byte array, not a list of Python objects, so loader workers do not copy
an ImageNet-sized list (1.28 M ``Path`` objects take ~360 MB; the array ~65 MB, shared).

Two views of an image, both RGB uint8 ``size`` × ``size``, bilinear (Pillow, antialiased):

- the *plain view* (evaluation, ``pad_crop`` training, and what in-memory folders store): resize the
  shorter side to ``round(size / crop)``, then take the centre ``size`` × ``size`` (``crop=0.875`` is the
  ImageNet protocol, 256 -> 224; ``crop=1`` keeps the whole shorter side, and an image already
  ``size`` × ``size`` is returned untouched);
- a *random resized crop*: the item ``(i, draw)`` resolves the drawn box on the source's own size,
  crops it from the full-resolution source and resizes it to ``size`` × ``size``.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import DistillscopeError
from .augment import BOX_KEYS, relative_box, resolve_resized_crop
from .base import ArrayDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class FolderDataset(Dataset):
    """One subfolder per class (sorted names, or the order of ``classes``). Items: ``(uint8 (3, size, size), target, index)``.

    An item ``(i, draw)`` (see :func:`~distillscope.data.augment.draw_resized_crop`) returns the random
    resized crop instead, plus its box as fractions of the source ``(top, left, height, width)``.
    ``index`` is the position in the full folder, kept by :meth:`subset`.
    """

    accepts_crop_draws = True

    def __init__(self, root: str | Path, size: int = 32, crop: float = 1.0, classes: list[str] | None = None):
        self.root = Path(root)
        self.size, self.crop = int(size), float(crop)
        if self.size < 1 or not 0 < self.crop <= 1:
            raise DistillscopeError(f"image folder {self.root}: size={size} must be >= 1 and crop={crop} in (0, 1]")
        if not self.root.is_dir():
            raise DistillscopeError(f"image folder {self.root} does not exist; pass a folder with one subfolder per class")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DistillscopeError(f"image folder {self.root} has no class subfolders; put each class's images in root/<class>/")
        self.classes = found if classes is None else _listed_order(found, classes, self.root)
        names: list[str] = []
        targets: list[int] = []
        for label, name in enumerate(self.classes):
            with os.scandir(self.root / name) as entries:
                files = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
            if not files:
                raise DistillscopeError(f"class folder {self.root / name} has no .png/.jpg/.jpeg images; add some or remove it")
            names += [f"{name}/{f}" for f in files]
            targets += [label] * len(files)
        self.paths = PathList(self.root, np.array([os.fsencode(n) for n in names], dtype=bytes))
        self.targets = torch.tensor(targets, dtype=torch.int64)
        self.index = torch.arange(len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: torch.Tensor) -> "FolderDataset":
        """The same folder restricted to ``rows`` (e.g. a validation split); indices stay the folder's."""
        part = copy.copy(self)
        part.paths = PathList(self.root, self.paths.names[rows.numpy()])
        part.targets, part.index = self.targets[rows], self.index[rows]
        return part

    def _open(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DistillscopeError(f"cannot read image {path} ({exc}); replace or delete it") from None

    def plain_view(self, img: Image.Image) -> Image.Image:
        """Resize the shorter side to ``round(size / crop)``, then crop the centre ``size`` × ``size``."""
        w, h = img.size
        short = max(round(self.size / self.crop), self.size)
        new = (short, max(int(short * h / w), short)) if w <= h else (max(int(short * w / h), short), short)
        if new != img.size:
            img = img.resize(new, Image.BILINEAR)
        top, left = round((new[1] - self.size) / 2), round((new[0] - self.size) / 2)
        return img.crop((left, top, left + self.size, top + self.size))

    def __getitem__(self, item: int | tuple[int, dict]):
        i, draw = item if isinstance(item, tuple) else (item, None)
        img = self._open(i)
        if draw is None:
            return _to_tensor(self.plain_view(img)), int(self.targets[i]), int(self.index[i])
        w, h = img.size
        tensors = {k: torch.tensor([draw[k]], dtype=torch.float64) for k in ("area", "log_ratio", "y", "x")}
        box = resolve_resized_crop(tensors, h, w, draw["ratio"])
        top, left, bh, bw = (int(box[k]) for k in BOX_KEYS)
        img = img.crop((left, top, left + bw, top + bh)).resize((self.size, self.size), Image.BILINEAR)
        rel = relative_box(box, h, w)
        return _to_tensor(img), int(self.targets[i]), int(self.index[i]), torch.cat([rel[k] for k in BOX_KEYS])

    def decoded_bytes(self) -> int:
        """Memory the plain views of every image take as one uint8 tensor."""
        return len(self) * 3 * self.size * self.size

    def to_array(self, num_workers: int = 0, batch_size: int = 256, desc: str | None = None) -> ArrayDataset:
        """Decode every image's plain view once into an :class:`ArrayDataset` (progress bar on a terminal)."""
        loader = DataLoader(self, batch_size=batch_size, num_workers=num_workers)
        images, targets, index = [], [], []
        bar = tqdm(total=len(self), desc=desc or f"decoding {self.root}", unit="img", disable=None, leave=False)
        try:
            for x, y, i in loader:
                images.append(x), targets.append(y), index.append(i)
                bar.update(len(y))
        except DistillscopeError as exc:
            lines = str(exc).strip().splitlines()
            if len(lines) == 1:
                raise
            # A worker's error arrives wrapped in its traceback; keep only the original message.
            raise DistillscopeError(lines[-1].partition(": ")[2]) from None
        finally:
            bar.close()
        return ArrayDataset(torch.cat(images), torch.cat(targets), list(self.classes), index=torch.cat(index))


class PathList(Sequence):
    """The image paths of a folder: ``root / name`` for each name of a numpy byte array."""

    def __init__(self, root: Path, names: np.ndarray):
        self.root, self.names = root, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Path:
        return self.root / os.fsdecode(self.names[i])


def read_class_list(path: Path) -> list[str]:
    """Class names, one per line (blank lines ignored); a name listed twice is an error."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DistillscopeError(f"{path} lists no classes; write one class folder name per line or delete it")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DistillscopeError(f"{path} lists class '{name}' twice; each class once")
        seen.add(name)
    return names


def _listed_order(found: list[str], listed: list[str], root: Path) -> list[str]:
    """``listed`` (a classes.txt order), checked to name exactly the class folders ``found`` under ``root``."""
    listed_set, found_set = set(listed), set(found)
    unlisted = [name for name in found if name not in listed_set]
    if unlisted:
        raise DistillscopeError(f"class folder {root / unlisted[0]} is not in classes.txt ({len(unlisted)} such folder(s)); "
                                "add it or remove the folder")
    missing = [name for name in listed if name not in found_set]
    if missing:
        raise DistillscopeError(f"classes.txt lists '{missing[0]}', which has no folder in {root} ({len(missing)} such class(es)); "
                                "add the folder or remove the line")
    return list(listed)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W); transposed by numpy, single-threaded (torch's copy of one image with 2 threads costs ~20× more)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))


def default_workers(n_images: int) -> int:
    """Decode workers: none for small folders (starting processes costs more), else up to 8 cores."""
    return 0 if n_images < 1000 else min(8, os.cpu_count() or 1)
