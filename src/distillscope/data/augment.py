"""Training augmentations drawn up front, applied to whole uint8 batches, recorded per sample.

Two crops, each followed by an optional horizontal flip:

- ``pad_crop`` (the CIFAR recipe): zero-pad by ``pad`` and crop back to the image size at offset
  ``(dy, dx)`` in ``[0, 2*pad]``. Record: ``dy``, ``dx``, ``flip``.
- ``random_resized_crop`` (the ImageNet recipe, Szegedy et al. 2015, "Going deeper with convolutions",
  §6): a box covering a fraction ``s ~ U(scale)`` of the image area with aspect ratio ``r`` log-uniform in
  ``ratio`` (w = sqrt(s·A·r), h = sqrt(s·A/r), rounded), placed uniformly; the first of ``attempts`` draws
  that fits the image is used, else a centre crop of the whole image with its aspect ratio clamped to
  ``ratio``. The box is resized to the output size (bilinear). Record: ``top``, ``left``, ``height``,
  ``width`` as fractions of the source image's height/width, and ``flip``.

The random numbers are drawn before any image is seen (:func:`draw_augmentation`,
:func:`draw_resized_crop`); the box itself depends on the source's size, so it is resolved from those
numbers where the image is (:func:`resolve_resized_crop`), identically on the device and in a loader worker.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import DistillscopeError

AUGMENTS = ("pad_crop", "random_resized_crop", "none")
BOX_KEYS = ("top", "left", "height", "width")


def augment_name(augment: bool | str) -> str:
    """``True`` -> ``pad_crop``, ``False`` -> ``none`` (old configs); names pass through, checked.

    ``none`` turns flips off too.
    """
    if augment is True or augment is False:
        return "pad_crop" if augment else "none"
    if augment not in AUGMENTS:
        raise DistillscopeError(f"augment {augment!r} is not one of {', '.join(AUGMENTS)} (or true/false)")
    return augment


def draw_augmentation(n: int, generator: torch.Generator, pad: int = 4, flip: bool = True) -> dict[str, torch.Tensor]:
    """Draw ``pad_crop`` offsets in ``[0, 2*pad]`` and flip flags for ``n`` samples (on the CPU)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    return {"dy": offsets[0], "dx": offsets[1], "flip": _draw_flips(n, generator, flip)}


def _draw_flips(n: int, generator: torch.Generator, flip: bool) -> torch.Tensor:
    return torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)


def draw_resized_crop(
    n: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    attempts: int = 10,
) -> dict[str, torch.Tensor]:
    """The random numbers of ``random_resized_crop`` for ``n`` samples (on the CPU).

    ``area`` and ``log_ratio`` are (n, attempts); ``y``, ``x`` in [0, 1) place the box; ``flip`` is bool.
    """
    area = torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    place = torch.rand(2, n, generator=generator)
    return {"area": area, "log_ratio": log_ratio, "y": place[0], "x": place[1], "flip": _draw_flips(n, generator, flip)}


def resolve_resized_crop(draw: dict[str, torch.Tensor], height, width, ratio: tuple[float, float]) -> dict[str, torch.Tensor]:
    """Pixel boxes ``top, left, height, width`` (int64, per sample) for images of ``height`` × ``width``.

    ``height``/``width`` are ints or per-sample tensors. Computed in float64 on the CPU, so a worker
    resolving one sample and the device path resolving a batch agree exactly.
    """
    area_frac, log_ratio = draw["area"].double().cpu(), draw["log_ratio"].double().cpu()
    n = len(area_frac)
    H = torch.as_tensor(height, dtype=torch.float64).expand(n)
    W = torch.as_tensor(width, dtype=torch.float64).expand(n)
    target = area_frac * (H * W)[:, None]
    aspect = log_ratio.exp()
    w = (target * aspect).sqrt().round()
    h = (target / aspect).sqrt().round()
    fits = (w > 0) & (h > 0) & (w <= W[:, None]) & (h <= H[:, None])
    first = fits.long().argmax(1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = (draw["y"].double().cpu() * (H - h + 1)).floor()
    left = (draw["x"].double().cpu() * (W - w + 1)).floor()
    # fallback: the whole image, its aspect ratio clamped to ``ratio``, centred
    shape = W / H
    fw = torch.where(shape > ratio[1], (H * ratio[1]).round(), W)
    fh = torch.where(shape < ratio[0], (W / ratio[0]).round(), H)
    ok = fits.any(1)
    box = {
        "top": torch.where(ok, top, ((H - fh) / 2).floor()),
        "left": torch.where(ok, left, ((W - fw) / 2).floor()),
        "height": torch.where(ok, h, fh),
        "width": torch.where(ok, w, fw),
    }
    return {k: v.long() for k, v in box.items()}


def relative_box(box: dict[str, torch.Tensor], height, width) -> dict[str, torch.Tensor]:
    """Pixel box -> fractions of the image (float32), the form kept in ``batch.aug``."""
    H, W = (torch.as_tensor(v, dtype=torch.float64) for v in (height, width))
    return {k: (box[k] / (H if k in ("top", "height") else W)).float() for k in BOX_KEYS}


def pixel_box(rel: dict[str, torch.Tensor], height, width) -> dict[str, torch.Tensor]:
    """Fractions of the image -> the pixel box they were made from (exact round trip)."""
    H, W = (torch.as_tensor(v, dtype=torch.float64) for v in (height, width))
    return {k: (rel[k].double().cpu() * (H if k in ("top", "height") else W)).round().long() for k in BOX_KEYS}


def apply_augmentation(images: torch.Tensor, aug: dict[str, torch.Tensor], pad: int = 4) -> torch.Tensor:
    """Apply a record to a uint8 batch (N, C, H, W): its crop (``dy``/``dx`` or a relative box), then ``flip``."""
    if "dy" in aug:
        images = _pad_crop(images, aug["dy"], aug["dx"], pad)
    if "top" in aug:
        images = _resized_crop(images, pixel_box(aug, images.shape[2], images.shape[3]))
    if "flip" in aug:
        images = torch.where(aug["flip"].to(images.device)[:, None, None, None], images.flip(3), images)
    return images


def _pad_crop(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    if not pad:
        return images
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = (dy.to(dev)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    return padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]


def _resized_crop(images: torch.Tensor, box: dict[str, torch.Tensor]) -> torch.Tensor:
    """Crop each image to its pixel box and resize it back to (H, W), bilinear, in one ``grid_sample``.

    Crops are never larger than the image, so this only enlarges: it equals ``F.interpolate(crop,
    (H, W), mode='bilinear', align_corners=False)`` per sample (source coordinate (i + 0.5)·h/H − 0.5,
    clamped to the crop).
    """
    n, _, H, W = images.shape
    dev = images.device

    def coords(start, length, out):  # (n, out) source pixel coordinates, clamped inside the crop
        start, length = start.to(dev, torch.float32)[:, None], length.to(dev, torch.float32)[:, None]
        src = start + (torch.arange(out, device=dev, dtype=torch.float32) + 0.5) * length / out - 0.5
        return torch.minimum(torch.maximum(src, start), start + length - 1)

    ys = coords(box["top"], box["height"], H) * 2 / max(H - 1, 1) - 1
    xs = coords(box["left"], box["width"], W) * 2 / max(W - 1, 1) - 1
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (N, C, H, W) in 0..255 -> normalised floats of ``dtype``."""
    mean_t, std_t = _pixel_scale(mean, std, images.device)
    out = ((images.float() - mean_t) / std_t).to(dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def denormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The uint8 (N, C, H, W) batch that :func:`normalize` made ``images`` from (exact for float32 images)."""
    mean_t, std_t = _pixel_scale(mean, std, images.device)
    return (images.float() * std_t + mean_t).round_().clamp_(0, 255).to(torch.uint8)


def _pixel_scale(mean: tuple[float, ...], std: tuple[float, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as (1, C, 1, 1) tensors on the 0..255 pixel scale."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255, torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)
