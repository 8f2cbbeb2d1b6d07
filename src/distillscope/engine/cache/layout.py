"""What a teacher cache holds and where: the views of the augmentation space, the storage format of a row,
the key that names a cache folder, and its size on disk."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from ...data import ArrayDataset, Loader, apply_augmentation, index_and_targets
from ...errors import DistillscopeError
from ...models import FeatureTaps, canonical_tap
from ...userdirs import user_cache_dir

FORMAT = 1
KEY_LABELS = {
    "teacher": "teacher (name or weights)",
    "data": "dataset (images, labels, indices or normalisation)",
    "augmentation": "augmentation space",
    "precision": "teacher precision",
    "storage": "storage format",
}


def default_cache_root() -> Path:
    """``teacher/`` under the user cache dir (:func:`distillscope.userdirs.user_cache_dir`)."""
    return user_cache_dir() / "teacher"


def augmentation_space(pad: int, flip: bool, augment: bool | str) -> dict[str, int]:
    """The pad-crop loader's recorded augmentation fields and how many values each takes (crop offsets, flip).

    Other augmentations (``random_resized_crop``) record fields that are not keyed, and the run keeps its teacher.
    """
    if augment in (False, "none"):
        return {}
    return {"dy": 2 * pad + 1, "dx": 2 * pad + 1, "flip": 2 if flip else 1}


def view_ids(aug: dict[str, torch.Tensor], space: dict[str, int], n: int, device: torch.device) -> torch.Tensor:
    """Mixed-radix view number of every sample: fields in ``space`` order, each in ``[0, size)``."""
    if aug.keys() != space.keys():
        unknown = sorted(aug.keys() - space.keys()) or sorted(space.keys() - aug.keys())
        raise DistillscopeError(
            f"teacher cache: the batch's augmentation record has fields {sorted(aug)} but the cache keys on {list(space)} "
            f"(field(s) {', '.join(unknown)} cannot be keyed); set run.teacher_cache=off for this augmentation"
        )
    view = torch.zeros(n, dtype=torch.long, device=device)
    for name, size in space.items():
        view = view * size + aug[name].long()
    return view


def render_view(images: torch.Tensor, view: int, space: dict[str, int], pad: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Apply view number ``view`` of the crop+flip space to a uint8 batch; returns the images and their record."""
    if not space:
        return images, {}
    if set(space) != {"dy", "dx", "flip"}:
        raise DistillscopeError(f"teacher cache: can render crop+flip views only, not {list(space)}; let the cache fill lazily")
    n, aug, rest = len(images), {}, view
    for name, size in reversed(space.items()):
        aug[name] = torch.full((n,), rest % size, dtype=torch.long, device=images.device)
        rest //= size
    aug["flip"] = aug["flip"].bool()
    return apply_augmentation(images, aug, pad), aug


class Storage:
    """How a row is stored: the logits in fp16 in full, or the top-k logits (fp16) and their classes (int16)
    plus one fp16 value ``rest`` shared by the other classes, chosen to keep their total softmax mass at T=1:
    rest = logsumexp(z_rest) − log(C − k). ``features`` (canonical tap -> per-image shape): tapped teacher
    features stored flattened in fp16 beside the logits."""

    def __init__(self, num_classes: int, topk: int = 0, features: dict[str, list[int]] | None = None):
        if topk < 0 or (topk and topk >= num_classes):
            raise DistillscopeError(f"run.teacher_cache_topk={topk}: must be 0 (store all) or between 1 and {num_classes - 1}")
        if num_classes > 32767 and topk:
            raise DistillscopeError("run.teacher_cache_topk: class ids above 32767 do not fit int16; use 0")
        self.num_classes, self.topk = num_classes, topk
        self.features = {tap: list(shape) for tap, shape in (features or {}).items()}
        self._feature_fields = {tap: f"feature{i}" for i, tap in enumerate(self.features)}

    @classmethod
    def of(cls, key: dict) -> "Storage":
        """The storage a cache key describes."""
        return cls(key["data"]["num_classes"], key["storage"]["topk"], key["storage"].get("features"))

    def describe(self) -> str:
        """What a row holds, e.g. ``logits + fc@input``."""
        return " + ".join(["logits", *self.features])

    def fields(self) -> dict[str, tuple[int, np.dtype]]:
        if not self.topk:
            fields = {"logits": (self.num_classes, np.float16)}
        else:
            fields = {"values": (self.topk, np.float16), "classes": (self.topk, np.int16), "rest": (1, np.float16)}
        return fields | {field: (math.prod(self.features[tap]), np.float16) for tap, field in self._feature_fields.items()}

    def encode(self, logits: torch.Tensor, features: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        logits = logits.float()
        if not self.topk:
            encoded = {"logits": logits.half()}
        else:
            values, classes = logits.topk(self.topk, dim=1)
            others = logits.scatter(1, classes, float("-inf"))
            rest = torch.logsumexp(others, dim=1, keepdim=True) - math.log(self.num_classes - self.topk)
            encoded = {"values": values.half(), "classes": classes.short(), "rest": rest.half()}
        for tap, field in self._feature_fields.items():
            encoded[field] = features[tap].float().reshape(len(logits), -1).half()
        if not all(torch.isfinite(v).all() for v in encoded.values() if v.is_floating_point()):
            raise DistillscopeError("teacher cache: teacher outputs do not fit fp16 (|value| > 65504 or non-finite); "
                                    "set run.teacher_cache=off")
        return encoded

    def decode(self, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.topk:
            return stored["logits"].float()
        full = stored["rest"].float().expand(-1, self.num_classes).clone()
        return full.scatter_(1, stored["classes"].long(), stored["values"].float())

    def decode_features(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {tap: stored[field].float().reshape(-1, *self.features[tap]) for tap, field in self._feature_fields.items()}

    def row_bytes(self) -> int:
        return sum(size * np.dtype(dtype).itemsize for size, dtype in self.fields().values())


def cache_bytes(key: dict) -> int:
    """Size on disk of the cache ``key`` describes (flags included)."""
    rows, views = key["data"]["rows"], math.prod(size for _, size in key["augmentation"])
    return rows * views * (1 + Storage.of(key).row_bytes())


# ----------------------------------------------------------------- key parts
def teacher_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def dataset_fingerprint(train, val) -> str:
    """BLAKE2b of the training set before its validation split: indices, labels and uint8 images in index order.

    For image folders (streamed), the relative file paths, their sizes and modification times stand in for
    the pixels."""
    parts = [d for d in (train, val) if d is not None]
    h = hashlib.blake2b(digest_size=32)
    if all(isinstance(d, ArrayDataset) for d in parts):
        index = torch.cat([d.index for d in parts])
        order = index.argsort()
        for tensor in (index[order], torch.cat([d.targets for d in parts])[order], torch.cat([d.images for d in parts])[order]):
            h.update(tensor.contiguous().numpy())
        return h.hexdigest()
    base = {id(d.dataset if isinstance(d, Subset) else d): (d.dataset if isinstance(d, Subset) else d) for d in parts}
    if len(base) != 1 or not hasattr(next(iter(base.values())), "paths"):
        raise DistillscopeError("teacher cache: cannot fingerprint this dataset type; set run.teacher_cache=off")
    folder = next(iter(base.values()))
    h.update(f"size={folder.size}".encode())
    for path, target in zip(folder.paths, folder.targets.tolist()):
        stat = path.stat()
        h.update(f"{path.relative_to(folder.root)}|{stat.st_size}|{stat.st_mtime_ns}|{target}\n".encode())
    return h.hexdigest()


def cache_key(teacher_name: str, teacher: torch.nn.Module, data, space: dict[str, int], precision: str, topk: int = 0) -> dict:
    """The ``key`` section of ``meta.json`` for a run on ``data`` (a ``DataBundle``) that caches the teacher's
    logits; its hash names the cache folder (``run_cache_key`` adds tapped features)."""
    rows = 1 + max(int(index_and_targets(d)[0].max()) for d in (data.train, data.val) if d is not None)
    return {
        "format": FORMAT,
        "teacher": {"name": teacher_name, "weights_sha256": teacher_fingerprint(teacher)},
        "data": {
            "fingerprint": dataset_fingerprint(data.train, data.val), "num_classes": data.num_classes, "rows": rows,
            "mean": [round(m, 8) for m in data.mean], "std": [round(s, 8) for s in data.std],
        },
        "augmentation": [[name, size] for name, size in space.items()],
        "precision": precision,
        "storage": _storage_key(Storage(data.num_classes, topk)),
    }


def _storage_key(storage: Storage) -> dict:
    key = {"topk": storage.topk, "fields": {k: [n, np.dtype(d).name] for k, (n, d) in storage.fields().items()}}
    if storage.features:  # absent for logits only, so logit caches keep their folder names
        key["features"] = storage.features
    return key


def run_cache_key(teacher_name: str, taps: FeatureTaps, data, space: dict[str, int], precision: str, topk: int = 0,
                  max_gib: float = 4.0) -> tuple[dict, float | None]:
    """The key of the cache a run reads its frozen teacher from through ``taps``: logits and the tapped features
    (canonical tap -> per-image shape), or logits only where that cache would exceed ``max_gib``. Returns the key
    and the size in GiB a cache with the features would have had when they were left out (else ``None``)."""
    key = cache_key(teacher_name, taps.model, data, space, precision, topk)
    if not taps.taps:
        return key, None
    device = next(taps.model.parameters()).device
    probe = next(Loader(data.train, 2, data.mean, data.std, device=device).epoch(0)).images
    with torch.no_grad():
        features = taps(probe)[1]
    shapes = {canonical_tap(taps.model, taps.taps[name]): list(f.shape[1:]) for name, f in features.items()}
    with_features = {**key, "storage": _storage_key(Storage(data.num_classes, topk, shapes))}
    size = cache_bytes(with_features) / 2**30
    return (with_features, None) if size <= max_gib else (key, size)


def key_hash(key: dict) -> str:
    """The folder name's hash of a cache key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
