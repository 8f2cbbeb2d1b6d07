"""Data-parallel training: sharded epoch plans, batch norm over all ranks, torchrun with 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distillscope.data import ArrayDataset, Loader
from distillscope.engine import save_checkpoint
from distillscope.engine.checkpoint import prefixed
from distillscope.engine.distributed import AllReduceBatchNorm2d, Distributed, ShardedLoader
from distillscope.models import create_model

SRC = Path(__file__).resolve().parents[1] / "src"


def test_rank_shards_put_together_are_the_single_process_batches():
    gen = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8, generator=gen), torch.arange(37) % 5, list("abcde"),
                        index=torch.arange(37) * 3)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=4, pad=2)
    single = Loader(data, 12, drop_last=True, **kw)
    shards = [ShardedLoader(data, 12, rank=r, world=3, **kw) for r in range(3)]
    assert [len(s) for s in shards] == [len(single)] * 3 == [3] * 3
    for epoch, start in ((0, 0), (5, 1)):
        parts = [list(s.epoch(epoch, start)) for s in shards]
        for step, whole in enumerate(single.epoch(epoch, start)):
            pieces = [p[step] for p in parts]
            assert all(len(p) == 4 for p in pieces)
            assert torch.equal(torch.cat([p.images for p in pieces]), whole.images)
            assert torch.equal(torch.cat([p.index for p in pieces]), whole.index)
            assert torch.equal(torch.cat([p.targets for p in pieces]), whole.targets)
            for key in whole.aug:
                assert torch.equal(torch.cat([p.aug[key] for p in pieces]), whole.aug[key])


def _bn_rank(rank: int, world: int, init: str, x: torch.Tensor, weight: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    bn = AllReduceBatchNorm2d(x.shape[1], momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(weight)
    part = x.chunk(world)[rank].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(y.numel()).view_as(y).float().sin()).sum().backward()
    torch.save({"y": y.detach(), "dx": part.grad, "dw": bn.weight.grad, "db": bn.bias.grad, "mean": bn.running_mean, "var": bn.running_var},
               f"{out}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_batch_norm_is_batch_norm_over_the_whole_batch(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x, weight = torch.randn(6, 3, 4, 5, generator=gen) * 2 + 1, torch.rand(3, generator=gen) + 0.5
    torch.multiprocessing.spawn(_bn_rank, args=(2, f"file://{tmp_path / 'pg'}", x, weight, str(tmp_path / "r")), nprocs=2)
    ranks = [torch.load(tmp_path / f"r.{r}", weights_only=True) for r in range(2)]

    ref = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        ref.weight.copy_(weight)
    whole = x.clone().requires_grad_(True)
    y = ref(whole)
    # each rank's loss weights its own rows by sin(position within the rank's part)
    w = torch.cat([torch.arange(y.numel() // 2).view(3, 3, 4, 5).float().sin()] * 2)
    (y * w).sum().backward()
    assert torch.allclose(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r["dx"] for r in ranks]), whole.grad, atol=1e-5)
    assert torch.allclose(ranks[0]["dw"] + ranks[1]["dw"], ref.weight.grad, atol=1e-4)
    assert torch.allclose(ranks[0]["db"] + ranks[1]["db"], ref.bias.grad, atol=1e-4)
    for r in ranks:
        assert torch.allclose(r["mean"], ref.running_mean, atol=1e-6) and torch.allclose(r["var"], ref.running_var, atol=1e-5)


def _agree_rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    mine = ("bf16", "auto: measured on rank 0") if rank == 0 else ("fp32", "auto: measured on rank 1")
    Path(f"{out}.{rank}").write_text(json.dumps(Distributed(rank=rank, world=world).agree(mine, torch.device("cpu"))))
    dist.destroy_process_group()


def test_ranks_agree_on_rank_0s_choice(tmp_path):
    """What each rank times for ``precision: auto`` may differ; every rank must train in rank 0's choice."""
    torch.multiprocessing.spawn(_agree_rank, args=(2, f"file://{tmp_path / 'pg'}", str(tmp_path / "r")), nprocs=2)
    assert [json.loads((tmp_path / f"r.{r}").read_text()) for r in range(2)] == [["bf16", "auto: measured on rank 0"]] * 2
    assert Distributed().agree(("fp32", "x"), torch.device("cpu")) == ("fp32", "x")  # one process: its own value


def _train(args: list[str], env: dict, nproc: int) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1
                else [sys.executable])
    done = subprocess.run([*launcher, "-m", "distillscope", "train", *args], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def test_torchrun_with_two_cpu_processes_matches_one_process(tmp_path, tiny_overrides):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_checkpoint(teacher, prefixed("model", create_model("resnet8", num_classes=10).state_dict()),
                    {"model": "resnet8", "num_classes": 10})
    overrides = tiny_overrides + ["method.name=kd", "teacher.name=resnet8", f"teacher.checkpoint={teacher}",
                                  f"run.teacher_cache={tmp_path / 'cache'}", "run.sync_bn=true", "run.log_every=2"]
    args = [a for o in overrides for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    _train(args + ["--out", str(tmp_path / "one")], env, 1)
    _train(args + ["--out", str(tmp_path / "two")], env, 2)

    one, two = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two"))
    for key, value in one["last"].items():
        if key != "img_per_s":
            assert math.isclose(two["last"][key], value, rel_tol=1e-5, abs_tol=1e-6), (key, two["last"][key], value)
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.suffix == ".json") == ["best.json", "last.json", "summary.json"]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # both ranks used one shared cache


@pytest.mark.slow
def test_torchrun_run_interrupted_and_resumed_matches_the_uninterrupted_one(tmp_path, tiny_overrides):
    import signal
    import time

    overrides = tiny_overrides + ["epochs=4", "data.spec=shapes?n=640&size=16&n_test=40", "run.sync_bn=true", "run.log_every=2"]
    args = [a for o in overrides for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    _train(args + ["--out", str(tmp_path / "full")], env, 2)

    cut = tmp_path / "cut"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "distillscope", "train"]
    proc = subprocess.Popen([*launcher, *args, "--out", str(cut)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (cut / "last.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # torchrun passes it on to both ranks
    _, err = proc.communicate(timeout=300)
    assert b"--resume" in err, err.decode()[-3000:]
    _train(["--resume", "--out", str(cut)], env, 2)

    full, resumed = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("full", "cut"))
    drop = lambda row: {k: v for k, v in row.items() if k != "img_per_s"}  # noqa: E731
    assert drop(resumed["last"]) == drop(full["last"]) and drop(resumed["best"]) == drop(full["best"])
