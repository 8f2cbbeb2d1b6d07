"""The autocast precision of a run: ``auto`` picks bf16 only where it is measured to be faster.

bf16 autocast is about 2× faster than fp32 on CPUs with AVX-512 BF16/AMX, about 10× *slower* on AVX2-only
CPUs (AMD EPYC here: resnet8 60 vs 650 img/s), and slower too for small models on a launch-bound GPU. So
``auto`` means: fp32 where the hardware has no native bf16; elsewhere both are timed on the run's own
model and batch shape (a few steps on a copy of the model) and the faster wins. Measurements are cached
per machine, torch version, model and batch shape in ``precision.json`` under the user cache dir
(:func:`distillscope.userdirs.user_cache_dir`).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import atomic_write
from ..userdirs import user_cache_dir

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def choose_precision(requested: str, device: torch.device, probe: Callable[[torch.dtype | None], float] | None = None,
                     key: str = "") -> tuple[str, str]:
    """``(precision name, reason)`` for ``run.precision``; ``probe(dtype)`` returns seconds per step."""
    if requested != "auto":
        return requested, "set in the config"
    if not native_bf16(device):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"this CPU ({torch.backends.cpu.get_cpu_capability()})"
        return "fp32", f"auto: no native bf16 on {where}"
    if probe is None:
        return "bf16", "auto: native bf16 (not measured)"
    cache = _cache_file()
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        known[key] = {name: probe(AMP_DTYPES[name]) for name in ("fp32", "bf16")}
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: tmp.write_text(json.dumps(known, indent=1)))
    seconds = known[key]
    best = min(seconds, key=seconds.get)
    return best, "auto: measured " + ", ".join(f"{name} {1000 * s:.1f} ms/step" for name, s in seconds.items())


def _cache_file() -> Path:
    return user_cache_dir() / "precision.json"


def time_train_step(step: Callable[[], None], device: torch.device, warmup: int = 2, repeats: int = 3) -> float:
    """Median seconds of ``step()`` after ``warmup`` calls."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def time_models(student: nn.Module, teachers: list[nn.Module], shape: tuple[int, ...], device: torch.device,
                memory_format: torch.memory_format, amp_dtype: torch.dtype | None) -> float:
    """Seconds per forward/backward step of a copy of ``student`` (plus the teachers' forwards) on a random batch of ``shape``."""
    student = copy.deepcopy(student).train()
    images = torch.randn(*shape, device=device).to(memory_format=memory_format)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            for teacher in teachers:
                with torch.no_grad():
                    teacher(images)
            loss = student(images).float().logsumexp(1).mean()
        loss.backward()

    return time_train_step(step, device)


def saved_precision(out: Path, requested: str, device: torch.device) -> tuple[str, str]:
    """The precision the run being resumed in ``out`` started with (``auto`` may measure differently now)."""
    state = json.loads((out / "last.json").read_text())
    if "precision" not in state:  # a run saved before precisions were recorded
        return choose_precision(requested, device)
    return state["precision"], state.get("precision_reason", "restored")


def run_precision(cfg, out: Path, resume: bool, device: torch.device, student: nn.Module, teachers: list[nn.Module], train,
                  memory_format: torch.memory_format) -> tuple[str, str]:
    """A run's precision: the saved one on resume, else ``run.precision`` (``auto`` times fp32 and bf16 steps of the
    run's models at its batch shape, keyed by machine, threads, models and shape)."""
    from .device import describe_machine

    run, d = cfg.run, cfg.data
    if resume:
        return saved_precision(out, run.precision, device)
    shape = (d.batch_size, *(train.images.shape[1:] if hasattr(train, "images") else train[0][0].shape))
    models = "+".join(m.name for m in (cfg.student, cfg.teacher, *cfg.teachers) if m is not None)
    key = (f"{describe_machine(device)}|torch {torch.__version__}|{torch.get_num_threads()} threads|{models}|batch {d.batch_size}"
           f"|{shape[1:]}|cl {run.channels_last}")
    return choose_precision(run.precision, device, lambda dtype: time_models(student, teachers, shape, device, memory_format, dtype), key)
