"""Data-parallel training under ``torchrun``: one process per rank, PyTorch DDP for the student.

``torchrun --nproc-per-node=N -m distillscope train CONFIG`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:meth:`Distributed.from_env` joins the process group (NCCL on GPUs, gloo on CPUs). ``data.batch_size`` stays
the global batch: every rank takes its contiguous share of each batch of the single-process epoch plan
(:class:`ShardedLoader`), with the samples' dataset indices and augmentation records, so the gradient DDP
averages is the single-process gradient (exactly so for the loss; batch norm sees the rank's share unless
``run.sync_bn``). Rank 0 evaluates, logs and writes checkpoints; every rank resumes from them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..data import Loader
from ..errors import DistillscopeError


@dataclass
class Distributed:
    """This process's place in the job (``world == 1``: a plain single-process run; every call is a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        owns = not dist.is_initialized()
        if owns:
            if device.type == "cuda":
                torch.cuda.set_device(local_rank if device.index is None else device.index)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank, world, local_rank, owns)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """A GPU run without a device index uses ``cuda:LOCAL_RANK``."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in ``DistributedDataParallel`` (hooks registered on its modules still fire)."""
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's tensors added up (one all-reduce), keyed as given."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        flat = torch.stack([values[k].double() for k in keys])
        dist.all_reduce(flat)
        return dict(zip(keys, flat))

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set on any rank (so that all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def agree(self, value, device: torch.device):
        """Rank 0's ``value`` (any picklable object) on every rank, e.g. a choice timed on each rank."""
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0, device=device if device.type == "cuda" else None)
        return holder[0]

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Average the gradients of parameters outside DDP (method adapters, a trained teacher) over ranks."""
        if not self.enabled or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for p, piece in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = piece.view_as(p).clone()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class ShardedLoader(Loader):
    """The rank's share of every global batch of the single-process plan: rows ``[rank·b, (rank+1)·b)`` of
    each batch of ``global_batch`` (``b = global_batch / world``), with their indices and augmentation."""

    def __init__(self, dataset, global_batch: int, mean, std, *, rank: int, world: int, **kwargs):
        if global_batch % world:
            raise DistillscopeError(f"data.batch_size={global_batch} (the global batch) must be divisible by the {world} processes")
        if len(dataset) < global_batch:
            raise DistillscopeError(f"the training set ({len(dataset)} images) is smaller than one global batch ({global_batch}); "
                                    "lower data.batch_size")
        super().__init__(dataset, global_batch // world, mean, std, **{**kwargs, "drop_last": True})
        self.global_batch, self.rank, self.world = global_batch, rank, world

    def __len__(self) -> int:
        return len(self.dataset) // self.global_batch

    def _plan(self, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Generator | None]:
        order, aug, gen = super()._plan(epoch)
        share = self.batch_size
        rows = (torch.arange(len(self))[:, None] * self.global_batch + self.rank * share + torch.arange(share)[None, :]).flatten()
        return order[rows], {k: v[rows] for k, v in aug.items()}, gen


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch for CPU process groups (``nn.SyncBatchNorm`` needs a GPU).

    Per-channel Σx, Σx² and the count are summed over ranks with a differentiable all-reduce; then
    x̂ = (x − μ)/√(σ² + ε) with the biased σ² = E[x²] − μ², and the running statistics move by ``momentum``
    towards μ and the unbiased n/(n−1)·σ², as in ``nn.BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c, xf = x.shape[1], x.float()
        count = torch.full((1,), x.numel() // c, dtype=torch.float32, device=x.device)
        stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1), momentum)
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm layers computing statistics over all ranks: ``nn.SyncBatchNorm`` on GPUs, else
    :class:`AllReduceBatchNorm2d`. Parameters, buffers and state-dict keys are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced.to(device=child.weight.device if child.affine else device))
        else:
            sync_batchnorm(child, device)
    return model
