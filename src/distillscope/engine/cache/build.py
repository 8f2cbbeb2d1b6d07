"""Filling a cache in one pass before training (``distillscope cache build``) and listing the caches under a root."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...data import ArrayDataset, Batch, normalize
from ...errors import DistillscopeError, warn
from ...models import FeatureTaps
from .budget import caches_in, disk_bytes, in_use, last_used
from .layout import augmentation_space, default_cache_root, render_view, run_cache_key
from .store import TeacherCache


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


def build_cache(config, location: str | Path | None = None, batch_size: int = 256,
                progress: bool = False) -> list[tuple[TeacherCache, int]]:
    """Precompute the cache(s) a run of ``config`` would use: one per teacher (``teacher``, or each of
    ``teachers``), for its data, augmentation and precision; returns each cache with the number of teacher
    forward calls it took. ``progress``: a progress bar per teacher."""
    from tqdm.auto import tqdm

    from ...data import load_data
    from ...methods import create_method
    from ...models import create_model
    from ..checkpoint import load_model
    from ..precision import AMP_DTYPES, choose_precision
    from ..device import pick_device

    specs = [config.teacher] if config.teacher is not None else list(config.teachers)
    if not specs or not all(spec.checkpoint for spec in specs):
        raise DistillscopeError("cache build: give the teacher checkpoint (a run folder or .safetensors), or a --config whose teachers "
                                "have checkpoints")
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
            raise DistillscopeError(f"cache build: teacher {spec.checkpoint} has {state['num_classes']} classes but '{d.spec}' has "
                                    f"{data.num_classes}")
        teacher.eval().requires_grad_(False)
        with FeatureTaps(teacher, method.taps(student, teacher)[1]) as taps:  # features too large to store: the logits alone
            key = run_cache_key(state["model"], taps, data, space, precision, config.run.teacher_cache_topk,
                                config.run.teacher_cache_max_gib)[0]
        if config.run.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        cache = TeacherCache.open(location, key, device, data.train.index, budget=config.run.teacher_cache_budget_gib)
        with tqdm(total=len(data.train) * cache.views, desc=f"cache {spec.checkpoint}", unit="view",
                  disable=None if progress else True) as bar:
            calls = precompute(cache, teacher, data.train, data.mean, data.std, d.pad, batch_size, amp_dtype, config.run.channels_last,
                               lambda done: bar.update(done - bar.n))
        built.append((cache, calls))
    return built


def list_caches(root: str | Path) -> list[dict]:
    """Each cache under ``root``: folder, teacher, classes, stored feature taps, views, filled fraction, bytes on disk
    (the blocks its files occupy, not their apparent size), when a run last opened it and whether one holds it now."""
    found = []
    for folder in caches_in(Path(root).expanduser()):
        key = json.loads((folder / "meta.json").read_text())["key"]
        flags = np.load(folder / "flags.npy", mmap_mode="r")
        found.append({"folder": str(folder), "teacher": key["teacher"]["name"], "classes": key["data"]["num_classes"],
                      "features": list(key["storage"].get("features", {})),
                      "rows": flags.shape[0], "views": flags.shape[1], "filled": float(flags.mean()) if flags.size else 0.0,
                      "bytes_on_disk": disk_bytes(folder), "last_used": last_used(folder), "in_use": in_use(folder)})
    return found
