"""A strong, RandAugment-like augmentation of whole uint8 batches, on their device, in torch.

Per sample, ``num_ops`` operations are drawn uniformly (with replacement) from :data:`OPS` and applied in
turn, each at a strength ``s ~ U(0, magnitude)`` (geometric ops with a random sign); then a cutout square
of side ``U(0, 0.5 · magnitude) · min(H, W)`` is filled with grey 128. With ``magnitude = 1`` the ranges are
those of the FixMatch-style RandAugment that MLKD's CIFAR-100 code uses (Jin et al. 2023; 2 ops, random
magnitude, cutout up to half the image), i.e. at strength s:

- ``identity``; ``autocontrast`` and ``equalize`` (PIL's per-channel formulas; they take no strength);
- ``brightness``, ``contrast``, ``saturation``: blend with black / the mean grey level / the grey image at
  factor 1 − 0.95·s (the code's factors U(0.05, 0.95): these ops only weaken);
- ``solarize``: invert pixels ≥ 256·(1 − s); ``posterize``: keep round(8 − 4·s) bits;
- ``rotate`` ±30·s degrees, ``shear_x``/``shear_y`` ±0.3·s, ``translate_x``/``translate_y`` ±0.3·s of the
  image size, about the centre, nearest-neighbour, black outside (PIL's defaults).

Differences from the authors' PIL pipeline: no ``sharpness`` op; brightness/contrast/saturation factors
reach 1 at strength 0 (theirs stop at 0.95) and posterize keeps 4-8 bits (theirs 4-7); every op returns
integers in 0..255 like PIL's uint8 images, blends rounded to the nearest (PIL's may differ by one); the
cutout box is centred on a uniform point and clipped (theirs shifts a clipped box back to full size) and
filled with grey 128 rather than CIFAR's mean colour; and the strong view starts from the batch's own crop
and flip rather than from an independently drawn one.

The random numbers are drawn up front on the CPU (:func:`draw_strong`) from the caller's generator, so a
view is a pure function of (images, generator seed); each op is computed batch-wide and selected per
sample, so the device never waits on the host.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import DistillscopeError

OPS = (
    "identity", "autocontrast", "equalize", "brightness", "contrast", "saturation", "solarize", "posterize",
    "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
)
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def draw_strong(n: int, generator: torch.Generator, num_ops: int = 2, magnitude: float = 1.0) -> dict[str, torch.Tensor]:
    """The random numbers of :func:`strong_augment` for ``n`` samples (CPU): per round ``op`` (index into
    :data:`OPS`), ``strength`` in [0, magnitude] and ``sign`` ±1, each (num_ops, n); cutout ``side`` as a
    fraction of the image and its centre ``cy``, ``cx`` in [0, 1), each (n,)."""
    if not isinstance(num_ops, int) or isinstance(num_ops, bool) or num_ops < 0:
        raise DistillscopeError(f"strong augmentation: num_ops={num_ops!r} should be a whole number ≥ 0, e.g. 2")
    if not 0 <= magnitude <= 1:
        raise DistillscopeError(f"strong augmentation: magnitude={magnitude!r} should be in [0, 1] (1: the full ranges)")
    op = torch.randint(0, len(OPS), (num_ops, n), generator=generator)
    strength = torch.rand(num_ops, n, generator=generator) * magnitude
    sign = torch.where(torch.rand(num_ops, n, generator=generator) < 0.5, -1.0, 1.0)
    side = torch.rand(n, generator=generator) * 0.5 * magnitude
    cy, cx = torch.rand(2, n, generator=generator)
    return {"op": op, "strength": strength, "sign": sign, "side": side, "cy": cy, "cx": cx}


def strong_augment(images: torch.Tensor, draw: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply a :func:`draw_strong` record to a uint8 batch (N, C, H, W) on its device; returns uint8."""
    dev = images.device
    x = images.float()
    for op, s, sign in zip(draw["op"].to(dev), draw["strength"].to(dev), draw["sign"].to(dev)):
        x = _apply_round(x, op, s, sign)
    x = _cutout(x, draw["side"].to(dev), draw["cy"].to(dev), draw["cx"].to(dev))
    return x.to(torch.uint8)


def _apply_round(x: torch.Tensor, op: torch.Tensor, s: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """One round: every sample gets its own op (computed batch-wide and selected, so the host never waits)."""
    picked = lambda name: (op == OPS.index(name))[:, None, None, None]  # noqa: E731
    factor = (1 - 0.95 * s)[:, None, None, None]
    x = torch.where(picked("autocontrast"), _autocontrast(x), x)
    x = torch.where(picked("equalize"), _equalize(x), x)
    x = torch.where(picked("brightness"), _blend(torch.zeros_like(x), x, factor), x)
    x = torch.where(picked("contrast"), _blend(_grey(x).mean((1, 2, 3), keepdim=True).round().expand_as(x), x, factor), x)
    x = torch.where(picked("saturation"), _blend(_grey(x).expand_as(x), x, factor), x)
    x = torch.where(picked("solarize") & (x >= (256 * (1 - s))[:, None, None, None]), 255 - x, x)
    step = torch.exp2(torch.round(4 * s))[:, None, None, None]  # 2^(8 − bits)
    x = torch.where(picked("posterize"), torch.floor(x / step) * step, x)
    geometric = sum(picked(name) for name in GEOMETRIC).bool()
    return torch.where(geometric, _warp(x, op, s * sign), x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luminance, rounded as PIL's convert("L"); the image itself when it has one channel."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True).round()
    return sum(w * x[:, i : i + 1] for i, w in enumerate(LUMA)).round()


def _blend(base: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (base + factor * (x - base)).round().clamp(0, 255)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per channel, stretch [min, max] to [0, 255] (PIL: ⌊i·255/(hi − lo) − lo·255/(hi − lo)⌋); flat channels stay."""
    lo, hi = x.amin((2, 3), keepdim=True).double(), x.amax((2, 3), keepdim=True).double()
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_min(1)  # not 255 / t, which torch computes as 255 · (1 / t)
    return torch.where(hi > lo, torch.floor(x.double() * scale - lo * scale).clamp(0, 255).to(x.dtype), x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's per-channel histogram equalisation: step = ⌊(P − h[last])/255⌋ with h[last] the count of the
    brightest value present, lut[i] = ⌊(⌊step/2⌋ + Σ_{j<i} h[j]) / step⌋ (capped at 255); step 0 leaves the channel."""
    n, c, hgt, wid = x.shape
    flat = x.reshape(n * c, hgt * wid).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=x.device)
    last = (levels * (hist > 0)).amax(1, keepdim=True)
    step = (hgt * wid - hist.gather(1, last)) // 255
    before = hist.cumsum(1) - hist
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)
    lut = torch.where(step > 0, lut, levels)
    return lut.gather(1, flat).reshape(n, c, hgt, wid).to(x.dtype)


def _warp(x: torch.Tensor, op: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Rotate / shear / translate each sample by its signed ``amount`` (identity where its op is not geometric).

    The affine map sends output pixel coordinates (centred) to input ones; it is conjugated into
    ``affine_grid``'s normalised coordinates with diag(W/2, H/2).
    """
    n, _, h, w = x.shape
    zero = torch.zeros_like(amount)
    is_ = lambda name: op == OPS.index(name)  # noqa: E731
    angle = torch.where(is_("rotate"), amount * 30 * math.pi / 180, zero)
    cos, sin = torch.cos(angle), torch.sin(angle)
    shear_x = torch.where(is_("shear_x"), 0.3 * amount, zero)
    shear_y = torch.where(is_("shear_y"), 0.3 * amount, zero)
    # pixel-space matrix [[a, b], [c, d]] and shift (tx, ty), input = M · output + t; a sample has one op per round
    a, b, c, d = cos, shear_x - sin, shear_y + sin, cos
    tx = torch.where(is_("translate_x"), -0.3 * amount * w, zero)
    ty = torch.where(is_("translate_y"), -0.3 * amount * h, zero)
    theta = torch.stack([
        torch.stack([a, b * h / w, 2 * tx / w], 1),
        torch.stack([c * w / h, d, 2 * ty / h], 1),
    ], 1)
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _cutout(x: torch.Tensor, side: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Fill a square of k = round(side · min(H, W)) pixels a side, top-left ⌊(cy·H, cx·W) − k/2⌋, clipped to the
    image, with grey 128."""
    _, _, h, w = x.shape
    k = (side * min(h, w)).round()
    y0, x0 = (cy * h - k / 2).floor(), (cx * w - k / 2).floor()
    y1, x1 = y0 + k, x0 + k
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= y0[:, None, None]) & (rows < y1[:, None, None]) & (cols >= x0[:, None, None]) & (cols < x1[:, None, None])
    return torch.where(inside[:, None], torch.full_like(x, 128.0), x)
