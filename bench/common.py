"""Shared pieces of the benchmark scripts: machine description, data spec, timing, peak memory, sections.

Scripts import it as ``common`` after putting ``bench/`` on ``sys.path``. torch is imported inside the
functions that need it, so a script's parent process can stay torch-free (``dcor_speed.py``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared/datasets/cifar10-5k/cifar-10-batches-py"
SETTINGS = {"fp32": ["run.precision=fp32", "run.channels_last=false"],
            "bf16+channels_last": ["run.precision=bf16", "run.channels_last=true"]}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> str:
    """``'<cpu model>, <n> cores'``."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def torch_threads(word: str = "threads") -> str:
    """``'torch <version>, <n> threads'`` with torch's current thread count."""
    import torch

    return f"torch {torch.__version__}, {torch.get_num_threads()} {word}"


def device_name(device) -> str:
    """``'cuda:0 (<GPU name>)'`` on a GPU, else the device as text."""
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def now() -> str:
    """The local date and time, ``YYYY-MM-DD HH:MM``."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def command(script: str, argv: list[str]) -> str:
    """The shell command that reruns ``bench/<script>`` with ``argv``."""
    return shlex.join(["python", f"bench/{script}", *argv])


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first line of the script's docstring."""
    return argparse.ArgumentParser(description=doc.splitlines()[0])


def add_run_args(p: argparse.ArgumentParser, section: str, quick: str,
                 threads: str = "torch threads (run.threads); default: torch's") -> None:
    """``--device``, ``--threads``, ``--data`` (see ``data_spec``), ``--out`` (see ``add_out_arg``) and ``--quick``
    (help: ``smoke test: <quick>``)."""
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help=threads)
    p.add_argument("--data", default=None, help=f"data spec (default: cifar10:{CIFAR} if present, else shapes?n=2048)")
    add_out_arg(p, section)
    p.add_argument("--quick", action="store_true", help=f"smoke test: {quick}")


def add_out_arg(p: argparse.ArgumentParser, section: str) -> None:
    """``--out FILE``: the Markdown file whose ``section`` is replaced."""
    p.add_argument("--out", type=Path, default=None, help=f"Markdown file whose {section} section is replaced")


def data_spec(data: str | None) -> str:
    """``data``, else the CIFAR-10 subset when present, else ``shapes?n=2048``."""
    return data or (f"cifar10:{CIFAR}" if CIFAR.is_dir() else "shapes?n=2048")


def shown_spec(spec: str) -> str:
    """``spec`` with the CIFAR-10 path relative to the repository, as written in the tables."""
    return spec.replace(str(CIFAR), os.path.relpath(CIFAR, ROOT))


def settings(device: str) -> list[str]:
    """Keys of ``SETTINGS`` to run: fp32, plus bf16 + channels_last where the hardware runs bf16 natively (elsewhere ~10x slower)."""
    from distillscope.engine.precision import native_bf16
    from distillscope.engine.device import pick_device

    return list(SETTINGS) if native_bf16(pick_device(device)) else ["fp32"]


def publish(text: str, out: Path | None, start: str, end: str) -> str:
    """Print ``text``, write it as the ``start``/``end`` section of ``out`` when given, and return it."""
    print(text, end="")
    if out:
        write_section(out, text, start, end)
    return text


def publish_block(block: str, out: str | None, start: str, end: str) -> str:
    """Print ``block`` (markers included), write it into ``out`` with ``write_block`` when given, and return it."""
    print(block)
    if out:
        write_block(Path(out), block, start, end)
    return block


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    """Wall seconds of ``fn()``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def status_kib(key: str) -> int:
    """A KiB field of /proc/self/status (``VmRSS``, ``VmHWM``, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def meminfo_gib(key: str, missing: float) -> float:
    """A field of /proc/meminfo (``MemTotal``, ``MemAvailable``) in GiB, ``missing`` when absent."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    return missing


def reset_peak(device) -> None:
    """Reset the peak memory: CUDA's allocator statistics, else the process's peak RSS (/proc/self/clear_refs)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mib(device) -> float:
    """Peak memory since ``reset_peak`` in MiB: CUDA ``max_memory_allocated``, else VmHWM (NaN if unreadable)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return status_kib("VmHWM") / 1024
    except (OSError, RuntimeError):
        return float("nan")


def subset_loader(trainer, steps: int, batch: int):
    """A copy of ``trainer.train_loader`` (same settings) over the first ``steps * batch`` training rows."""
    import torch

    from distillscope.data import Loader

    old = trainer.train_loader
    rows = trainer.data.train.subset(torch.arange(steps * batch))
    return Loader(rows, batch, old.mean, old.std, train=True, seed=old.seed, device=old.device, pad=old.pad, flip=old.flip,
                  augment=old.augment, drop_last=True, dtype=old.dtype, channels_last=old.channels_last, num_workers=old.num_workers)


def write_section(path: Path, text: str, start: str, end: str) -> None:
    """Replace the section of ``path`` between ``start`` and ``end`` by ``text`` (or append it; create the file if missing)."""
    old = path.read_text() if path.exists() else ""
    if start in old and end in old.split(start, 1)[1]:
        head, rest = old.split(start, 1)
        new = f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}"
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + f"{start}\n{text}{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def write_block(path: Path, block: str, start: str, end: str) -> None:
    """Replace the block from ``start`` to ``end`` in ``path`` by ``block`` (which holds both markers), or append it;
    a missing file starts as ``# Benchmarks``."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)
