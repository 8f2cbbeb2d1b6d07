"""Exact teacher-output cache: teacher logits (and small tapped features) per (dataset index, augmentation view), on disk.

A frozen teacher in eval mode maps one augmented view of one image to fixed logits, and the loader records
which view every sample drew (``batch.aug``: crop offset ``dy``, ``dx`` and ``flip``). So the logits can be
stored once and read back in every later epoch, run, seed and method. With CIFAR's pad-4 crop and flip an
image has (2·4+1)²·2 = 162 views; view id = mixed-radix number of the recorded fields
(``((dy · 9) + dx) · 2 + flip``).

Layout of one cache (a folder named ``<teacher>-<key>`` under a cache root)::

    meta.json      what the cache is for (its ``key`` section is hashed into the folder name)
    flags.npy      uint8 (rows, views): 1 where the entry is filled
    logits.npy     fp16 (rows, views, classes)             -- or, with top-k storage:
    values.npy, classes.npy, rest.npy   fp16 (rows, views, k), int16 (rows, views, k), fp16 (rows, views, 1)
    feature0.npy, ...  fp16 (rows, views, values): tapped teacher features, flattened, in the order of the key's
                   ``storage.features`` (canonical tap -> per-image shape); only when the run's method taps them
    lock           flock(2) target: readers share it, writers hold it alone

The arrays are numpy memmaps, written out in full when the cache is created. Memory for all views in fp16:
rows × views × classes × 2 bytes -- CIFAR-10 50,000 × 162 × 10 × 2 B = 162 MB, CIFAR-100 1.62 GB
(top-k with k=10: 50,000 × 162 × 42 B = 340 MB). A method that taps teacher features (CRD, RKD, PKT, CC on the
embedding) gets them from the cache too when the whole cache fits ``run.teacher_cache_max_gib`` (CIFAR-100 with a
128-d embedding: 50,000 × 162 × 228 × 2 B = 3.4 GiB); larger features (stage maps) keep the teacher running.

The key covers the teacher (name and a hash of its weights and buffers), the dataset (a hash of the uint8
images, labels and indices of the training set before the validation split, and the normalisation), the
augmentation space, the teacher's autocast precision and the storage format (with the stored taps and their
shapes). A cache folder whose
``meta.json`` disagrees is refused. New caches are created in a temporary folder and renamed into place
(an existing cache is never overwritten); entries are written under an exclusive lock, only where still
empty (first writer wins), so several processes (sweep workers, DDP ranks) may share one cache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Subset

from ..data import ArrayDataset, Batch, Loader, apply_augmentation, index_and_targets, normalize
from ..errors import DistillscopeError, warn
from ..models import FeatureTaps, canonical_tap
from ..userdirs import user_cache_dir

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
            raise DistillscopeError("teacher cache: teacher outputs do not fit fp16 (|value| > 65504 or non-finite); set run.teacher_cache=off")
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


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------- the cache
class CacheSpaceError(DistillscopeError):
    """A new cache would not fit on its disk."""


class TeacherCache:
    """Teacher outputs by ``(batch.index, view of batch.aug)``; see the module docstring.

    ``outputs(batch, forward)`` returns the batch's teacher logits and stored features (float32, on
    ``device``), calling ``forward(images)`` only for the entries not yet filled and storing them. On a CUDA
    device the arrays are mirrored in device memory (no host round trip once every entry the run needs is
    filled). ``rows`` are the dataset indices this run trains on (completeness is judged over them); ``names``
    maps the run's tap names to the canonical taps the cache stores (default: the canonical taps themselves).
    """

    def __init__(self, folder: Path, key: dict, device: torch.device, rows: torch.Tensor, names: dict[str, str] | None = None):
        self.folder, self.key, self.device = folder, key, torch.device(device)
        self.space = dict((name, size) for name, size in key["augmentation"])
        self.views = math.prod(self.space.values())
        self.storage = Storage.of(key)
        self.names = names if names is not None else {tap: tap for tap in self.storage.features}
        self.rows = rows.cpu().long()
        self._lock_file = open(folder / "lock", "a+")
        self._arrays = {name: self._open_array(name) for name in ("flags", *self.storage.fields())}
        self.host = {name: torch.from_numpy(array) for name, array in self._arrays.items()}
        self.table = self.host if self.device.type == "cpu" else {k: v.to(self.device) for k, v in self.host.items()}
        self.teacher_calls = 0  # forward() calls made by this object (0 on a warm cache)
        self._looked_up = 0
        self.complete = False
        self.refresh()

    # opening
    @classmethod
    def open(cls, location: str | Path, key: dict, device: torch.device, rows: torch.Tensor, names: dict[str, str] | None = None) -> "TeacherCache":
        """Open (or create) the cache for ``key``: ``location`` is a cache root holding caches by key, or one
        cache folder (holding ``meta.json``), which must match ``key``."""
        location = Path(location).expanduser()
        if (location / "meta.json").is_file():
            folder = location
        else:
            folder = location / f"{key['teacher']['name']}-{_key_hash(key)}"
            if not (folder / "meta.json").is_file():
                cls._create(folder, key)
        cls._check(folder, key)
        return cls(folder, key, device, rows, names)

    @staticmethod
    def _create(folder: Path, key: dict) -> None:
        """Build an empty cache next to ``folder`` and rename it into place; if another process won, keep theirs."""
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DistillscopeError(f"teacher cache: cannot create '{folder.parent}' ({err.strerror}); set run.teacher_cache to a writable folder or off") from None
        need, free = cache_bytes(key), shutil.disk_usage(folder.parent).free
        if need > free - 2**30:  # keep a GiB for the runs themselves
            raise CacheSpaceError(f"teacher cache: {need / 2**30:.1f} GiB needed in '{folder.parent}' but {free / 2**30:.1f} GiB are free; "
                                  "free disk space, lower run.teacher_cache_max_gib, or set run.teacher_cache=off")
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            rows, views = key["data"]["rows"], math.prod(size for _, size in key["augmentation"])
            _zero_array(tmp / "flags.npy", np.uint8, (rows, views))
            for name, (size, dtype) in key["storage"]["fields"].items():
                _zero_array(tmp / f"{name}.npy", np.dtype(dtype), (rows, views, size))
            (tmp / "lock").touch()
            (tmp / "meta.json").write_text(json.dumps({"key": key}, indent=2, sort_keys=True))
            try:
                os.rename(tmp, folder)  # fails if folder exists and is not empty: never overwrite a cache
            except OSError:
                if not (folder / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _check(folder: Path, key: dict) -> None:
        try:
            saved = json.loads((folder / "meta.json").read_text())["key"]
        except (OSError, ValueError, KeyError):
            raise DistillscopeError(f"teacher cache '{folder}': meta.json is unreadable; delete the folder to rebuild it") from None
        if saved == key:
            return
        part = next((p for p in KEY_LABELS if saved.get(p) != key.get(p)), "format")
        detail = f" (cache: {_short(saved.get(part))}; this run: {_short(key.get(part))})" if part != "format" else ""
        raise DistillscopeError(
            f"teacher cache '{folder}' does not match this run: its {KEY_LABELS.get(part, 'format version')} differs{detail}; "
            "point run.teacher_cache at a cache root (a folder of caches), delete this cache, or set run.teacher_cache=off"
        )

    def _open_array(self, name: str) -> np.memmap:
        path = self.folder / f"{name}.npy"
        rows, views = self.key["data"]["rows"], self.views
        size, dtype = (None, np.uint8) if name == "flags" else self.storage.fields()[name]
        shape = (rows, views) if size is None else (rows, views, size)
        try:
            array = np.load(path, mmap_mode="r+")
        except (OSError, ValueError) as err:
            raise DistillscopeError(f"teacher cache '{self.folder}': {path.name} cannot be opened for writing ({err}); delete the folder to rebuild it") from None
        if array.shape != shape or array.dtype != dtype:
            raise DistillscopeError(f"teacher cache '{self.folder}': {path.name} is damaged (shape {array.shape}, expected {shape}); delete the folder to rebuild it")
        return array

    @contextmanager
    def _locked(self, mode: int):
        fcntl.flock(self._lock_file, mode)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    # use
    def refresh(self) -> None:
        """Re-read which entries other processes filled; once all of ``rows`` × views are, reads skip every check."""
        with self._locked(fcntl.LOCK_SH):
            complete = bool(self.host["flags"][self.rows].all())
            if complete and self.table is not self.host:
                for name, array in self.host.items():
                    self.table[name].copy_(array)
        self.complete = complete

    def fill(self, batch: Batch, forward: Callable) -> torch.Tensor:
        """Make sure the batch's entries are filled; returns view ids. ``forward`` runs on the missing images only
        and returns ``(logits, {tap name: feature})`` as :class:`FeatureTaps` does."""
        view = view_ids(batch.aug, self.space, len(batch), batch.index.device)
        if self.complete:
            return view
        with self._locked(fcntl.LOCK_SH):
            missing = self.table["flags"][batch.index, view] == 0
        if missing.any():
            self.teacher_calls += 1
            logits, features = forward(batch.images[missing])
            stored = {tap: features[name] for name, tap in self.names.items()}
            self._store(batch.index[missing], view[missing], self.storage.encode(logits, stored))
        self._looked_up += len(batch)
        if self._looked_up >= len(self.rows):
            self._looked_up = 0
            self.refresh()
        return view

    def outputs(self, batch: Batch, forward: Callable) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's teacher logits and features (by the run's tap names) as float32, filled first where missing."""
        view = self.fill(batch, forward)
        stored = {name: self.table[name][batch.index, view] for name in self.storage.fields()}
        features = self.storage.decode_features(stored)
        return self.storage.decode(stored), {name: features[tap] for name, tap in self.names.items()}

    def logits(self, batch: Batch, forward: Callable) -> torch.Tensor:
        """The batch's teacher logits as float32 (filled first where missing)."""
        return self.outputs(batch, forward)[0]

    def _store(self, index: torch.Tensor, view: torch.Tensor, encoded: dict[str, torch.Tensor]) -> None:
        """Write entries still empty in the file (first writer wins), then mirror the file's rows to the device."""
        index_cpu, view_cpu = index.cpu(), view.cpu()
        with self._locked(fcntl.LOCK_EX):
            new = self.host["flags"][index_cpu, view_cpu] == 0
            for name, value in encoded.items():
                self.host[name][index_cpu[new], view_cpu[new]] = value.cpu()[new]
            self.host["flags"][index_cpu[new], view_cpu[new]] = 1
            if self.table is not self.host:
                for name, array in self.host.items():
                    self.table[name][index, view] = array[index_cpu, view_cpu].to(self.device)

    def filled_fraction(self) -> float:
        return float(self.host["flags"][self.rows].float().mean())

    def close(self) -> None:
        for array in self._arrays.values():
            array.flush()
        self._lock_file.close()


def _zero_array(path: Path, dtype, shape: tuple[int, ...]) -> None:
    """An .npy file of zeros, written out: a first write into a file hole costs ~1 ms (ext4 allocates a block
    per page fault), into a written page a few µs, and cold training steps write rows all over the file."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    offset, nbytes = array.offset, array.nbytes
    del array
    zeros = bytes(min(nbytes, 1 << 24))
    with open(path, "r+b") as fh:
        fh.seek(offset)
        for start in range(0, nbytes, len(zeros) or 1):
            fh.write(zeros[: min(len(zeros), nbytes - start)])


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def precompute(cache: TeacherCache, teacher: torch.nn.Module, dataset: ArrayDataset, mean, std, pad: int,
               batch_size: int = 256, amp_dtype: torch.dtype | None = None, channels_last: bool = False, progress=None) -> int:
    """Fill every view of every sample of ``dataset`` in one pass (skipping filled entries); returns the
    number of teacher forward calls. Views are rendered exactly as the loader renders them. ``progress`` is
    called with the number of (image, view) entries done so far."""
    device = cache.device
    teacher.eval()

    def forward(images):
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits, features = taps(images)
        return logits, {name: features[tap] for name, tap in cache.names.items()}

    calls_before = cache.teacher_calls
    with FeatureTaps(teacher, list(cache.names.values())) as taps:
        for start in range(0, len(dataset), batch_size):
            rows = slice(start, start + batch_size)
            filled = cache.host["flags"][dataset.index[rows].cpu()].bool().all(0)  # views already filled are not rendered
            images, targets, index = (t[rows].to(device) for t in (dataset.images, dataset.targets, dataset.index))
            for view in range(cache.views):
                if not filled[view]:
                    viewed, aug = render_view(images, view, cache.space, pad)
                    cache.fill(Batch(normalize(viewed, mean, std, channels_last=channels_last), targets, index, aug), forward)
                if progress is not None:
                    progress(start * cache.views + (view + 1) * len(images))
    cache.refresh()
    return cache.teacher_calls - calls_before


def build_cache(config, location: str | Path | None = None, batch_size: int = 256, progress: bool = False) -> list[tuple[TeacherCache, int]]:
    """Precompute the cache(s) a run of ``config`` would use: one per teacher (``teacher``, or each of
    ``teachers``), for its data, augmentation and precision; returns each cache with the number of teacher
    forward calls it took. ``progress``: a progress bar per teacher."""
    from tqdm.auto import tqdm

    from ..data import load_data
    from ..methods import create_method
    from ..models import create_model
    from .checkpoint import load_model
    from .precision import AMP_DTYPES, choose_precision
    from .trainer import pick_device

    specs = [config.teacher] if config.teacher is not None else list(config.teachers)
    if not specs or not all(spec.checkpoint for spec in specs):
        raise DistillscopeError("cache build: give the teacher checkpoint (a run folder or .safetensors), or a --config whose teachers have checkpoints")
    device = pick_device(config.run.device)
    precision = choose_precision(config.run.precision, device)[0]
    if config.run.precision == "auto" and precision == "bf16":  # unmeasured here, while auto runs time both
        warn("cache build: run.precision=auto gives a bf16 cache here without timing; runs with auto time fp32 against bf16 and "
             "read this cache only if they pick bf16: pin the precision of the cache and the runs alike (--set run.precision=bf16 or fp32)")
    amp_dtype = AMP_DTYPES[precision]
    d = config.data
    data = load_data(d.spec, d.val_fraction, d.split_seed)
    if not isinstance(data.train, ArrayDataset):
        raise DistillscopeError(f"cache build: '{d.spec}' is streamed from disk; its cache fills while training (run.teacher_cache=auto)")
    space = augmentation_space(d.pad, d.flip, d.augment)
    if location is None:
        location = default_cache_root() if config.run.teacher_cache in ("auto", "off") else config.run.teacher_cache
    method = create_method(config.method["name"], **{k: v for k, v in config.method.items() if k != "name"})
    student = create_model(config.student.name, num_classes=data.num_classes)
    built = []
    for spec in specs:
        teacher, state = load_model(spec.checkpoint, device)
        if state["num_classes"] != data.num_classes:
            raise DistillscopeError(f"cache build: teacher {spec.checkpoint} has {state['num_classes']} classes but '{d.spec}' has {data.num_classes}")
        teacher.eval().requires_grad_(False)
        with FeatureTaps(teacher, method.taps(student, teacher)[1]) as taps:  # features too large to store: the logits alone
            key = run_cache_key(state["model"], taps, data, space, precision, config.run.teacher_cache_topk, config.run.teacher_cache_max_gib)[0]
        if config.run.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        cache = TeacherCache.open(location, key, device, data.train.index)
        with tqdm(total=len(data.train) * cache.views, desc=f"cache {spec.checkpoint}", unit="view", disable=None if progress else True) as bar:
            calls = precompute(cache, teacher, data.train, data.mean, data.std, d.pad, batch_size, amp_dtype, config.run.channels_last,
                               lambda done: bar.update(done - bar.n))
        built.append((cache, calls))
    return built


def list_caches(root: str | Path) -> list[dict]:
    """Each cache under ``root``: folder, teacher, classes, stored feature taps, views, filled fraction and bytes on disk."""
    found = []
    for meta in sorted(Path(root).expanduser().glob("*/meta.json")):
        key = json.loads(meta.read_text())["key"]
        flags = np.load(meta.parent / "flags.npy", mmap_mode="r")
        used = sum(p.stat().st_blocks * 512 for p in meta.parent.iterdir() if p.is_file())
        found.append({"folder": str(meta.parent), "teacher": key["teacher"]["name"], "classes": key["data"]["num_classes"],
                      "features": list(key["storage"].get("features", {})),
                      "rows": flags.shape[0], "views": flags.shape[1], "filled": float(flags.mean()) if flags.size else 0.0, "bytes_on_disk": used})
    return found
