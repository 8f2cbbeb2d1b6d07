"""Your own models: torchvision/timm by name (tiny stand-ins here), register_model, --import, weights files."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import distillscope
from distillscope.cli import main
from distillscope.config import load_config
from distillscope.engine import Trainer, load_model, load_weights, save_checkpoint
from distillscope.errors import DistillscopeError
from distillscope.models import FeatureTaps, create_model
from distillscope.models.registry import MODELS


def _torchvision():
    try:
        import torchvision

        return torchvision
    except Exception:  # PyPI's torchvision fails to load on CPU-only torch builds
        return None


class TinyNet(nn.Module):
    """A stand-in for a torchvision/timm classifier: ``layer1`` then a pooled ``fc`` head."""

    def __init__(self, num_classes: int = 1000, width: int = 8):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layer1(x)).flatten(1))


@pytest.fixture
def fake_packages(monkeypatch):
    """Tiny ``torchvision.models`` and ``timm`` modules in ``sys.modules``; records how they were called."""
    calls = []
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda: ["tinynet", "tinynet_wide"]
    models.get_model = lambda name, **kw: (calls.append(("torchvision", name, kw))
                                           or TinyNet(kw["num_classes"], 8 if name == "tinynet" else 16))
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    timm = types.ModuleType("timm")
    timm.list_models = lambda: ["tiny_vit"]
    timm.create_model = lambda name, **kw: calls.append(("timm", name, kw)) or TinyNet(kw["num_classes"])
    for name, module in (("torchvision", torchvision), ("torchvision.models", models), ("timm", timm)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_torchvision_and_timm_names_build_with_num_classes_and_tap_by_path(fake_packages):
    model = create_model("torchvision:tinynet", num_classes=7)
    assert fake_packages[-1] == ("torchvision", "tinynet", {"weights": None, "num_classes": 7})
    assert model.name == "torchvision:tinynet" and model.fc.out_features == 7
    logits, feats = FeatureTaps(model, {"l1": "layer1", "pooled": "fc@input"})(torch.randn(2, 3, 8, 8))
    assert feats["l1"].shape == (2, 8, 8, 8) and torch.allclose(model.fc(feats["pooled"]), logits)
    model = create_model("timm:tiny_vit", num_classes=3)
    assert fake_packages[-1] == ("timm", "tiny_vit", {"pretrained": False, "num_classes": 3}) and model.fc.out_features == 3
    assert load_config(None, ["student.name=timm:tiny_vit"]).student.name == "timm:tiny_vit"
    with pytest.raises(DistillscopeError, match=r"unknown model 'torchvision:tinynett': torchvision has no 'tinynett'; close: tinynet"):
        load_config(None, ["student.name=torchvision:tinynett"])
    with pytest.raises(DistillscopeError, match="unknown source 'keras'; use torchvision:NAME or timm:NAME"):
        create_model("keras:resnet", num_classes=3)


def test_missing_packages_give_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails as if absent
    monkeypatch.setitem(sys.modules, "timm", None)
    for name in ("torchvision:resnet18", "timm:resnet50"):
        with pytest.raises(DistillscopeError) as info:
            load_config(None, [f"student.name={name}"])
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"model '{name}' needs {name.split(':')[0]}, which does not import here")
        assert message.endswith("pip install distillscope[vision]")


def test_a_torchvision_model_trains_saves_and_reloads_for_eval(tmp_path, tiny_overrides, fake_packages, capsys):
    run = tmp_path / "run"
    assert main(["train", *sum((["--set", o] for o in tiny_overrides + ["epochs=1", "student.name=torchvision:tinynet"]), []),
                 "--out", str(run)]) == 0
    model, state = load_model(run)
    assert state["model"] == "torchvision:tinynet" and isinstance(model, TinyNet) and model.fc.out_features == 10
    spec = dict(o.split("=", 1) for o in tiny_overrides)["data.spec"]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", spec, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert metrics["top1"] == pytest.approx(summary["best"]["test/top1"])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_weights_load_from_our_checkpoint_plain_safetensors_and_pth(tmp_path):
    source = create_model("resnet8", num_classes=10)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    weights = _state(source)
    save_checkpoint(tmp_path / "ours.safetensors", {f"model.{k}": v for k, v in weights.items()}, {"model": "resnet8", "num_classes": 10})
    save_file(weights, str(tmp_path / "plain.safetensors"))
    save_file({f"module.{k}": v for k, v in weights.items()}, str(tmp_path / "ddp.safetensors"))
    torch.save(weights, tmp_path / "plain.pth")
    torch.save({"state_dict": weights, "epoch": 3, "arch": "resnet8"}, tmp_path / "nested.pth")
    torch.save({"model": weights, "optimizer": {"lr": 0.1}}, tmp_path / "nested_model.pt")
    for name in ("ours.safetensors", "plain.safetensors", "ddp.safetensors", "plain.pth", "nested.pth", "nested_model.pt"):
        target = create_model("resnet8", num_classes=10)
        state = load_weights(target, tmp_path / name)
        assert (state is not None) == (name == "ours.safetensors"), name
        assert all(torch.equal(v, weights[k]) for k, v in target.state_dict().items()), name


def test_unreadable_weight_files_explain_themselves(tmp_path):
    model = create_model("resnet8", num_classes=10)
    torch.save(model, tmp_path / "whole_model.pth")  # a pickled module, not a state_dict
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_weights.pth")
    (tmp_path / "weights.npz").write_bytes(b"")
    cases = {
        "whole_model.pth": r"cannot be read with torch.load\(weights_only=True\) .*save model.state_dict\(\)",
        "no_weights.pth": "holds a dict with keys epoch, lr, not a state_dict of tensors",
        "weights.npz": "unknown format '.npz'",
        "missing.pth": "does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(DistillscopeError, match=message):
            load_weights(create_model("resnet8", num_classes=10), tmp_path / name)


def test_key_mismatches_are_listed_in_one_error_with_counts(tmp_path):
    resnet20 = create_model("resnet20", num_classes=10).state_dict()
    resnet8 = create_model("resnet8", num_classes=10).state_dict()
    torch.save(resnet20, tmp_path / "r20.pth")
    unexpected = [k for k in resnet20 if k not in resnet8]
    missing = [k for k in resnet8 if k not in resnet20]
    assert unexpected and not missing  # resnet20 has every resnet8 key plus more blocks
    with pytest.raises(DistillscopeError) as info:
        load_weights(create_model("resnet8", num_classes=10), tmp_path / "r20.pth")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"weights '{tmp_path / 'r20.pth'}' do not fit model 'resnet8': ")
    assert f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}, ... ({len(unexpected) - 4} more))" in message

    renamed = {f"backbone.{k}": v for k, v in resnet8.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(DistillscopeError, match=rf"{len(resnet8)} missing \(conv1.weight, .*{len(resnet8)} unexpected \(backbone.bn1.bias.*"
                                                r"Every missing key is in the file with the prefix 'backbone.'"):
        load_weights(create_model("resnet8", num_classes=10), tmp_path / "renamed.safetensors")
    save_file(create_model("resnet8x4", num_classes=10).state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(DistillscopeError, match="key names differ|another shape"):
        load_weights(create_model("wrn_16_1", num_classes=10), tmp_path / "other.safetensors")


def test_a_head_for_another_class_count_is_explained_and_can_be_skipped(tmp_path):
    source = create_model("resnet8", num_classes=100)
    save_file(source.state_dict(), str(tmp_path / "c100.safetensors"))
    target = create_model("resnet8", num_classes=10)
    with pytest.raises(DistillscopeError) as info:
        load_weights(target, tmp_path / "c100.safetensors")
    message = str(info.value)
    assert "2 with another shape (file vs model) (fc.weight (100, 64) vs (10, 64), fc.bias (100,) vs (10,))" in message
    assert "classifier 'fc' was trained for 100 classes and this model has 10" in message and "skip_keys: [fc]" in message
    head_before = target.fc.weight.clone()
    load_weights(target, tmp_path / "c100.safetensors", skip_keys=["fc"])
    assert torch.equal(target.fc.weight, head_before)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(target.state_dict()[k], v) for k, v in body.items())


def test_student_starts_from_a_pth_and_the_teacher_loads_a_plain_file(tmp_path, tiny_overrides):
    teacher = create_model("resnet14", num_classes=10)
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "teacher.pth")
    student = create_model("resnet8", num_classes=100)
    save_file(student.state_dict(), str(tmp_path / "student.safetensors"))
    cfg = load_config(None, tiny_overrides + [
        "epochs=1", "method.name=kd", "teacher.name=resnet14", f"teacher.checkpoint={tmp_path / 'teacher.pth'}",
        f"student.checkpoint={tmp_path / 'student.safetensors'}", "student.skip_keys=[fc]",
    ])
    trainer = Trainer(cfg, tmp_path / "kd")
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in trainer.teacher.state_dict().items())
    assert torch.equal(trainer.student.conv1.weight, student.conv1.weight) and trainer.student.fc.out_features == 10
    wrong = load_config(None, tiny_overrides + ["method.name=kd", "teacher.name=resnet20",
                                                f"teacher.checkpoint={tmp_path / 'teacher.pth'}"])
    with pytest.raises(DistillscopeError, match="do not fit model 'resnet20': .* missing"):
        Trainer(wrong, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()


MODULE = '''
from torch import nn
import distillscope


@distillscope.register_model("{name}")
def build(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


@pytest.fixture
def user_module(tmp_path):
    """A user's .py file registering model ``ds_user_net``; unregistered again afterwards."""
    name = "ds_user_net"
    path = tmp_path / "user_models.py"
    path.write_text(MODULE.format(name=name))

    def forget():
        MODELS._items.pop(name, None)
        sys.modules.pop("user_models", None)

    yield path, name, forget
    forget()


def test_import_flag_registers_a_users_model_for_train_and_eval(tmp_path, tiny_overrides, user_module, capsys, monkeypatch):
    path, name, forget = user_module
    run = tmp_path / "run"
    sets = sum((["--set", o] for o in tiny_overrides + ["epochs=1", f"student.name={name}", "student.checkpoint=null"]), [])
    assert main(["--import", str(path), "train", *sets, "--out", str(run)]) == 0
    assert main(["list", "models", "--import", str(path)]) == 0  # already imported: not executed twice
    assert name in capsys.readouterr().out.split()
    spec = dict(o.split("=", 1) for o in tiny_overrides)["data.spec"]

    forget()  # as in a fresh process
    assert main(["eval", str(run), "--data", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"holds model '{name}', which is not registered here" in err and "--import MODULE" in err
    assert main(["eval", str(run), "--data", spec, "--import", str(path)]) == 0
    assert f"{name} on {spec} test: top-1" in capsys.readouterr().out

    forget()
    monkeypatch.chdir(tmp_path)  # a module name is found from the current folder
    assert main(["--import", "user_models", "list", "models"]) == 0 and name in capsys.readouterr().out.split()


def test_import_flag_errors_are_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import nonexistent_package_xyz\n")
    for target, message in (("no_such_module_xyz", "No module named 'no_such_module_xyz'"),
                            (str(broken), "No module named 'nonexistent_package_xyz'"), (str(tmp_path / "absent.py"), "FileNotFoundError")):
        assert main(["--import", target, "list", "models"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--import {target}: it does not import" in err and message in err


def test_register_model_is_exported_and_checks_its_factories():
    assert "register_model" in distillscope.__all__
    with pytest.raises(ValueError, match="without ':'"):
        distillscope.register_model("torchvision:mine")

    @distillscope.register_model("ds_no_classes")
    def no_classes():
        return nn.Linear(2, 2)

    @distillscope.register_model("ds_not_a_module")
    def not_a_module(num_classes=10):
        return "resnet"

    try:
        with pytest.raises(DistillscopeError, match="'ds_no_classes': its factory must accept num_classes="):
            create_model("ds_no_classes", num_classes=3)
        with pytest.raises(DistillscopeError, match="returned a str, not a torch.nn.Module"):
            create_model("ds_not_a_module", num_classes=3)
    finally:
        MODELS._items.pop("ds_no_classes"), MODELS._items.pop("ds_not_a_module")


# torchvision's published parameter counts (1000 classes): resnet18/34/50/101
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_stem_resnets_match_torchvision_sizes(name):
    model = create_model(f"{name}_imagenet", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2) and isinstance(model.maxpool, nn.MaxPool2d)


def test_imagenet_resnet18_trains_at_224_on_a_streamed_folder(tmp_path, tiny_overrides):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 2), ("test", 1)):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray((torch.rand(180 + 40 * i, 260, 3, generator=gen) * 255).byte().numpy()).save(
                    tmp_path / "data" / split / c / f"{i}.jpg")
    cfg = load_config(None, tiny_overrides + [
        "epochs=1", f"data.spec=folder:{tmp_path / 'data'}?size=224&crop=0.875&memory=0", "data.augment=random_resized_crop",
        "data.val_fraction=0", "data.batch_size=2", "student.name=resnet18_imagenet",
    ])
    trainer = Trainer(cfg, tmp_path / "run")
    batch = next(trainer.train_loader.epoch(0))
    assert batch.images.shape == (2, 3, 224, 224)
    summary = trainer.fit()
    assert summary["last"]["epoch"] == 1


@pytest.mark.skipif(_torchvision() is None, reason="torchvision does not import here")
def test_a_real_torchvision_resnet18_trains_one_step_and_its_taps_resolve(tmp_path, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["epochs=1", "student.name=torchvision:resnet18", "data.spec=shapes?n=40&size=32&n_test=10"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert type(trainer.student).__module__.startswith("torchvision") and trainer.student.fc.out_features == 10
    batch = next(trainer.train_loader.epoch(0))
    before = trainer.student.fc.weight.clone()
    trainer._train_step(batch, 0)
    assert not torch.equal(before, trainer.student.fc.weight)
    logits, feats = FeatureTaps(trainer.student, {"l3": "layer3", "pool": "fc@input"})(batch.images)
    assert feats["l3"].shape[1] == 256 and torch.allclose(trainer.student.fc(feats["pool"]), logits, atol=1e-5)
    save_file(trainer.student.state_dict(), str(tmp_path / "tv.safetensors"))
    fresh = create_model("torchvision:resnet18", num_classes=10)
    load_weights(fresh, tmp_path / "tv.safetensors")
    assert torch.equal(fresh.fc.weight, trainer.student.fc.weight)
