"""One teacher cache in use: :class:`TeacherCache` opens (or creates) the cache folder of a key, fills missing
entries from the teacher during a run and reads entries back, under a file lock shared between processes."""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...data import Batch
from ...errors import DistillscopeError
from .budget import budget_gib, evict_for, hold, root_locked
from .layout import KEY_LABELS, Storage, cache_bytes, key_hash, view_ids


class CacheSpaceError(DistillscopeError):
    """A new cache would not fit on its disk."""


class TeacherCache:
    """Teacher outputs by ``(batch.index, view of batch.aug)``; see the package docstring.

    ``outputs(batch, forward)`` returns the batch's teacher logits and stored features (float32, on
    ``device``), calling ``forward(images)`` only for the entries not yet filled and storing them. On a CUDA
    device the arrays are mirrored in device memory (no host round trip once every entry the run needs is
    filled). ``rows`` are the dataset indices this run trains on (completeness is judged over them); ``names``
    maps the run's tap names to the canonical taps the cache stores (default: the canonical taps themselves).
    ``in_use``: the open ``in-use`` file whose shared lock keeps the cache from eviction (:func:`.budget.hold`).
    """

    def __init__(self, folder: Path, key: dict, device: torch.device, rows: torch.Tensor, names: dict[str, str] | None = None, in_use=None):
        self.folder, self.key, self.device = folder, key, torch.device(device)
        self._in_use = in_use if in_use is not None else hold(folder)
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
    def open(cls, location: str | Path, key: dict, device: torch.device, rows: torch.Tensor, names: dict[str, str] | None = None,
             budget: float | None = None, say: Callable[[str], None] = print) -> "TeacherCache":
        """Open (or create) the cache for ``key``: ``location`` is a cache root holding caches by key, or one
        cache folder (holding ``meta.json``), which must match ``key``. A new cache first makes room within the
        root's ``budget`` in GiB (:func:`.budget.budget_gib`: ``run.teacher_cache_budget_gib``, else the environment,
        else 8) by evicting the least recently used caches no process uses; ``say`` gets what was evicted and the
        new cache's size and folder."""
        location = Path(location).expanduser()
        given = (location / "meta.json").is_file()
        folder = location if given else location / f"{key['teacher']['name']}-{key_hash(key)}"
        for _ in range(3):  # a cache evicted by another process between our check and our hold is made again
            if not given and not (folder / "meta.json").is_file():
                cls._create(folder, key, budget_gib(budget), say)
            cls._check(folder, key)
            in_use = hold(folder)
            if in_use is not None:
                return cls(folder, key, device, rows, names, in_use)
        raise DistillscopeError(f"teacher cache '{folder}' was removed while this run opened it, three times; "
                                "is a `cache prune` running in a loop?")

    @staticmethod
    def _create(folder: Path, key: dict, budget: float = 0, say: Callable[[str], None] = print) -> None:
        """Build an empty cache next to ``folder`` (after evicting caches beyond ``budget`` GiB) and rename it into
        place; if another process won, keep theirs."""
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DistillscopeError(f"teacher cache: cannot create '{folder.parent}' ({err.strerror}); "
                                    "set run.teacher_cache to a writable folder or off") from None
        with root_locked(folder.parent):
            if not (folder / "meta.json").is_file():  # another process may have made it while we waited
                TeacherCache._create_locked(folder, key, budget, say)

    @staticmethod
    def _create_locked(folder: Path, key: dict, budget: float, say: Callable[[str], None]) -> None:
        need, free = cache_bytes(key), shutil.disk_usage(folder.parent).free
        if need > free - 2**30:  # keep a GiB for the runs themselves
            raise CacheSpaceError(f"teacher cache: {need / 2**30:.1f} GiB needed in '{folder.parent}' but {free / 2**30:.1f} GiB are free; "
                                  "free disk space, lower run.teacher_cache_max_gib, or set run.teacher_cache=off")
        evict_for(folder.parent, need, budget, say)
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
            else:
                say(f"teacher cache: created {folder} ({need / 2**20:.1f} MiB on disk, written out in full)")
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
            raise DistillscopeError(f"teacher cache '{self.folder}': {path.name} cannot be opened for writing ({err}); "
                                    "delete the folder to rebuild it") from None
        if array.shape != shape or array.dtype != dtype:
            raise DistillscopeError(f"teacher cache '{self.folder}': {path.name} is damaged (shape {array.shape}, expected {shape}); "
                                    "delete the folder to rebuild it")
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
        if self._in_use is not None:
            self._in_use.close()  # the cache may be evicted from now on
            self._in_use = None


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
