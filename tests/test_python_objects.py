"""distillscope.train(student=, teacher=, data=) with your own nn.Module and Dataset objects, register_dataset, and
the one-line errors."""
from __future__ import annotations

import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import distillscope
from distillscope.api import Given
from distillscope.config import apply_overrides
from distillscope.data import ArrayDataset, Loader, as_bundle, load_data
from distillscope.data.user import StreamedDataset
from distillscope.engine import Trainer, load_model
from distillscope.engine.checkpoint import load_checkpoint
from distillscope.errors import DistillscopeError

SETTINGS = {"epochs": 2, "data.batch_size": 16, "data.num_workers": 0, "data.val_fraction": 0.2, "optim.lr": 0.1,
            "optim.schedule": "cosine", "run.progress": False, "run.precision": "fp32", "run.device": "cpu", "run.threads": 1}


class Blobs(Dataset):
    """Class c brightens channel c: float images in [0, 1]; ``pil=True`` returns PIL images instead."""

    classes = ["red", "green", "blue"]

    def __init__(self, n: int, seed: int = 0, size: int = 8, pil: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, 3, (n,), generator=g).tolist()
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.4
        self.images[torch.arange(n), self.targets] += 0.6
        self.pil = pil

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image = self.images[i]
        if self.pil:
            image = Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
        return image, self.targets[i]


class Net(nn.Module):
    def __init__(self, classes: int = 3, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _net(seed: int, **kw) -> Net:
    torch.manual_seed(seed)
    return Net(**kw)


def test_a_user_module_trains_in_place_on_a_user_dataset(tmp_path):
    student = _net(0)
    before = student.fc.weight.detach().clone()
    summary = distillscope.train(out=tmp_path / "ce", overrides=SETTINGS, student=student, data=(Blobs(120), Blobs(60, seed=1)))
    assert summary["config"]["student"]["name"] == "python:Net" and summary["config"]["data"]["spec"] == "python:Blobs"
    assert summary["last"]["test/top1"] > 70  # three colour-coded classes: chance is 33%
    assert not torch.equal(student.fc.weight, before)  # the object itself was trained
    tensors, meta = load_checkpoint(tmp_path / "ce" / "last.safetensors", "cpu")
    assert meta["classes"] == ["red", "green", "blue"] and torch.equal(tensors["model.fc.weight"], student.fc.weight.detach())


def test_pil_and_float_images_give_the_same_uint8_data():
    floats, pil = as_bundle((Blobs(20), Blobs(10, seed=1))), as_bundle((Blobs(20, pil=True), Blobs(10, seed=1, pil=True)))
    assert isinstance(floats.train, ArrayDataset) and torch.equal(floats.train.images, pil.train.images)
    assert torch.equal(floats.train.images, (Blobs(20).images * 255).round().byte()) and floats.classes == Blobs.classes
    assert floats.train.targets.tolist() == Blobs(20).targets and floats.mean == pil.mean


def test_kd_with_a_user_teacher_resumes_exactly_with_the_same_objects(tmp_path, interrupt_at):
    data = (Blobs(96), Blobs(48, seed=1))
    teacher = _net(1, width=16)
    distillscope.train(out=tmp_path / "teacher", overrides=SETTINGS, student=teacher, data=data)
    kd = {**SETTINGS, "epochs": 3, "method": {"name": "kd", "T": 4.0}}
    straight = distillscope.train(out=tmp_path / "kd", overrides=kd, student=_net(2), teacher=teacher, data=data)
    assert straight["config"]["teacher"] == {"name": "python:Net", "checkpoint": "python:Net", "skip_keys": []}

    given = Given(_net(2), teacher, as_bundle(data))
    raw = apply_overrides({}, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in kd.items()])
    interrupt_at(Trainer(given.config(raw), tmp_path / "resumed", build=given.factories()), 7)  # mid epoch 2 of 3
    with pytest.raises(DistillscopeError) as err:
        distillscope.train(out=tmp_path / "resumed", resume=True, data=data)  # the student and teacher are missing
    message = str(err.value)
    assert "\n" not in message and "student 'python:Net', teacher 'python:Net'" in message and "student=..., teacher=..." in message
    student = _net(5)  # any weights: the checkpoint's replace them
    resumed = distillscope.train(out=tmp_path / "resumed", resume=True, student=student, teacher=teacher, data=data)
    assert resumed["last"]["test/top1"] == straight["last"]["test/top1"]
    assert resumed["last"]["train/loss"] == pytest.approx(straight["last"]["train/loss"], rel=1e-6)
    a, b = (load_checkpoint(tmp_path / run / "last.safetensors", "cpu")[0] for run in ("kd", "resumed"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if k.startswith("model."))


def test_registered_names_and_specs_are_recorded_so_the_run_needs_no_objects(tmp_path):
    data = load_data("shapes?n=60&size=12&n_test=20")
    student = distillscope.create_model("resnet8", num_classes=10)
    summary = distillscope.train(out=tmp_path / "run", overrides={**SETTINGS, "epochs": 1}, student=student, data=data)
    assert summary["config"]["student"]["name"] == "resnet8" and summary["config"]["data"]["spec"] == "shapes?n=60&size=12&n_test=20"
    again = distillscope.train(out=tmp_path / "run", resume=True)  # rebuilt from config.yaml alone
    assert again["last"] == summary["last"]
    model, meta = load_model(tmp_path / "run")
    assert meta["model"] == "resnet8" and torch.equal(model.state_dict()["fc.weight"], student.state_dict()["fc.weight"])


def test_large_sets_stream_through_workers_and_need_targets(tmp_path):
    data = as_bundle((Blobs(40), Blobs(20, seed=1)), memory=0)
    assert isinstance(data.train, StreamedDataset) and data.spec == "python:Blobs"
    in_memory = as_bundle((Blobs(40), Blobs(20, seed=1)))
    a = list(Loader(data.test, 8, data.mean, data.std, num_workers=2).epoch(0))
    b = list(Loader(in_memory.test, 8, data.mean, data.std).epoch(0))
    assert all(torch.equal(x.images, y.images) and torch.equal(x.targets, y.targets) for x, y in zip(a, b))
    summary = distillscope.train(out=tmp_path / "run", overrides={**SETTINGS, "data.num_workers": 2}, student=_net(0), data=data)
    assert summary["config"]["run"]["teacher_cache"] == "off" and summary["last"]["epoch"] == 2

    class Unlabelled(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), 0

    with pytest.raises(DistillscopeError, match=r"so they stream, which needs the train set's labels as .targets; add that attribute$"):
        as_bundle((Unlabelled(), Unlabelled()), memory=0)


def test_a_bundle_whose_spec_no_factory_builds_is_recorded_as_python(tmp_path):
    data = as_bundle((Blobs(40), Blobs(20, seed=1)))
    data.spec = "my-blobs"
    summary = distillscope.train(out=tmp_path / "run", overrides={**SETTINGS, "epochs": 1}, student=_net(0), data=data)
    assert summary["config"]["data"]["spec"] == "python:my-blobs"
    with pytest.raises(DistillscopeError, match=r"records Python objects \(data 'python:my-blobs'\)"):
        distillscope.train(out=tmp_path / "run", resume=True, student=_net(0))


class Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("data, message", [
    (Blobs(10), r"data: got a Blobs; give \(train_set, test_set\) or a DataBundle: a run needs a test set"),
    ((Blobs(10), Items([])), r"the test set \(Items\) must be a non-empty map-style dataset"),
    ((Items([torch.zeros(3, 4, 4)]), Blobs(4)), r"Items\[0\] returned a Tensor; a dataset item must be \(image, label\)"),
    ((Items([("pixels", 0)]), Blobs(4)), r"Items\[0\]: the image is a str; return a PIL image or a \(C, H, W\) tensor"),
    ((Items([(torch.full((3, 4, 4), 2.0), 0)]), Blobs(4)), r"Items\[0\]: float images must be in \[0, 1\] .* got \[2, 2\]"),
    ((Items([(torch.zeros(4, 4, 4), 0)]), Blobs(4)), r"an image tensor of shape \(4, 4, 4\); return \(3, H, W\) or \(1, H, W\)"),
    ((Items([(torch.zeros(3, 4, 4), 0), (torch.zeros(3, 5, 4), 1)]), Blobs(4)),
     r"Items returns images of different sizes \(\(3, 4, 4\) and \(3, 5, 4\)\)"),
    ((Items([(torch.zeros(3, 4, 4), -1)]), Blobs(4)), r"labels must be class numbers 0, 1, ...; found a negative label"),
])
def test_data_errors_are_one_line(data, message):
    with pytest.raises(DistillscopeError, match=message) as err:
        as_bundle(data)
    assert "\n" not in str(err.value)


def test_model_errors_are_one_line_and_leave_no_run_folder(tmp_path):
    data = (Blobs(40), Blobs(20, seed=1))
    cases = [
        (dict(student=_net(0, classes=5)), r"student=: Net maps 2 images to \(2, 5\), not logits \(2, 3\) for the data's 3 classes"),
        (dict(student=_net(0), teacher=_net(1, classes=4), overrides={**SETTINGS, "method": {"name": "kd"}}),
         r"teacher=: Net maps 2 images to \(2, 4\)"),
        (dict(student=_net(0), teacher=_net(1)), r"teacher=: method 'ce' uses no teacher; leave teacher= out"),
        (dict(student="resnet8"), r"student=: got a str; give a torch.nn.Module"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        kwargs = {"overrides": SETTINGS, **kwargs}
        with pytest.raises(DistillscopeError, match=message) as err:
            distillscope.train(out=tmp_path / f"run{i}", data=data, **kwargs)
        assert "\n" not in str(err.value) and not (tmp_path / f"run{i}").exists()


def test_a_python_spec_cannot_be_loaded_and_says_why():
    message = r"^data spec 'python:Blobs' names Python objects given to distillscope.train\(data=...\), which a run folder cannot re-create"
    with pytest.raises(DistillscopeError, match=message):
        load_data("python:Blobs")


# ----------------------------------------------------------------- register_dataset
@distillscope.register_dataset("test_blobs")
def blobs(n: int = 30, seed: int = 0, scale: float = 1.0, pil: bool = False, path: str = ""):
    assert path in ("", "somewhere")
    return Blobs(n, seed, pil=pil), Blobs(max(n // 3, 3), seed + 100, pil=pil)


def test_register_dataset_round_trip(tmp_path):
    data = load_data("test_blobs:somewhere?n=24&seed=2&pil=true", val_fraction=0.25)
    assert data.spec == "test_blobs:somewhere?n=24&seed=2&pil=true" and len(data.train) + len(data.val) == 24 and len(data.test) == 8
    assert torch.equal(torch.sort(torch.cat([data.train.index, data.val.index])).values, torch.arange(24))
    assert torch.equal(as_bundle(blobs(24, 2)).train.images, load_data("test_blobs?n=24&seed=2").train.images)
    assert "test_blobs" in distillscope.data.list_datasets()

    spec = "test_blobs?n=48"
    summary = distillscope.train(out=tmp_path / "run", overrides={**SETTINGS, "data.spec": spec, "student.name": "resnet8", "epochs": 1})
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["spec"] == spec and summary["last"]["epoch"] == 1
    assert distillscope.train(out=tmp_path / "run", resume=True)["last"] == summary["last"]  # the spec re-creates the data
    summary2 = distillscope.train(out=tmp_path / "run2", overrides={**SETTINGS, "student.name": "resnet8", "epochs": 1}, data=spec)
    timing = ("img_per_s",)
    assert {k: v for k, v in summary2["last"].items() if k not in timing} == {k: v for k, v in summary["last"].items() if k not in timing}


@pytest.mark.parametrize("spec, message", [
    ("test_blobs?n=x", r"option n='x' must be an integer$"),
    ("test_blobs?scale=big", r"option scale='big' must be a number$"),
    ("test_blobs?pil=maybe", r"option pil='maybe' must be true or false$"),
    ("test_blobs?size=8", r"got an unexpected keyword argument 'size'; dataset 'test_blobs' takes n, seed, scale, pil, path$"),
])
def test_register_dataset_option_errors_are_one_line(spec, message):
    with pytest.raises(DistillscopeError, match=message):
        load_data(spec)


def test_register_dataset_refuses_bad_and_repeated_names():
    with pytest.raises(ValueError, match="without ':'"):
        distillscope.register_dataset("a:b")
    with pytest.raises(ValueError, match="dataset 'test_blobs' is registered twice"):
        distillscope.register_dataset("test_blobs")(blobs)
