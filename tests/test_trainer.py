import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from distillscope.config import load_config
from distillscope.engine import NonFiniteLoss, Trainer, load_checkpoint, load_model, save_checkpoint
from distillscope.errors import DistillscopeError


def _comparable(history):
    return [{k: v for k, v in row.items() if k != "img_per_s"} for row in history]


@pytest.fixture
def teacher_dir(tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("teacher") / "run"
    Trainer(load_config(None, tiny_overrides + ["student.name=resnet14", "epochs=1"]), out).fit()
    return out


def test_run_writes_logs_checkpoints_and_summary(tmp_path, tiny_overrides):
    summary = Trainer(load_config(None, tiny_overrides), tmp_path / "run").fit()
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "metrics.jsonl", "last.safetensors", "last.json", "best.safetensors", "summary.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train/ce", "train/top1", "train/top5", "val/top1", "val/top5", "test/top1", "test/nll", "lr", "img_per_s"):
        assert key in rows[0] and math.isfinite(rows[0][key]), key
    assert (run / "metrics.csv").read_text().count("\n") == 3
    assert summary["last"]["epoch"] == 2
    assert summary["best"]["val/top1"] == max(r["val/top1"] for r in rows)
    model, state = load_model(run)
    assert state["metrics"]["epoch"] == summary["best"]["epoch"] and state["num_classes"] == 10


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, tiny_overrides, interrupt_at):
    cfg = load_config(None, tiny_overrides + ["epochs=3"])
    reference = Trainer(cfg, tmp_path / "full").fit()

    trainer = Trainer(cfg, tmp_path / "cut")
    assert "--resume" in str(interrupt_at(trainer, 5))  # in the middle of epoch 2 (4 steps per epoch)
    _, state = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)

    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    assert _comparable([resumed["last"]]) == _comparable([reference["last"]])
    full_hist = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut_hist = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert _comparable(cut_hist) == _comparable(full_hist)


def test_summary_counts_the_wall_time_of_every_sitting(tmp_path, tiny_overrides, interrupt_at, monkeypatch):
    """Each epoch adds its training span(s) and its evaluation span: with a clock that moves one second per
    reading, an uninterrupted 3-epoch run takes 3 x (1 + 1) s; one cut in epoch 2 adds that epoch's second
    training span. A run resumed from a checkpoint that predates the count reports ``None``."""
    import distillscope.engine.trainer as trainer_module

    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(trainer_module, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(clock))}))
    cfg = load_config(None, tiny_overrides + ["epochs=3"])
    assert Trainer(cfg, tmp_path / "full").fit()["seconds"] == 6.0

    interrupt_at(Trainer(cfg, tmp_path / "cut"), 5)  # in the middle of epoch 2
    tensors, state = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    assert (state["seconds"], state["train_seconds"]) == (2.0, 1.0)
    save_checkpoint(tmp_path / "old" / "last.safetensors", tensors, {k: v for k, v in state.items() if k != "seconds"})
    (tmp_path / "old" / "config.yaml").write_text((tmp_path / "cut" / "config.yaml").read_text())
    assert Trainer(cfg, tmp_path / "cut", resume=True).fit()["seconds"] == 7.0
    assert Trainer(cfg, tmp_path / "old", resume=True).fit()["seconds"] is None
    assert json.loads((tmp_path / "old" / "summary.json").read_text())["seconds"] is None


def test_sigint_checkpoints_and_resume_gives_identical_metrics(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["epochs=4", "data.spec=shapes?n=640&size=16&n_test=40"]
    args = [sys.executable, "-m", "distillscope.cli", "train"] + [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(args + ["--out", str(cut)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (cut / "last.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"--resume" in err
    done = subprocess.run([sys.executable, "-m", "distillscope.cli", "train", "--resume", "--out", str(cut)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    resumed = json.loads((cut / "summary.json").read_text())
    assert _comparable([resumed["last"], resumed["best"]]) == _comparable([full["last"], full["best"]])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    trainer = Trainer(load_config(None, tiny_overrides + ["epochs=3", "run.log_every=1"]), tmp_path / "run")
    original = trainer.method.forward

    def poisoned(student, teacher, batch, epoch):
        losses = original(student, teacher, batch, epoch)
        if epoch == 1:
            losses["ce"] = losses["ce"] * float("nan")
        return losses

    monkeypatch.setattr(trainer.method, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match="ce became non-finite in epoch 2"):
        trainer.fit()
    tensors, state = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_kd_keeps_the_teacher_frozen(tmp_path, tiny_overrides, teacher_dir):
    cfg = load_config(None, tiny_overrides + ["epochs=1", "method.name=kd", "teacher.name=resnet14", f"teacher.checkpoint={teacher_dir}"])
    trainer = Trainer(cfg, tmp_path / "kd")
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    summary = trainer.fit()
    assert not trainer.teacher.training
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items())
    teacher_params = {id(p) for p in trainer.teacher.parameters()}
    assert not any(id(p) in teacher_params for group in trainer.optimizer.param_groups for p in group["params"])
    assert "train/kd" in summary["last"] and summary["last"]["train/kd"] > 0


def test_fitnet_trains_its_own_regressor(tmp_path, tiny_overrides, teacher_dir):
    cfg = load_config(None, tiny_overrides + ["epochs=1", "method.name=fitnet", "teacher.name=resnet14",
                                              f"teacher.checkpoint={teacher_dir}"])
    trainer = Trainer(cfg, tmp_path / "fitnet")
    before = [p.clone() for p in trainer.method.parameters()]
    assert before, "the regressor should own parameters"
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in trainer.method.parameters())
    summary = trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.method.parameters()))
    assert summary["last"]["train/hint"] > 0
    tensors, _ = load_checkpoint(tmp_path / "fitnet" / "last.safetensors")
    assert any(k.startswith("method.regressor") for k in tensors)


def test_teacher_must_match_its_declared_model(tmp_path, tiny_overrides, teacher_dir):
    cfg = load_config(None, tiny_overrides + ["method.name=kd", "teacher.name=resnet20", f"teacher.checkpoint={teacher_dir}"])
    with pytest.raises(DistillscopeError, match="holds a 'resnet14', not a 'resnet20'"):
        Trainer(cfg, tmp_path / "kd")


def test_existing_runs_are_never_overwritten(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["epochs=1"])
    Trainer(cfg, tmp_path / "run").fit()
    saved = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(DistillscopeError, match="already holds a run; pass --resume"):
        Trainer(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == saved
    with pytest.raises(DistillscopeError, match="cannot resume"):
        Trainer(cfg, tmp_path / "other", resume=True)
    changed = load_config(None, tiny_overrides + ["epochs=1", "optim.lr=0.2"])
    with pytest.raises(DistillscopeError, match="config differs.*optim"):
        Trainer(changed, tmp_path / "run", resume=True)


def test_bf16_autocast_and_channels_last_train(tmp_path, tiny_overrides):
    summary = Trainer(load_config(None, tiny_overrides + ["epochs=1", "run.precision=bf16", "run.channels_last=true",
                                                          "optim.clip_grad_norm=5"]), tmp_path / "r").fit()
    assert math.isfinite(summary["last"]["train/loss"])


def test_damaged_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DistillscopeError, match="not a readable safetensors"):
        load_checkpoint(bad)


def test_a_method_may_train_the_teacher_too(tmp_path, tiny_overrides, teacher_dir, monkeypatch):
    from distillscope.methods.kd import KD

    monkeypatch.setattr(KD, "freeze_teacher", False)
    cfg = load_config(None, tiny_overrides + ["epochs=1", "method.name=kd", "teacher.name=resnet14", f"teacher.checkpoint={teacher_dir}"])
    trainer = Trainer(cfg, tmp_path / "online")
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    trainer.fit()
    assert any(not torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items())
    tensors, _ = load_checkpoint(tmp_path / "online" / "last.safetensors")
    assert any(k.startswith("teacher.") for k in tensors)


def test_trains_on_an_image_folder_streamed_by_workers(tmp_path, tiny_overrides):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("test", 4)):
        for c, name in enumerate(("cat", "dog")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(20, 24, 3, generator=gen) * 128 + 127 * c).byte().numpy()
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    spec = f"folder:{tmp_path / 'data'}?size=16&memory=0"
    cfg = load_config(None, tiny_overrides + ["epochs=1", f"data.spec={spec}", "data.num_workers=1", "data.val_fraction=0.25",
                                              "data.batch_size=8"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.data.classes == ["cat", "dog"] and len(trainer.data.val) == 6 and len(trainer.data.test) == 8
    summary = trainer.fit()
    assert summary["last"]["epoch"] == 1 and 0 <= summary["last"]["test/top1"] <= 100


def test_methods_see_the_training_index_space_and_labels(tmp_path, tiny_overrides, monkeypatch):
    from distillscope.methods.ce import CrossEntropy

    seen = {}
    monkeypatch.setattr(CrossEntropy, "build", lambda self, s, t, info: seen.update(info=info))
    trainer = Trainer(load_config(None, tiny_overrides), tmp_path / "run")
    info = seen["info"]
    assert info.index_space == 160 and len(info.index) == len(trainer.data.train) == 130 and info.num_classes == 10
    assert torch.equal(info.targets, trainer.data.train.targets) and info.steps_per_epoch == len(trainer.train_loader)
    assert set(info.index.tolist()).isdisjoint(trainer.data.val.index.tolist())


def test_a_run_that_fails_at_setup_leaves_nothing_behind(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["method.name=kd", "teacher.name=resnet14", f"teacher.checkpoint={tmp_path / 'missing'}"])
    with pytest.raises(DistillscopeError, match="does not exist"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_before_the_first_checkpoint_starts_over_from_the_saved_config(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["epochs=1"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: run\n")
    with pytest.raises(DistillscopeError, match="pass --resume"):
        Trainer(cfg, tmp_path / "run")
    assert Trainer(cfg, tmp_path / "run", resume=True).fit()["last"]["epoch"] == 1


def test_deterministic_mode_repeats_a_run_and_is_switched_off_again(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["epochs=1", "run.deterministic=true"])
    first, second = (Trainer(cfg, tmp_path / name).fit()["last"] for name in ("a", "b"))
    assert _comparable([first]) == _comparable([second])
    assert torch.are_deterministic_algorithms_enabled()
    Trainer(load_config(None, tiny_overrides + ["epochs=1"]), tmp_path / "c")
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_teacher_from_other_data_gives_a_warning(tmp_path, tiny_overrides, teacher_dir):
    from distillscope.errors import DistillscopeWarning

    kd = tiny_overrides + ["epochs=1", "method.name=kd", "teacher.name=resnet14", f"teacher.checkpoint={teacher_dir}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DistillscopeWarning)
        Trainer(load_config(None, kd), tmp_path / "same")  # same data: silent
    with pytest.warns(DistillscopeWarning, match="teacher was trained on 'shapes.n=160.*but this run uses 'shapes.n=200"):
        Trainer(load_config(None, kd + ["data.spec=shapes?n=200&size=16&n_test=40"]), tmp_path / "other")


def test_train_from_python_returns_the_summary(tmp_path, tiny_overrides):
    import distillscope

    overrides = dict(o.split("=", 1) for o in tiny_overrides)
    overrides.update({"epochs": 1, "optim.lr": 0.05, "data.spec": "shapes?n=160&size=16&n_test=40"})
    summary = distillscope.train(None, out=tmp_path / "r", overrides=overrides)
    assert summary["last"]["epoch"] == 1 and (tmp_path / "r" / "summary.json").is_file()
    again = distillscope.train(out=tmp_path / "r", resume=True)
    assert again["last"] == summary["last"]
    assert distillscope.Trainer is Trainer and distillscope.load_config is load_config
