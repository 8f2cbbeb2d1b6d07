"""How well a saliency map sits on the object, given a ground-truth object mask (e.g. the ``shapes`` data).

* Energy inside the mask (the energy-based pointing game of Score-CAM, Wang et al. 2020, Sec. 5.2):
  ``Σ_{p ∈ mask} m_p / Σ_p m_p`` per image, for a non-negative map ``m``. A uniform map scores the mask's
  area fraction, reported beside it as the chance level.
* Pointing game (Zhang et al. 2016, Sec. 5.1): a hit when the map's maximum (first arg-max) lies in the
  mask, or within ``tolerance`` pixels (Euclidean) of it.

Images whose map is all zero (or constant, for pointing) have no answer: they are NaN per image and
left out of the means, and their count is reported.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import DistillscopeError


def _check(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise DistillscopeError(f"localisation: maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must both be (B, H, W) of one "
                                "size; upsample the maps first")
    if (maps < 0).any():
        raise DistillscopeError("localisation: maps must be non-negative (ReLU'd or min-max normalised CAMs)")
    return maps.double(), masks.to(maps.device).bool()


def mask_energy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, the fraction of the map's total inside the mask (NaN for an all-zero map)."""
    maps, masks = _check(maps, masks)
    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.full_like(total, math.nan))


def _dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    r = int(math.floor(radius))
    if r < 1:
        return masks
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).to(torch.float32)
    grown = F.conv2d(masks[:, None].float(), disk[None, None].to(masks.device), padding=r)
    return grown[:, 0] > 0


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Per image, 1.0 when the arg-max of the map is in the mask (grown by ``tolerance`` px), 0.0 if not, NaN for a constant map."""
    maps, masks = _check(maps, masks)
    flat = maps.flatten(1)
    peak = flat.argmax(dim=1)
    hit = _dilate(masks, tolerance).flatten(1).gather(1, peak[:, None]).squeeze(1).double()
    constant = flat.max(1).values == flat.min(1).values
    return torch.where(constant, torch.full_like(hit, math.nan), hit)


def localisation_scores(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 0.0) -> dict[str, float]:
    """Means over images: ``energy``, ``pointing``, the chance level ``mask_area``, ``count`` and ``undefined`` (maps left out)."""
    energy, hits = mask_energy(maps, masks), pointing_hits(maps, masks, tolerance)
    area = masks.flatten(1).float().mean(1)
    return {
        "energy": float(energy.nanmean()),
        "pointing": float(hits.nanmean()),
        "mask_area": float(area.mean()),
        "count": len(maps),
        "undefined": int(hits.isnan().sum()),
    }
