"""Whole-step CUDA graphs (``run.cuda_graph``): forward, losses, backward and optimiser update replayed as one graph.

Small-batch recipes are launch-bound on a large GPU (hundreds of small kernels per step, each launched from
Python). A CUDA graph records the step's kernels once and replays them with one launch. The step is captured
after a few eager warm-up steps on a side stream (they create the optimiser's momentum buffers and cuBLAS/cuDNN
workspaces), into static input buffers every later batch is copied into; it is captured again when the epoch
changes (methods see the epoch as a Python number), in the same memory pool.

What the step must allow, set up by the Trainer: a CUDA device and one process, fp32 or bf16 (fp16's gradient
scaler reads the device), SGD fused with a tensor learning rate updated in place, autocast without its weight
cache, a method that is a function of tensors and the epoch (no host synchronisation, no Python state changed
per step) and, with a teacher cache, every entry filled (until then steps run eagerly). A batch of another
size (a final partial batch) runs eagerly too.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..data import Batch
from ..errors import DistillscopeError


def refuse_graph(name: str, method, device: torch.device, processes: int, fp16: bool) -> None:
    """One line saying why ``run.cuda_graph=true`` cannot replay this run's step, if it cannot."""
    why = (
        f"method '{name}', which draws a new extra view on the host every step" if method.needs_extra_view
        else f"method '{name}', which draws partner samples on the host every epoch" if method.needs_pairs
        else f"run.device={device}" if device.type != "cuda"
        else f"{processes} processes" if processes > 1
        else "run.precision=fp16 (its gradient scaler reads the device every step)" if fp16
        else None
    )
    if why:
        raise DistillscopeError(f"run.cuda_graph=true needs one CUDA process in fp32 or bf16, not {why}; set run.cuda_graph=false")


class GraphedStep:
    """Call like the step it wraps: ``(batch, epoch) -> outputs``; outputs of replayed steps are static
    tensors, overwritten by the next replay."""

    def __init__(self, step: Callable, device: torch.device, ready: Callable[[], bool] = lambda: True, warmup: int = 3):
        self.step, self.device, self.ready, self.warmup = step, device, ready, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch | None = None
        self.outputs = None
        self.epoch: int | None = None
        self.warm_steps = 0

    def __call__(self, batch: Batch, epoch: int):
        same_shape = self.static is None or (batch.images.shape == self.static.images.shape and batch.aug.keys() == self.static.aug.keys())
        if self.warm_steps < self.warmup or not same_shape or not self.ready():
            self.warm_steps += same_shape and self.ready()
            return self._eager(batch, epoch)
        self._load(batch)
        if self.graph is None or epoch != self.epoch:
            self._capture(epoch)
        self.graph.replay()
        return self.outputs

    def _eager(self, batch: Batch, epoch: int):
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            outputs = self.step(batch, epoch)
        main.wait_stream(side)
        return outputs

    def _load(self, batch: Batch) -> None:
        if self.static is None:
            self.static = Batch(batch.images.clone(), batch.targets.clone(), batch.index.clone(),
                                {k: v.clone() for k, v in batch.aug.items()})
            return
        for dst, src in ((self.static.images, batch.images), (self.static.targets, batch.targets), (self.static.index, batch.index)):
            dst.copy_(src, non_blocking=True)
        for key, value in batch.aug.items():
            self.static.aug[key].copy_(value, non_blocking=True)

    def _capture(self, epoch: int) -> None:
        # The previous graph keeps its memory pool alive until the new graph has been captured into it: releasing
        # it first frees the pool under the capture (a CUDACachingAllocator assertion on re-capture).
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph, pool=self.graph.pool() if self.graph is not None else None):
            self.outputs = self.step(self.static, epoch)
        self.graph, self.epoch = graph, epoch
