"""Image-folder dataset: ``root/<class name>/*.png|jpg|jpeg``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import DistillscopeError
from .base import ArrayDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class FolderDataset(Dataset):
    """One subfolder per class (sorted names); images become RGB, bilinear-resized to ``size``×``size``.

    Items are ``(uint8 tensor (3, size, size), target, index)``.
    """

    def __init__(self, root: str | Path, size: int = 32):
        self.root = Path(root)
        self.size = int(size)
        if not self.root.is_dir():
            raise DistillscopeError(f"image folder {self.root} does not exist; pass a folder with one subfolder per class")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise DistillscopeError(f"image folder {self.root} has no class subfolders; put each class's images in root/<class>/")
        self.paths: list[Path] = []
        targets: list[int] = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (self.root / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DistillscopeError(f"class folder {self.root / name} has no .png/.jpg/.jpeg images; add some or remove it")
            self.paths += files
            targets += [label] * len(files)
        self.targets = torch.tensor(targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DistillscopeError(f"cannot read image {path} ({exc}); replace or delete it") from None
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous(), int(self.targets[i]), i

    def to_array(self, num_workers: int = 0, batch_size: int = 256) -> ArrayDataset:
        """Load every image into memory (meant for small folders)."""
        loader = DataLoader(self, batch_size=batch_size, num_workers=num_workers)
        try:
            images, targets, index = zip(*loader)
        except DistillscopeError as exc:
            lines = str(exc).strip().splitlines()
            if len(lines) == 1:
                raise
            # A worker's error arrives wrapped in its traceback; keep only the original message.
            raise DistillscopeError(lines[-1].partition(": ")[2]) from None
        return ArrayDataset(torch.cat(images), torch.cat(targets), list(self.classes), index=torch.cat(index))
