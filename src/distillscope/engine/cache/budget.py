"""The disk budget of a cache root: its caches' real disk usage, which are in use, least-recently-used eviction
and ``distillscope cache prune``.

A process that opens a cache holds a shared ``flock`` on its ``in-use`` file until it closes the cache or exits
(sweep workers and DDP ranks share it); the file's modification time is when a run last opened the cache. A cache
is removed only under an exclusive, non-blocking lock on that file, so never while any process uses it: the
folder is first renamed out of the way (a run opening it at that moment sees it gone and makes a new one), then
deleted. Sizes are what the files occupy on disk (``st_blocks`` × 512), not their apparent length.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from ...errors import DistillscopeError

IN_USE = "in-use"
BUDGET_ENV = "DISTILLSCOPE_CACHE_BUDGET_GIB"
DEFAULT_BUDGET_GIB = 8.0


def budget_gib(configured: float | None = None) -> float:
    """The cache root's budget: ``run.teacher_cache_budget_gib`` when set, else ``$DISTILLSCOPE_CACHE_BUDGET_GIB``, else 8;
    0 turns the budget off."""
    if configured is not None:
        return float(configured)
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_GIB
    try:
        return float(text)
    except ValueError:
        raise DistillscopeError(f"{BUDGET_ENV}={text!r}: give a number of GiB, e.g. 8 (0: no budget)") from None


def size_text(n: float) -> str:
    """Bytes as ``1.23 GiB`` from a GiB up, else ``12.3 MiB``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def disk_bytes(folder: Path) -> int:
    """Bytes the files of ``folder`` occupy on disk (a sparse file counts only its written blocks)."""
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def last_used(folder: Path) -> float:
    """When a run last opened the cache (its ``in-use`` file's mtime; caches from before it: ``meta.json``'s)."""
    marker = folder / IN_USE
    return (marker if marker.is_file() else folder / "meta.json").stat().st_mtime


def caches_in(root: Path) -> list[Path]:
    """The cache folders under ``root`` (not the hidden ones being made or removed)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file())


def hold(folder: Path):
    """Mark the cache in use for as long as the returned file stays open; ``None`` when the folder was removed meanwhile."""
    try:
        handle = open(folder / IN_USE, "a+")  # noqa: SIM115 (held open for the cache's lifetime)
    except FileNotFoundError:
        return None
    fcntl.flock(handle, fcntl.LOCK_SH)  # waits while a pruner removes it
    try:
        still_there = os.fstat(handle.fileno()).st_ino == os.stat(folder / IN_USE).st_ino
    except FileNotFoundError:
        still_there = False
    if not still_there:
        handle.close()
        return None
    try:
        os.utime(folder / IN_USE)  # last used: now
    except OSError:  # another user's cache: used all the same
        pass
    return handle


def in_use(folder: Path) -> bool:
    """Whether some process holds the cache open."""
    if not (folder / IN_USE).is_file():  # every holder makes it first; not making it here keeps the cache's last use
        return False
    try:
        with open(folder / IN_USE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False
    return False


def remove(folder: Path) -> int | None:
    """Delete the cache unless a process uses it; returns the bytes freed, or ``None`` when it was in use (or gone)."""
    trash = folder.with_name(f".{folder.name}.removed-{os.getpid()}")
    try:
        with open(folder / IN_USE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            size = disk_bytes(folder)
            os.rename(folder, trash)
    except FileNotFoundError:  # removed by another process meanwhile
        return None
    shutil.rmtree(trash, ignore_errors=True)
    return size


@contextmanager
def root_locked(root: Path):
    """One process at a time decides what to evict and creates a cache under ``root`` (a lock on the folder itself)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def evict_for(root: Path, need: int, budget: float, say) -> None:
    """Remove the least-recently-used caches not in use until ``need`` more bytes fit in ``budget`` GiB under ``root``;
    ``say`` gets one line naming what was removed and the space freed. Raises :class:`CacheSpaceError` when the
    caches in use leave too little room (or the new cache alone is larger than the budget)."""
    from .store import CacheSpaceError

    if budget <= 0:
        return
    limit = budget * 2**30
    if need > limit:
        raise CacheSpaceError(f"teacher cache: a new {size_text(need)} cache is larger than the cache budget of {budget:g} GiB in "
                              f"'{root}'; raise run.teacher_cache_budget_gib (or ${BUDGET_ENV}), or set run.teacher_cache=off")
    caches = sorted(caches_in(root), key=last_used)
    used = {c: disk_bytes(c) for c in caches}
    total, removed = sum(used.values()), []
    for cache in caches:
        if total + need <= limit:
            break
        freed = remove(cache)
        if freed is not None:
            total -= used[cache]
            removed.append((cache, freed))
    if removed:
        names = ", ".join(f"{c.name} ({size_text(b)})" for c, b in removed)
        say(f"teacher cache budget {budget:g} GiB: evicted the least recently used {names}; "
            f"freed {size_text(sum(b for _, b in removed))} in {root}")
    if total + need > limit:
        busy = [c.name for c in caches if c.exists()]
        raise CacheSpaceError(
            f"teacher cache: a new {size_text(need)} cache does not fit the cache budget of {budget:g} GiB in '{root}' "
            f"({size_text(total)} held by caches in use: {', '.join(busy) or 'none'}); raise run.teacher_cache_budget_gib "
            f"(or ${BUDGET_ENV}), run `distillscope cache prune`, or set run.teacher_cache=off")


def prune(root: Path, max_gib: float | None = None, older_than_days: float | None = None, dry_run: bool = False) -> dict:
    """Remove caches last used more than ``older_than_days`` ago, then the least recently used ones until the root
    holds at most ``max_gib``; never one in use. Returns ``removed`` (folder, bytes, days since used), ``kept_in_use``
    (folders that would have gone) and ``left`` (bytes still held)."""
    now = time.time()
    caches = sorted(caches_in(root), key=last_used)
    sizes = {c: disk_bytes(c) for c in caches}
    total = sum(sizes.values())
    removed, kept = [], []
    for cache in caches:
        age = (now - last_used(cache)) / 86400
        too_old = older_than_days is not None and age > older_than_days
        too_big = max_gib is not None and total > max_gib * 2**30
        if not (too_old or too_big):
            continue
        busy = in_use(cache) if dry_run else None
        freed = None if busy else (sizes[cache] if dry_run else remove(cache))
        if freed is None:
            kept.append(cache)
            continue
        total -= sizes[cache]
        removed.append((cache, freed, age))
    return {"removed": removed, "kept_in_use": kept, "left": total}
