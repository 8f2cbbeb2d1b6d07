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
    in-use         flock(2) held shared by every process that has the cache open; its mtime: when a run last opened it

The arrays are numpy memmaps, written out in full when the cache is created (left sparse, they would not stay small:
one epoch of random views touches nearly every page of a row-major logits file, 144 of 154 MiB for CIFAR-10's shape,
and its scattered first writes into holes took 7x longer than into written pages). Sizes are counted as the blocks
the files occupy (``st_blocks`` × 512). Memory for all views in fp16:
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

All caches under one root share a disk budget (``run.teacher_cache_budget_gib``, else ``$DISTILLSCOPE_CACHE_BUDGET_GIB``,
else 8 GiB): a new cache first evicts the least recently used caches that no process holds open until it fits.

Modules: ``layout`` (views, storage format, key, size), ``store`` (:class:`TeacherCache`: opening, reading and
filling during runs), ``budget`` (disk usage, in-use locks, eviction, ``cache prune``), ``build`` (``distillscope
cache build`` and ``cache list``).
"""
from .budget import budget_gib, prune
from .build import build_cache, list_caches, precompute
from .layout import Storage, augmentation_space, default_cache_root, render_view, run_cache_key, view_ids
from .store import CacheSpaceError, TeacherCache

__all__ = [
    "CacheSpaceError", "Storage", "TeacherCache", "augmentation_space", "budget_gib", "build_cache", "default_cache_root", "list_caches",
    "precompute", "prune", "render_view", "run_cache_key", "view_ids",
]
