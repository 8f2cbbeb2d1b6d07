"""Batched augmentation on the device, with a record of what each sample drew.

Random crop (zero padding ``pad``) and horizontal flip are drawn per sample and applied to a whole
uint8 batch at once by index arithmetic. The record (``dy``, ``dx``, ``flip``) lets later code key on
the exact view a sample was shown (teacher-output cache) or replay it (:func:`apply_augmentation`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_augmentation(n: int, generator: torch.Generator, pad: int = 4, flip: bool = True) -> dict[str, torch.Tensor]:
    """Draw crop offsets in ``[0, 2*pad]`` and flip flags for ``n`` samples (on the CPU)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return {"dy": offsets[0], "dx": offsets[1], "flip": flips}


def apply_augmentation(images: torch.Tensor, aug: dict[str, torch.Tensor], pad: int = 4) -> torch.Tensor:
    """Crop each image of ``images`` (N, C, H, W) at its recorded offset after zero padding, then flip."""
    n, c, h, w = images.shape
    dev = images.device
    dy, dx, flip = (aug[k].to(dev) for k in ("dy", "dx", "flip"))
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        images = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (N, C, H, W) in 0..255 -> normalised floats of ``dtype``."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    out = ((images.float() - mean_t) / std_t).to(dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
