"""Built-in generated dataset: ten shape classes on textured backgrounds, with object masks.

Each image is drawn with vectorised numpy on coordinate grids:

* background: stripes (random angle, period, sharpness), a rotated checkerboard, smooth
  value noise or a linear gradient, mixing a random colour with a nearby second one;
* object: one of ``SHAPES_CLASSES`` (all of about equal area) with random centre, size (about
  30-70 % of the image side across), rotation within ±30°, slight squash and a random
  colour kept apart from both background colours, shaded by a soft gradient;
* in 20 % of images a bar in the background's look hides part of the object;
* Gaussian pixel noise of random strength (1-6 %).

Colours, textures, size and pose are drawn independently of the class, so only the
silhouette identifies it. The mask is the visible object pixels. Everything derives from
``(seed, train)``: same arguments give bit-identical tensors, and the train and test
splits use disjoint derived seeds.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DistillscopeError
from .base import ArrayDataset

SHAPES_CLASSES = ["circle", "square", "triangle", "cross", "ring", "star", "ellipse", "heart", "arrow", "crescent"]


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Equilateral triangle with circumradius 1.24, one vertex on the +u axis."""
    sector = 2 * np.pi / 3
    phi = np.mod(np.arctan2(v, u), sector) - sector / 2
    return np.hypot(u, v) * np.cos(phi) <= 0.62


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    spike = np.abs(np.mod(np.arctan2(v, u) * 5 / (2 * np.pi), 1.0) * 2 - 1)  # 1 at the five tips
    return np.hypot(u, v) <= 0.42 + 0.7 * spike


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u / 0.74, -v / 0.74
    return (x * x + y * y - 1) ** 3 <= x * x * y**3


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    shaft = (np.abs(u) <= 0.3) & (v >= -1.3) & (v <= 0.1)
    head = (v >= 0.1) & (np.abs(u) <= (1.3 - v) * 0.72)
    return shaft | head


# Silhouettes in object coordinates (unit = object radius), in SHAPES_CLASSES order,
# all with an area of about 2 (a circle of radius 0.8) so that size is no class cue.
_SILHOUETTES = [
    lambda u, v: u * u + v * v <= 0.64,
    lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.71,
    _triangle,
    lambda u, v: (np.minimum(np.abs(u), np.abs(v)) <= 0.28) & (np.maximum(np.abs(u), np.abs(v)) <= 1.03),
    lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.36),
    _star,
    lambda u, v: (u / 0.55) ** 2 + (v / 1.16) ** 2 <= 1.0,
    _heart,
    _arrow,
    lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.65) ** 2 + v * v >= 0.49),
]


def _per_sample(x: np.ndarray) -> np.ndarray:
    """Reshape a per-sample vector so it broadcasts over (n, size, size), as float32."""
    return x.astype(np.float32)[:, None, None]


def _background_field(rng: np.random.Generator, n: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A texture value in [0, 1] per pixel, (n, size, size)."""
    size = xs.shape[-1]
    kind = rng.integers(0, 4, n)
    angle = _per_sample(rng.uniform(0, np.pi, n))
    along = xs * np.cos(angle) + ys * np.sin(angle)
    across = ys * np.cos(angle) - xs * np.sin(angle)
    period = _per_sample(rng.uniform(3, 10, n))
    phase = _per_sample(rng.uniform(0, 2 * np.pi, n))
    sharp = _per_sample(rng.uniform(0.5, 3, n))
    field = np.empty((n, size, size), dtype=np.float32)
    k = kind == 0  # stripes
    field[k] = np.clip(0.5 + sharp[k] * np.sin(2 * np.pi * along[k] / period[k] + phase[k]), 0, 1)
    k = kind == 1  # rotated checkerboard
    field[k] = (np.floor(along[k] / period[k] + phase[k]) + np.floor(across[k] / period[k])) % 2
    k = kind == 2  # smooth value noise: a 6x6 random grid, bilinearly upsampled
    pos = (np.arange(size) + 0.5) / size * 5
    lo = np.minimum(pos.astype(int), 4)
    up = np.zeros((size, 6), dtype=np.float32)
    up[np.arange(size), lo] = 1 - (pos - lo)
    up[np.arange(size), lo + 1] = pos - lo
    field[k] = up @ rng.random((int(k.sum()), 6, 6), dtype=np.float32) @ up.T
    k = kind == 3  # linear gradient
    field[k] = along[k]
    for k in (kind == 2, kind == 3):  # stretch noise and gradient to the full [0, 1] range
        low, high = field[k].min(axis=(1, 2), keepdims=True), field[k].max(axis=(1, 2), keepdims=True)
        field[k] = (field[k] - low) / (high - low + 1e-6)
    return field


def _object_colours(rng: np.random.Generator, bg_a: np.ndarray, bg_b: np.ndarray) -> np.ndarray:
    """Random RGB colours at least 0.5 (Euclidean, 0..1 scale) away from both background colours."""
    colours = rng.random(bg_a.shape, dtype=np.float32)
    while True:
        gap = np.minimum(np.linalg.norm(colours - bg_a, axis=1), np.linalg.norm(colours - bg_b, axis=1))
        close = gap < 0.5
        if not close.any():
            return colours
        colours[close] = rng.random((int(close.sum()), 3), dtype=np.float32)


def make_shapes(n: int, seed: int, size: int = 32, train: bool = True, clutter: float = 1.0,
                scale: tuple[float, float] = (0.19, 0.44)) -> ArrayDataset:
    """Generate ``n`` shape images (size×size) with balanced classes and object masks.

    ``clutter`` in [0, 1] scales the nuisances: background texture contrast, the chance of an occluding
    bar and the pixel noise (1 = the full set described above, 0 = flat backgrounds, no bar, no noise).
    ``scale`` is the range of the object radius as a fraction of the image side. The random draws do not
    depend on either, so the same seed gives the same classes and poses at every setting.
    """
    if n < 1 or size < 8 or seed < 0 or not 0 <= clutter <= 1 or not 0.05 <= scale[0] <= scale[1] <= 0.5:
        raise DistillscopeError(
            f"make_shapes needs n >= 1, size >= 8, seed >= 0, 0 <= clutter <= 1 and 0.05 <= scale min <= max <= 0.5; "
            f"got n={n}, size={size}, seed={seed}, clutter={clutter}, scale={scale}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0 if train else 1]))
    labels = rng.permutation(np.arange(n) % len(SHAPES_CLASSES))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    field = _background_field(rng, n, xs, ys)
    bg_a = rng.random((n, 3), dtype=np.float32)
    bg_b = np.clip(bg_a + clutter * rng.uniform(-0.25, 0.25, (n, 3)).astype(np.float32), 0, 1)
    image = bg_a[:, :, None, None] + (bg_b - bg_a)[:, :, None, None] * field[:, None]

    radius = rng.uniform(*scale, n) * size
    cx, cy = (rng.uniform(0.8 * radius, size - 0.8 * radius) for _ in range(2))
    turn = rng.uniform(-np.pi / 6, np.pi / 6, n)
    squash = rng.uniform(0.85, 1.0, n)
    dx, dy = xs - _per_sample(cx), ys - _per_sample(cy)
    cos, sin, r = _per_sample(np.cos(turn)), _per_sample(np.sin(turn)), _per_sample(radius)
    u = (dx * cos + dy * sin) / (r * _per_sample(squash))
    v = (dy * cos - dx * sin) / r
    mask = np.zeros((n, size, size), dtype=bool)
    for label, inside in enumerate(_SILHOUETTES):
        rows = labels == label
        mask[rows] = inside(u[rows], v[rows])

    # Occluding bar through a point near the object centre, in the background's look.
    bar_angle = _per_sample(rng.uniform(0, np.pi, n))
    offset = _per_sample(rng.uniform(-0.5, 0.5, n)) * r
    half_width = _per_sample(rng.uniform(0.06, 0.15, n)) * r + 0.5
    bar = np.abs(dx * np.cos(bar_angle) + dy * np.sin(bar_angle) - offset) <= half_width
    occluded = mask & ~bar
    keep = (rng.random(n) < 0.2 * clutter) & (occluded.sum(axis=(1, 2)) >= 0.5 * mask.sum(axis=(1, 2)))
    mask[keep] = occluded[keep]

    colour = _object_colours(rng, bg_a, bg_b)
    shade = 0.8 + 0.2 * np.clip(u * _per_sample(rng.uniform(-1, 1, n)) + v * _per_sample(rng.uniform(-1, 1, n)), -1, 1)
    obj = colour[:, :, None, None] * shade[:, None]
    image = np.where(mask[:, None], obj, image)
    image += rng.standard_normal(image.shape, dtype=np.float32) * _per_sample(clutter * rng.uniform(0.01, 0.06, n))[:, None]
    pixels = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return ArrayDataset(torch.from_numpy(pixels), torch.from_numpy(labels), list(SHAPES_CLASSES), torch.from_numpy(mask))
