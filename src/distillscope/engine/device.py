"""Where a run computes and how it is seeded: device choice, a description of the machine, RNG seeds, stop signals."""
from __future__ import annotations

import hashlib
import os
import platform
import random
import signal
import threading
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import DistillscopeError


def pick_device(name: str) -> torch.device:
    """``run.device``: ``auto`` (cuda when this torch sees a GPU, else cpu) or a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DistillscopeError(f"run.device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillscopeError("run.device asks for cuda but this torch sees no GPU; use run.device=cpu")
    return device


def describe_machine(device: torch.device) -> str:
    """A short description of the hardware that ran: GPU name, else the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores ({torch.backends.cpu.get_cpu_capability()})"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; ``deterministic`` also asks torch (and cuBLAS, cuDNN) for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def view_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of a method's extra view at ``step`` of ``epoch`` (independent streams per key)."""
    key = hashlib.sha256(f"extra-view/{seed}/{epoch}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


@contextmanager
def on_signals(handler):
    """While inside, SIGINT and SIGTERM call ``handler(signum, frame)``; the previous handlers come back on leaving.
    Outside the main thread signals cannot be caught, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals(stop: threading.Event):
    """While inside, SIGINT/SIGTERM set ``stop`` (the run checkpoints at its next chance); a second signal stops at once."""
    def request_stop(signum, frame):
        if stop.is_set():
            signal.default_int_handler(signum, frame)
        stop.set()

    return on_signals(request_stop)
