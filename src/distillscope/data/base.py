"""In-memory image datasets shared by every loader."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ArrayDataset:
    """Images held as one uint8 tensor (N, 3, H, W) with int64 targets.

    ``masks`` (bool, N×H×W) is the ground-truth object mask where the dataset has one.
    ``index`` maps each row back to its position in the original dataset, so subsets
    (e.g. a validation split) keep stable per-sample keys.
    """

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    masks: torch.Tensor | None = None
    index: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 of shape (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")
        self.targets = self.targets.long()
        if self.index is None:
            self.index = torch.arange(len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, rows: torch.Tensor) -> "ArrayDataset":
        masks = None if self.masks is None else self.masks[rows]
        return ArrayDataset(self.images[rows], self.targets[rows], self.classes, masks, self.index[rows])
