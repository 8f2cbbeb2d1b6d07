"""Teacher-output cache: keys, storage, exactness against uncached runs, refusals, concurrent writers."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distillscope.config import load_config
from distillscope.data import load_data
from distillscope.engine import Trainer, save_checkpoint
from distillscope.engine.cache import Storage, build_cache, list_caches, precompute, render_view, view_ids
from distillscope.engine.checkpoint import load_model, prefixed
from distillscope.errors import DistillscopeError
from distillscope.models import create_model

SRC = Path(__file__).resolve().parents[1] / "src"


def _teacher_file(path: Path, seed: int) -> Path:
    """A resnet8 teacher with random weights and non-trivial BN statistics, saved as a checkpoint."""
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 2.0)
    save_checkpoint(path, prefixed("model", model.state_dict()), {"model": "resnet8", "num_classes": 10})
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    return _teacher_file(folder / "a.safetensors", 0), _teacher_file(folder / "b.safetensors", 1)


def _kd(tiny_overrides, teacher: Path, cache, *extra):
    return load_config(None, tiny_overrides + ["method.name=kd", "teacher.name=resnet8", f"teacher.checkpoint={teacher}",
                                               f"run.teacher_cache={cache}", *extra])


def _count_teacher_calls(trainer) -> list[int]:
    calls = [0]
    trainer.teacher.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def _rows(history):
    return [{k: v for k, v in row.items() if k != "img_per_s"} for row in history]


def _close(a: list[dict], b: list[dict], rel: float, abs_: float) -> None:
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for ra, rb in zip(a, b):
        for key in ra:
            assert math.isclose(ra[key], rb[key], rel_tol=rel, abs_tol=abs_), (key, ra[key], rb[key])


# ----------------------------------------------------------------- keys and storage
def test_view_ids_number_the_162_crop_flip_views_once_each():
    space = {"dy": 9, "dx": 9, "flip": 2}
    grid = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)]
    aug = {"dy": torch.tensor([g[0] for g in grid]), "dx": torch.tensor([g[1] for g in grid]),
           "flip": torch.tensor([bool(g[2]) for g in grid])}
    ids = view_ids(aug, space, len(grid), torch.device("cpu")).tolist()
    assert ids == [dy * 18 + dx * 2 + f for dy, dx, f in grid]
    assert sorted(ids) == list(range(162))


def test_unknown_augmentation_fields_are_refused():
    aug = {"dy": torch.zeros(2), "dx": torch.zeros(2), "flip": torch.zeros(2), "box": torch.zeros(2, 4)}
    with pytest.raises(DistillscopeError, match="box cannot be keyed.*teacher_cache=off"):
        view_ids(aug, {"dy": 9, "dx": 9, "flip": 2}, 2, torch.device("cpu"))


def test_rendered_views_are_the_padded_crop_and_flip():
    images = torch.randint(0, 256, (3, 3, 6, 5), dtype=torch.uint8)
    space, pad = {"dy": 5, "dx": 5, "flip": 2}, 2
    for view in (0, 7, 31, 49):
        out, aug = render_view(images, view, space, pad)
        dy, dx, flip = view // 10, (view // 2) % 5, view % 2
        padded = np.zeros((3, 3, 6 + 2 * pad, 5 + 2 * pad), dtype=np.uint8)
        padded[:, :, pad:pad + 6, pad:pad + 5] = images.numpy()
        want = padded[:, :, dy:dy + 6, dx:dx + 5]
        if flip:
            want = want[..., ::-1]
        assert np.array_equal(out.numpy(), want), view
        assert (aug["dy"].tolist(), aug["dx"].tolist(), aug["flip"].tolist()) == ([dy] * 3, [dx] * 3, [bool(flip)] * 3)


def test_full_storage_is_fp16_and_topk_keeps_the_rest_mass():
    logits = torch.randn(5, 12) * 3
    full = Storage(12)
    assert torch.equal(full.decode(full.encode(logits)), logits.half().float())
    topk = Storage(12, 3)
    decoded = topk.decode(topk.encode(logits)).numpy()
    for row, got in zip(logits.numpy(), decoded):
        order = sorted(range(12), key=lambda j: -row[j])
        top, others = order[:3], order[3:]
        assert np.allclose(got[top], row[top], rtol=1e-3, atol=1e-2)
        assert np.allclose(got[others], got[others][0])  # one shared value
        mass = sum(math.exp(row[j]) for j in others)
        assert math.isclose(9 * math.exp(got[others][0]), mass, rel_tol=5e-3)
    with pytest.raises(DistillscopeError, match="teacher_cache_topk=12"):
        Storage(12, 12)


# ----------------------------------------------------------------- runs
def test_cached_run_matches_uncached_and_a_warm_rerun_never_calls_the_teacher(tmp_path, tiny_overrides, teachers):
    plain = Trainer(_kd(tiny_overrides, teachers[0], "off"), tmp_path / "plain")
    assert plain.teacher_cache is None
    plain_summary = plain.fit()

    cold = Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "cache"), tmp_path / "cold")
    cold_calls = _count_teacher_calls(cold)
    cold.fit()
    assert cold_calls[0] > 0
    _close(_rows(cold.history), _rows(plain.history), rel=2e-3, abs_=1e-3)

    warm = Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "cache", "seed=0"), tmp_path / "warm")
    warm_calls = _count_teacher_calls(warm)
    warm_summary = warm.fit()
    assert warm_calls[0] == 0
    assert _rows(warm.history) == _rows(cold.history)
    assert warm_summary["last"]["test/top1"] == pytest.approx(plain_summary["last"]["test/top1"], abs=2.5)

    caches = list_caches(tmp_path / "cache")
    assert len(caches) == 1 and caches[0]["views"] == 162 and caches[0]["rows"] == 160 and 0 < caches[0]["filled"] < 1


def test_cached_run_resumed_mid_epoch_matches_the_uninterrupted_one(tmp_path, tiny_overrides, teachers, interrupt_at):
    cfg = _kd(tiny_overrides, teachers[0], tmp_path / "cache-a", "epochs=3")
    reference = Trainer(cfg, tmp_path / "full").fit()

    cfg = _kd(tiny_overrides, teachers[0], tmp_path / "cache-b", "epochs=3")  # a cold cache of its own
    trainer = Trainer(cfg, tmp_path / "cut")
    interrupt_at(trainer, 5)
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    _close(_rows([resumed["last"], resumed["best"]]), _rows([reference["last"], reference["best"]]), rel=1e-5, abs_=1e-6)


def test_precomputed_cache_equals_lazy_and_the_teacher_on_each_view(tmp_path, tiny_overrides, teachers, monkeypatch):
    cfg = _kd(tiny_overrides, teachers[0], tmp_path / "pre")
    data = load_data(cfg.data.spec, cfg.data.val_fraction, cfg.data.split_seed)
    [(cache, calls)] = build_cache(cfg, batch_size=64)
    assert calls == math.ceil(len(data.train) / 64) * 162 and cache.complete and cache.filled_fraction() == 1.0
    done, rendered = [], []
    monkeypatch.setattr("distillscope.engine.cache.build.render_view", lambda *args: rendered.append(args) or render_view(*args))
    teacher = load_model(teachers[0], cache.device)[0]
    assert precompute(cache, teacher, data.train, data.mean, data.std, cfg.data.pad, 64, progress=done.append) == 0  # full: no forward
    assert done == sorted(done) and done[-1] == len(data.train) * 162 and len(done) == math.ceil(len(data.train) / 64) * 162
    assert rendered == []  # a complete cache renders no view either

    lazy = Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "lazy"), tmp_path / "lazy-run")
    lazy.fit()
    filled = lazy.teacher_cache.host["flags"].bool()
    assert filled.any()
    assert torch.allclose(lazy.teacher_cache.host["logits"][filled].float(), cache.host["logits"][filled].float(), rtol=1e-3, atol=1e-3)

    # independent: the teacher on a few views cropped and flipped by hand, normalised with the data's statistics
    teacher = lazy.teacher
    for row, (dy, dx, flip) in ((0, (0, 0, 0)), (5, (8, 3, 1)), (77, (4, 4, 1))):
        image = data.train.images[row].numpy()
        padded = np.zeros((3, 24, 24), dtype=np.float32)
        padded[:, 4:20, 4:20] = image
        crop = padded[:, dy:dy + 16, dx:dx + 16]
        crop = crop[:, :, ::-1] if flip else crop
        x = (torch.from_numpy(crop.copy()) / 255 - torch.tensor(data.mean)[:, None, None]) / torch.tensor(data.std)[:, None, None]
        with torch.no_grad():
            want = teacher(x[None])[0]
        got = cache.host["logits"][int(data.train.index[row]), dy * 18 + dx * 2 + flip].float()
        assert torch.allclose(got, want, rtol=1e-2, atol=2e-3), (row, got, want)

    warm = Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "pre"), tmp_path / "on-pre")
    calls = _count_teacher_calls(warm)
    warm.fit()
    assert calls[0] == 0
    _close(_rows(warm.history), _rows(lazy.history), rel=1e-3, abs_=1e-4)


def test_topk_storage_trains_and_keeps_the_teachers_top_classes(tmp_path, tiny_overrides, teachers):
    trainer = Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "topk", "epochs=1", "run.teacher_cache_topk=3"), tmp_path / "run")
    trainer.fit()
    cache = trainer.teacher_cache
    assert set(cache.host) == {"flags", "values", "classes", "rest"}
    batch = next(trainer.train_loader.epoch(0))
    with torch.no_grad():
        want = trainer.teacher(batch.images)
    got = cache.logits(batch, lambda images: pytest.fail("epoch 0's views are all cached"))
    assert torch.equal(got.topk(3).indices, want.topk(3).indices)


# ----------------------------------------------------------------- several teachers
def _multi(tiny_overrides, teachers, method: str, cache, *extra):
    listed = ", ".join(f"{{name: resnet8, checkpoint: '{t}'}}" for t in teachers)
    return load_config(None, tiny_overrides + [f"method.name={method}", f"teachers=[{listed}]", f"run.teacher_cache={cache}", *extra])


def _count_calls_per_teacher(trainer) -> list[int]:
    calls = [0] * len(trainer.teachers)
    for i, teacher in enumerate(trainer.teachers):
        teacher.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("method", ["mtkd", "aekd"])
def test_two_teacher_run_reads_one_cache_per_teacher_and_matches_uncached(tmp_path, tiny_overrides, teachers, method):
    plain = Trainer(_multi(tiny_overrides, teachers, method, "off"), tmp_path / "plain")
    assert plain.teacher_caches == []
    plain_summary = plain.fit()

    cold = Trainer(_multi(tiny_overrides, teachers, method, tmp_path / "cache"), tmp_path / "cold")
    assert len(cold.teacher_caches) == 2 and cold.teacher_caches[0].folder != cold.teacher_caches[1].folder
    cold_calls = _count_calls_per_teacher(cold)
    cold_summary = cold.fit()
    assert min(cold_calls) > 0
    _close(_rows(cold.history), _rows(plain.history), rel=2e-3, abs_=1e-3)  # fp16 storage of the logits
    assert cold_summary["ensemble_test_top1"] == plain_summary["ensemble_test_top1"]  # evaluation runs the teachers

    warm = Trainer(_multi(tiny_overrides, teachers, method, tmp_path / "cache"), tmp_path / "warm")
    warm_calls = _count_calls_per_teacher(warm)
    warm.fit()
    assert warm_calls == [len(warm.eval_loaders["test"])] * 2  # no training step ran a teacher: only the ensemble's test accuracy
    assert _rows(warm.history) == _rows(cold.history)
    caches = list_caches(tmp_path / "cache")
    assert sorted(c["folder"] for c in caches) == sorted(str(c.folder) for c in cold.teacher_caches)


def test_cli_cache_build_from_a_multi_teacher_recipe_fills_one_cache_per_teacher(tmp_path, tiny_overrides, teachers, capsys):
    import yaml
    from distillscope.cli import main

    cfg = _multi(tiny_overrides, teachers, "mtkd", tmp_path / "root", "data.augment=false", "epochs=1")
    recipe = tmp_path / "mtkd.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"spec": cfg.data.spec, "val_fraction": cfg.data.val_fraction, "augment": False},
                                      "teachers": [{"name": "resnet8", "checkpoint": str(t)} for t in teachers],
                                      "method": {"name": "mtkd"},
                                      "run": {"device": "cpu", "precision": "fp32", "teacher_cache": str(tmp_path / "root")}}))
    assert main(["cache", "build", "--config", str(recipe)]) == 0
    assert capsys.readouterr().out.count("views filled") == 2
    assert len({c["folder"] for c in list_caches(tmp_path / "root")}) == 2

    trainer = Trainer(cfg, tmp_path / "run")
    calls = _count_calls_per_teacher(trainer)
    trainer.fit()
    assert calls == [len(trainer.eval_loaders["test"])] * 2  # training read both caches; only the ensemble's test accuracy ran the teachers
    assert main(["cache", "build", str(teachers[0])]) != 0
    assert "give --data SPEC" in capsys.readouterr().err


def test_two_teacher_cached_run_resumed_mid_epoch_matches_the_uninterrupted_one(tmp_path, tiny_overrides, teachers, interrupt_at):
    reference = Trainer(_multi(tiny_overrides, teachers, "aekd", tmp_path / "cache-a", "epochs=3"), tmp_path / "full").fit()
    cfg = _multi(tiny_overrides, teachers, "aekd", tmp_path / "cache-b", "epochs=3")  # cold caches of their own
    interrupt_at(Trainer(cfg, tmp_path / "cut"), 5)
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    _close(_rows([resumed["last"], resumed["best"]]), _rows([reference["last"], reference["best"]]), rel=1e-5, abs_=1e-6)
    assert resumed["ensemble_test_top1"] == reference["ensemble_test_top1"]


def test_multi_teacher_feature_method_caches_each_teachers_features_within_the_size_limit(tmp_path, tiny_overrides, teachers):
    cached = Trainer(_multi(tiny_overrides, teachers, "aekd_f", "auto"), tmp_path / "auto")
    assert len(cached.teacher_caches) == 2 and all(c.names == {"hint": "layer2"} for c in cached.teacher_caches)
    assert Trainer(_multi(tiny_overrides, teachers, "aekd_f", "auto", "run.teacher_cache_max_gib=0.001"),
                   tmp_path / "small").teacher_caches == []
    with pytest.raises(DistillscopeError, match="method 'aekd_f' taps teacher features that would make a [0-9.]+ GiB cache, "
                                                "above run.teacher_cache_max_gib=1e-06; raise it"):
        Trainer(_multi(tiny_overrides, teachers, "aekd_f", tmp_path / "cache", "run.teacher_cache_max_gib=0.000001"), tmp_path / "dir")
    assert len(Trainer(_multi(tiny_overrides, teachers, "mtkd", "auto"), tmp_path / "mtkd").teacher_caches) == 2


# ----------------------------------------------------------------- refusals
def test_mismatched_caches_are_refused(tmp_path, tiny_overrides, teachers):
    Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "root", "epochs=1"), tmp_path / "a").fit()
    (folder,) = [Path(c["folder"]) for c in list_caches(tmp_path / "root")]
    cases = [
        ([], teachers[1], "teacher \\(name or weights\\) differs"),
        (["data.spec=shapes?n=170&size=16&n_test=40"], teachers[0], "dataset .* differs"),
        (["data.pad=2"], teachers[0], "augmentation space differs"),
        (["run.precision=bf16"], teachers[0], "teacher precision differs"),
        (["run.teacher_cache_topk=4"], teachers[0], "storage format differs"),
    ]
    for extra, teacher, message in cases:
        with pytest.raises(DistillscopeError, match=f"teacher cache '{folder}' does not match this run: its {message}"):
            Trainer(_kd(tiny_overrides, teacher, folder, *extra), tmp_path / "never")
    assert not (tmp_path / "never").exists()
    Trainer(_kd(tiny_overrides, teachers[1], tmp_path / "root"), tmp_path / "b")  # at the root: a second cache beside it
    assert len(list_caches(tmp_path / "root")) == 2

    np.lib.format.open_memmap(folder / "flags.npy", mode="w+", dtype=np.uint8, shape=(3, 3))
    with pytest.raises(DistillscopeError, match="flags.npy is damaged"):
        Trainer(_kd(tiny_overrides, teachers[0], folder), tmp_path / "c")


@pytest.mark.parametrize("method", ["fitnet", "crd"])
def test_feature_method_reads_its_tapped_teacher_features_from_the_cache(tmp_path, tiny_overrides, teachers, method):
    run = lambda cache, *extra: _kd(tiny_overrides, teachers[0], cache, f"method.name={method}", *extra)  # noqa: E731
    plain = Trainer(run("off"), tmp_path / "plain")
    assert plain.fit()["teacher_cache"] == []
    cold = Trainer(run(tmp_path / "cache"), tmp_path / "cold")
    tap = {"fitnet": "layer2", "crd": "fc@input"}[method]
    assert cold.teacher_cache.names == {"hint" if method == "fitnet" else "f": tap}
    assert list(cold.teacher_cache.key["storage"]["features"]) == [tap] and "feature0" in cold.teacher_cache.host
    cold_calls = _count_teacher_calls(cold)
    cold.fit()
    assert cold_calls[0] > 0
    _close(_rows(cold.history), _rows(plain.history), rel=2e-3, abs_=1e-3)  # fp16 storage of logits and features

    warm = Trainer(run(tmp_path / "cache"), tmp_path / "warm")
    warm_calls = _count_teacher_calls(warm)
    summary = warm.fit()
    assert warm_calls[0] == 0
    assert _rows(warm.history) == _rows(cold.history)
    assert [(c["folder"], c["features"]) for c in summary["teacher_cache"]] == [(str(cold.teacher_cache.folder), [tap])]
    assert 0 < summary["teacher_cache"][0]["filled"] < 1

    # independent: the teacher's own module output (input, for fc@input) on epoch 0's batch, against the stored copy
    batch = next(warm.train_loader.epoch(0))
    seen = {}
    module = dict(warm.teacher.named_modules())[tap.split("@")[0]]
    hook = (module.register_forward_pre_hook(lambda m, args: seen.setdefault("f", args[0])) if tap.endswith("@input")
            else module.register_forward_hook(lambda m, args, out: seen.setdefault("f", out)))
    with torch.no_grad():
        logits = warm.teacher(batch.images)
    hook.remove()
    got_logits, got = warm.teacher_cache.outputs(batch, lambda images: pytest.fail("epoch 0's views are all cached"))
    (name,) = got
    assert got[name].shape == seen["f"].shape
    assert torch.allclose(got[name], seen["f"].float(), rtol=1e-3, atol=1e-3) and torch.allclose(got_logits, logits, rtol=1e-3, atol=1e-3)


def test_logit_caches_keep_their_keys_and_cache_build_stores_a_recipes_features(tmp_path, tiny_overrides, teachers):
    kd = Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "root", "epochs=1"), tmp_path / "kd")
    assert set(kd.teacher_cache.key["storage"]) == {"topk", "fields"} and kd.teacher_cache.names == {}  # no features: the key as before
    cfg = _kd(tiny_overrides, teachers[0], tmp_path / "root", "method.name=rkd")
    [(cache, calls)] = build_cache(cfg, batch_size=64)
    assert cache.complete and calls > 0 and cache.key["storage"]["features"] == {"fc@input": [64]}
    trainer = Trainer(cfg, tmp_path / "rkd")
    assert trainer.teacher_cache.folder == cache.folder != kd.teacher_cache.folder
    calls = _count_teacher_calls(trainer)
    trainer.fit()
    assert calls[0] == 0
    [(small, _)] = build_cache(_kd(tiny_overrides, teachers[0], tmp_path / "root", "method.name=rkd", "run.teacher_cache_max_gib=0.000001"),
                               batch_size=64)
    assert small.folder == kd.teacher_cache.folder  # features over the limit: cache build fills the logits a run would still use
    assert sorted(c["features"] for c in list_caches(tmp_path / "root")) == [[], ["fc@input"]]


def test_a_cache_that_would_not_fit_on_disk_is_refused_or_skipped(tmp_path, tiny_overrides, teachers, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(100 * 2**30, 100 * 2**30 - 2**29, 2**29))  # 0.5 GiB free
    with pytest.raises(DistillscopeError, match=r"teacher cache: 0.0 GiB needed in .* but 0.5 GiB are free; "
                                                r"free disk space, lower run.teacher_cache_max_gib"):
        Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "root"), tmp_path / "dir")
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())
    monkeypatch.setenv("DISTILLSCOPE_CACHE", str(tmp_path / "user"))
    with pytest.warns(UserWarning, match="GiB are free.*forwards the teacher every step instead"):
        trainer = Trainer(_kd(tiny_overrides, teachers[0], "auto"), tmp_path / "auto")
    assert trainer.teacher_cache is None


# ----------------------------------------------------------------- concurrent writers
WRITER = textwrap.dedent("""
    import json, sys, numpy as np, torch
    from pathlib import Path
    from distillscope.data import Batch
    from distillscope.engine.cache import Storage, TeacherCache
    folder, key, tag, out = Path(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    gen = torch.Generator().manual_seed(int(tag))
    rows, views = key["data"]["rows"], 18
    pairs = torch.randperm(rows * views, generator=gen)
    cache = TeacherCache.open(folder, key, torch.device("cpu"), torch.arange(rows))
    used = np.zeros((rows, views, 10), dtype=np.float32)
    for chunk in pairs.split(16):
        index, view = chunk // views, chunk % views
        aug = {"dy": view // 6, "dx": (view // 2) % 3, "flip": (view % 2).bool()}
        batch = Batch(torch.zeros(len(chunk), 3, 2, 2), torch.zeros(len(chunk), dtype=torch.long), index, aug)
        used[index, view] = cache.logits(batch, lambda images: (torch.full((len(images), 10), tag) + torch.arange(10.0) / 64, {})).numpy()
    np.save(out, used)
""")


def test_two_processes_share_one_cache_first_writer_wins(tmp_path):
    storage = Storage(10)
    key = {"format": 1, "teacher": {"name": "t", "weights_sha256": "0"},
           "data": {"fingerprint": "0", "num_classes": 10, "rows": 40, "mean": [], "std": []},
           "augmentation": [["dy", 3], ["dx", 3], ["flip", 2]], "precision": "fp32",
           "storage": {"topk": 0, "fields": {k: [n, np.dtype(d).name] for k, (n, d) in storage.fields().items()}}}
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "root"), json.dumps(key), str(tag),
                               str(tmp_path / f"used{tag}.npy")], env=env, stderr=subprocess.PIPE)
             for tag in (1, 2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    (folder,) = (tmp_path / "root").iterdir()
    assert not [p for p in (tmp_path / "root").iterdir() if p.name.startswith(".")]
    assert json.loads((folder / "meta.json").read_text())["key"] == key
    flags, logits = np.load(folder / "flags.npy"), np.load(folder / "logits.npy").astype(np.float32)
    assert flags.all()
    tags = logits[..., 0]
    assert set(np.unique(tags)) <= {1.0, 2.0}
    assert np.array_equal(logits, tags[..., None] + np.arange(10, dtype=np.float32) / 64)  # no row mixes two writers
    for tag in (1, 2):
        assert np.array_equal(np.load(tmp_path / f"used{tag}.npy"), logits)  # each process used what the file holds


def test_cli_cache_build_then_a_run_on_it_never_calls_the_teacher(tmp_path, tiny_overrides, teachers, capsys):
    from distillscope.cli import main

    sets = ["data.augment=false", "data.spec=shapes?n=60&size=16&n_test=20", "data.val_fraction=0.2", "run.device=cpu",
            "run.precision=fp32"]
    argv = ["cache", "build", str(teachers[0]), "--data", "shapes?n=60&size=16&n_test=20", "--dir", str(tmp_path / "root")]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "50 images x 1 views filled" in capsys.readouterr().out
    assert main(["cache", "list", str(tmp_path / "root")]) == 0
    assert "resnet8  10 classes  60 rows x 1 views  83.3% filled" in capsys.readouterr().out

    trainer = Trainer(_kd(tiny_overrides, teachers[0], tmp_path / "root", *sets, "epochs=1"), tmp_path / "run")
    calls = _count_teacher_calls(trainer)
    trainer.fit()
    assert calls[0] == 0 and trainer.teacher_cache.complete


def test_speed_bench_quick_run_writes_its_section(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed", SRC.parent / "bench" / "speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nkept\n")
    text = bench.main(["--quick", "--pairs", "resnet8:resnet8", "--data", "shapes?n=256&size=16", "--threads", "1", "--profile",
                       "--out", str(out)])
    modes = [line.split("|")[3].strip() for line in text.splitlines()
             if line.startswith("| resnet8→resnet8 | fp32 |") and line.count("|") == 9][: len(bench.MODES)]
    assert modes == bench.MODES
    assert all(float(line.split("|")[8]) >= 0 for line in text.splitlines()
               if line.startswith("| resnet8→resnet8 | fp32 | ") and line.count("|") == 9)
    targets = [line for line in text.splitlines() if line.endswith(("| met |", "| MISSED |", "| info |"))]
    assert len(targets) == 6 * len(bench.common.settings("cpu"))  # a block per precision: fp32, and bf16 where native
    assert out.read_text().startswith("# Benchmarks\n\nkept\n\n" + bench.START) and out.read_text().endswith(bench.END + "\n")


def test_cache_build_warns_when_auto_precision_is_left_untimed(tmp_path, tiny_overrides, teachers, monkeypatch):
    import distillscope.engine.precision as precision
    from distillscope.errors import DistillscopeWarning

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    with pytest.warns(DistillscopeWarning, match="pin the precision of the cache and the runs alike"):
        [(cache, _)] = build_cache(_kd(tiny_overrides, teachers[0], tmp_path / "auto", "data.augment=false", "run.precision=auto"))
    assert json.loads((cache.folder / "meta.json").read_text())["key"]["precision"] == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DistillscopeWarning)
        build_cache(_kd(tiny_overrides, teachers[0], tmp_path / "pinned", "data.augment=false"))  # fp32, pinned: no warning
