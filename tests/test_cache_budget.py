"""The teacher-cache root's disk budget: least-recently-used eviction that never touches a cache in use,
`cache prune` by size and by age, and the line a run prints when it creates a cache."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distillscope.cli import main
from distillscope.config import load_config
from distillscope.engine import Trainer, save_checkpoint
from distillscope.engine.cache import CacheSpaceError, Storage, TeacherCache, list_caches
from distillscope.engine.cache.budget import disk_bytes, last_used, size_text
from distillscope.engine.cache.layout import cache_bytes
from distillscope.engine.checkpoint import prefixed
from distillscope.models import create_model

SRC = Path(__file__).resolve().parents[1] / "src"
MIB = 2**20


def key(name: str, rows: int = 2900) -> dict:
    """A logits-only key of 10 classes and 18 views: 2,900 rows make a cache of about 1 MiB."""
    fields = {k: [n, np.dtype(d).name] for k, (n, d) in Storage(10).fields().items()}
    return {"format": 1, "teacher": {"name": name, "weights_sha256": "0"},
            "data": {"fingerprint": name, "num_classes": 10, "rows": rows, "mean": [], "std": []},
            "augmentation": [["dy", 3], ["dx", 3], ["flip", 2]], "precision": "fp32", "storage": {"topk": 0, "fields": fields}}


def make(root: Path, name: str, days_ago: float, keep_open: bool = False, **open_args):
    """A cache under ``root`` last used ``days_ago`` days ago; open (in use) when ``keep_open``."""
    cache = TeacherCache.open(root, key(name), torch.device("cpu"), torch.arange(4), budget=0, say=lambda line: None, **open_args)
    when = time.time() - days_ago * 86400
    os.utime(cache.folder / "in-use", (when, when))
    if not keep_open:
        cache.close()
    return cache


def names(root: Path) -> set[str]:
    return {Path(c["folder"]).name.split("-")[0] for c in list_caches(root)}


def test_a_new_cache_evicts_the_least_recently_used_cache_not_in_use(tmp_path, monkeypatch):
    root = tmp_path / "root"
    held = make(root, "a", days_ago=3, keep_open=True)  # the oldest, but a run has it open
    make(root, "b", days_ago=2)
    make(root, "c", days_ago=1)
    size = disk_bytes(held.folder)
    assert 0.9 * MIB < size < 1.2 * MIB and size >= cache_bytes(key("a"))  # written out in full: its blocks, not a sparse file
    said = []
    monkeypatch.setenv("DISTILLSCOPE_CACHE_BUDGET_GIB", str(3.5 * size / 2**30))  # room for three
    new = TeacherCache.open(root, key("d"), torch.device("cpu"), torch.arange(4), say=said.append)  # budget: the environment's
    assert names(root) == {"a", "c", "d"}
    evicted = [line for line in said if "evicted" in line]
    assert len(evicted) == 1 and "evicted the least recently used b-" in evicted[0] and f"freed {size_text(size)} in {root}" in evicted[0]
    assert said[-1] == f"teacher cache: created {new.folder} ({cache_bytes(key('d')) / MIB:.1f} MiB on disk, written out in full)"
    assert last_used(new.folder) > last_used(held.folder)

    # only caches in use are left to evict (a, d held; c free): c goes, and still no room for two more
    with pytest.raises(CacheSpaceError, match=r"does not fit the cache budget .* held by caches in use: a-\w+, d-\w+\); "
                                              r"raise run.teacher_cache_budget_gib"):
        TeacherCache.open(root, key("e", rows=2 * 2900), torch.device("cpu"), torch.arange(4), budget=3.5 * size / 2**30, say=said.append)
    assert names(root) == {"a", "d"}
    with pytest.raises(CacheSpaceError, match="larger than the cache budget"):  # never evicts for a cache that cannot fit
        TeacherCache.open(root, key("f", rows=10 * 2900), torch.device("cpu"), torch.arange(4), budget=3.5 * size / 2**30)
    assert names(root) == {"a", "d"}
    held.close()
    new.close()
    TeacherCache.open(root, key("g"), torch.device("cpu"), torch.arange(4), budget=1.5 * size / 2**30, say=said.append).close()
    assert names(root) == {"g"}  # closed caches can go


def test_a_cache_held_by_another_running_process_is_never_pruned(tmp_path, capsys):
    root = tmp_path / "root"
    make(root, "old", days_ago=30)
    held = make(root, "busy", days_ago=20)
    script = ("import sys, json, torch; from pathlib import Path; from distillscope.engine.cache import TeacherCache; "
              "folder = Path(sys.argv[1]); "
              "cache = TeacherCache(folder, json.loads((folder / 'meta.json').read_text())['key'], torch.device('cpu'), torch.arange(4)); "
              "print('open', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script, str(held.folder)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        when = time.time() - 20 * 86400  # opening marked it used now; as if that run had been going for 20 days
        os.utime(held.folder / "in-use", (when, when))
        assert main(["cache", "prune", str(root), "--older-than", "7"]) == 0
        out = capsys.readouterr().out
        assert f"kept {held.folder}: in use by a running process" in out and "removed 1 caches" in out
        assert names(root) == {"busy"}
        assert main(["cache", "list", str(root)]) == 0
        assert "(in use)" in capsys.readouterr().out
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert main(["cache", "prune", str(root), "--older-than", "7"]) == 0  # the process ended: its cache may go
    assert names(root) == set()


def test_prune_by_age_and_by_size_and_dry_run(tmp_path, capsys):
    root = tmp_path / "root"
    for name, days in (("a", 10), ("b", 5), ("c", 2), ("d", 0.5)):
        make(root, name, days)
    size = disk_bytes(next(root.glob("a-*")))
    assert main(["cache", "prune", str(root), "--older-than", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and "a-" in out and "b-" in out and "c-" not in out and names(root) == {"a", "b", "c", "d"}
    assert main(["cache", "prune", str(root), "--older-than", "4"]) == 0
    assert names(root) == {"c", "d"} and "removed 2 caches" in capsys.readouterr().out
    assert main(["cache", "prune", str(root), "--max-gib", str(1.5 * size / 2**30)]) == 0  # room for one: the least recently used goes
    assert names(root) == {"d"}
    out = capsys.readouterr().out
    assert f"removed 1 caches, {size_text(size)}; {size_text(size)} left in {root}" in out


@pytest.mark.filterwarnings("ignore:the teacher's class names differ")  # a bare checkpoint records none
def test_a_run_that_creates_a_cache_prints_its_size_and_folder(tmp_path, tiny_overrides, capsys):
    torch.manual_seed(0)
    teacher = tmp_path / "t.safetensors"
    save_checkpoint(teacher, prefixed("model", create_model("resnet8", num_classes=10).state_dict()),
                    {"model": "resnet8", "num_classes": 10})
    config = load_config(None, tiny_overrides + ["epochs=1", "method.name=kd", "teacher.name=resnet8", f"teacher.checkpoint={teacher}",
                                                  f"run.teacher_cache={tmp_path / 'root'}", "run.teacher_cache_budget_gib=1"])
    trainer = Trainer(config, tmp_path / "run")
    folder = trainer.teacher_cache.folder
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("teacher cache: created"))
    assert line == f"teacher cache: created {folder} ({cache_bytes(trainer.teacher_cache.key) / MIB:.1f} MiB on disk, written out in full)"
    assert abs(disk_bytes(folder) - cache_bytes(trainer.teacher_cache.key)) < 64 * 1024
    Trainer(config, tmp_path / "run2")
    assert "teacher cache: created" not in capsys.readouterr().out  # a second run reuses it quietly
