"""ImageNet-style folders: train/ + val/, classes.txt order and its errors, the class order in the run, streamed
JPEGs through loader workers with per-sample random-resized-crop records, the same plan for any worker count,
and the configs/imagenet recipes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distillscope.config import load_config, read_recipe
from distillscope.data import ArrayDataset, Loader, denormalize, load_data
from distillscope.engine import Trainer, load_model
from distillscope.errors import DistillscopeError

REPO = Path(__file__).resolve().parents[1]
SIZES = [(48, 40), (40, 56), (64, 48), (37, 45)]  # (width, height) of the source JPEGs


def write_imagenet(root: Path, classes=("n02", "n01", "n03"), per_class=(4, 2), held_out="val", seed=0) -> Path:
    """``root/train/<class>/*.JPEG`` and ``root/<held_out>/<class>/*.JPEG``: smooth random images of mixed sizes."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", held_out), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                w, h = SIZES[i % len(SIZES)]
                small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.BILINEAR).save(root / split / c / f"{c}_{i}.JPEG", quality=90)
    return root


def test_val_folder_is_the_test_split_and_classes_are_sorted_folder_names(tmp_path):
    write_imagenet(tmp_path)
    data = load_data(f"folder:{tmp_path}?size=8")
    assert data.classes == ["n01", "n02", "n03"] and len(data.train) == 12 and len(data.test) == 6
    streamed = load_data(f"folder:{tmp_path}?size=8&memory=0")
    assert all(p.parent.parent.name == "val" for p in streamed.test.paths)
    assert streamed.test.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.parent.name for p in streamed.test.paths][::2] == ["n01", "n02", "n03"]
    (tmp_path / "test").mkdir()
    with pytest.raises(DistillscopeError, match=r"holds both test/ and val/; choose the held-out split with \?test=test or \?test=val$"):
        load_data(f"folder:{tmp_path}?size=8")
    assert len(load_data(f"folder:{tmp_path}?size=8&test=val").test) == 6


def test_a_folder_without_test_or_val_names_both(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DistillscopeError, match=r"expected class folders under .*test \(test/ or ImageNet's val/\)"):
        load_data(f"folder:{tmp_path}")


@pytest.mark.parametrize("memory", ["2GB", "0"])
def test_classes_txt_fixes_the_order_of_both_splits(tmp_path, memory):
    write_imagenet(tmp_path)
    (tmp_path / "classes.txt").write_text("n03\n\nn01\n  n02  \n")
    data = load_data(f"folder:{tmp_path}?size=8&memory={memory}", val_fraction=0.25)
    assert data.classes == ["n03", "n01", "n02"]
    reference = load_data(f"folder:{tmp_path}?size=8&memory=0")  # every image's class folder, in the listed order
    for split in ("train", "test"):
        ds = getattr(reference, split)
        assert [data.classes[t] for t in ds.targets.tolist()] == [p.parent.name for p in ds.paths]
        assert ds.targets.tolist() == sorted(ds.targets.tolist())  # files are grouped by class in the listed order
    if memory == "2GB":
        assert isinstance(data.train, ArrayDataset) and data.train.classes == data.classes


@pytest.mark.parametrize("lines, message", [
    ("n01\nn02\n", r"class folder .*train/n03 is not in classes.txt \(1 such folder\(s\)\); add it or remove the folder$"),
    ("n01\nn02\nn03\nn04\nn05\n", r"classes.txt lists 'n04', which has no folder in .*train \(2 such class\(es\)\); add the folder or"),
    ("n01\nn02\nn03\nn02\n", r"classes.txt lists class 'n02' twice; each class once$"),
    ("\n\n", r"classes.txt lists no classes"),
])
def test_classes_txt_errors_are_one_line(tmp_path, lines, message):
    write_imagenet(tmp_path)
    (tmp_path / "classes.txt").write_text(lines)
    with pytest.raises(DistillscopeError, match=message) as err:
        load_data(f"folder:{tmp_path}?size=8")
    assert "\n" not in str(err.value)


def test_a_class_missing_from_val_is_named(tmp_path):
    write_imagenet(tmp_path)
    (tmp_path / "classes.txt").write_text("n01\nn02\nn03\n")
    for image in (tmp_path / "val" / "n02").iterdir():
        image.unlink()
    (tmp_path / "val" / "n02").rmdir()
    with pytest.raises(DistillscopeError, match=r"classes.txt lists 'n02', which has no folder in .*val "):
        load_data(f"folder:{tmp_path}?size=8")


def test_the_class_order_is_written_into_the_run(tmp_path, tiny_overrides):
    """A streamed ImageNet-layout run (random resized crop, 2 loader workers) records the classes.txt order in its checkpoints."""
    root = write_imagenet(tmp_path / "imagenet", per_class=(4, 1))
    (root / "classes.txt").write_text("n02\nn03\nn01\n")
    cfg = load_config(None, tiny_overrides + [
        "epochs=1", f"data.spec=folder:{root}?size=16&crop=0.875&memory=0", "data.augment=random_resized_crop",
        "data.val_fraction=0.25", "data.batch_size=3", "data.num_workers=2",
    ])
    summary = Trainer(cfg, tmp_path / "run").fit()
    assert summary["last"]["epoch"] == 1
    for name in ("best.safetensors", "last.safetensors"):
        _, meta = load_model(tmp_path / "run" / name)
        assert meta["classes"] == ["n02", "n03", "n01"] and meta["num_classes"] == 3


def _reference_crop(path: Path, box: dict, flip: bool, size: int) -> torch.Tensor:
    """The training view from its record alone: crop the source at the box (fractions of it), resize, flip."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    W, H = img.size
    top, left, h, w = (round(box[k] * s) for k, s in (("top", H), ("left", W), ("height", H), ("width", W)))
    view = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    view = torch.from_numpy(np.asarray(view).copy()).permute(2, 0, 1)
    return view.flip(2) if flip else view


def test_streamed_jpegs_with_two_workers_record_every_sample_crop(tmp_path):
    root = write_imagenet(tmp_path, per_class=(6, 2))
    data = load_data(f"folder:{root}?size=24&crop=0.875&memory=0")
    loader = Loader(data.train, 5, data.mean, data.std, train=True, seed=1, augment="random_resized_crop", num_workers=2)
    seen, flips = [], []
    for batch in loader.epoch(0):
        assert set(batch.aug) == {"top", "left", "height", "width", "flip"} and batch.images.shape[1:] == (3, 24, 24)
        pixels = denormalize(batch.images, data.mean, data.std)
        for j, i in enumerate(batch.index.tolist()):
            box = {k: batch.aug[k][j].item() for k in ("top", "left", "height", "width")}
            assert 0 <= box["top"] and box["top"] + box["height"] <= 1 + 1e-6 and box["height"] * box["width"] >= 0.08 - 1e-3
            assert torch.equal(pixels[j], _reference_crop(data.train.paths[i], box, bool(batch.aug["flip"][j]), 24))
            seen.append(i)
            flips.append(bool(batch.aug["flip"][j]))
    assert sorted(seen) == list(range(18)) and any(flips) and not all(flips)
    # evaluation: shorter side to round(24 / 0.875) = 27, then the centre 24 × 24
    batch = next(Loader(data.test, 6, data.mean, data.std, num_workers=2).epoch(0))
    with Image.open(data.test.paths[0]) as img:
        W, H = img.size
        short = 27
        new = (short, int(short * H / W)) if W <= H else (int(short * W / H), short)
        img = img.convert("RGB").resize(new, Image.BILINEAR)
    top, left = round((new[1] - 24) / 2), round((new[0] - 24) / 2)
    expected = torch.from_numpy(np.asarray(img)[top : top + 24, left : left + 24].copy()).permute(2, 0, 1)
    assert torch.equal(denormalize(batch.images, data.mean, data.std)[0], expected)


def test_an_epoch_is_the_same_with_0_and_2_workers(tmp_path):
    root = write_imagenet(tmp_path, per_class=(5, 2))
    data = load_data(f"folder:{root}?size=16&memory=0", val_fraction=0.2)
    runs = {}
    for workers in (0, 2):
        loader = Loader(data.train, 4, data.mean, data.std, train=True, seed=3, augment="random_resized_crop", num_workers=workers,
                        drop_last=True)
        runs[workers] = list(loader.epoch(2)), list(loader.epoch(2, start_step=1))
    for (a, a_tail), (b, b_tail) in [(runs[0], runs[2])]:
        assert len(a) == len(b) == 3 and len(a_tail) == 2
        for x, y in zip(a + a_tail, b + b_tail):
            assert torch.equal(x.index, y.index) and torch.equal(x.images, y.images)
            assert x.aug.keys() == y.aug.keys() and all(torch.equal(x.aug[k], y.aug[k]) for k in x.aug)
        assert torch.equal(a[1].images, a_tail[0].images)
    other = next(Loader(data.train, 4, data.mean, data.std, train=True, seed=3, augment="random_resized_crop").epoch(3))
    assert not torch.equal(other.aug["top"], runs[0][0][0].aug["top"])


# ----------------------------------------------------------------- recipes
RECIPES = REPO / "configs" / "imagenet"


@pytest.mark.parametrize("name, mask", [("resnet34_to_resnet18_kd.yaml", None), ("resnet34_to_resnet18_sfkd_kd.yaml", {"logits": 0.7})])
def test_recipes_hold_the_paper_003_imagenet_setting(name, mask):
    raw = read_recipe(RECIPES / name)
    assert raw["teacher"] == {"name": "resnet34_imagenet", "checkpoint": "models/resnet34-b627a593.pth"}
    cfg = load_config(RECIPES / name)
    o, d = cfg.optim, cfg.data
    assert (cfg.epochs, d.batch_size, o.lr, o.momentum, o.weight_decay) == (120, 256, 0.1, 0.9, 1e-4)
    assert (o.schedule, o.milestones, o.gamma) == ("multistep", [30, 60, 90], 0.1)
    assert (d.augment, d.flip, d.num_workers, cfg.student.name) == ("random_resized_crop", True, 8, "resnet18_imagenet")
    assert d.spec == "folder:data/imagenet?size=224&crop=0.875&memory=0"
    assert cfg.method.get("T") == 4.0 and cfg.method.get("mask") == mask


def test_the_sfkd_recipe_trains_on_an_imagenet_layout_folder(tmp_path):
    """The recipe as shipped, on a tiny train/ + val/ folder at 32 px with a random-weight teacher file."""
    from safetensors.torch import save_file

    from distillscope.models import create_model

    root = write_imagenet(tmp_path / "imagenet", per_class=(3, 1))
    teacher = tmp_path / "resnet34.safetensors"
    save_file(create_model("resnet34_imagenet", num_classes=3).state_dict(), str(teacher))
    cfg = load_config(RECIPES / "resnet34_to_resnet18_sfkd_kd.yaml", [
        f"data.spec=folder:{root}?size=32&crop=0.875&memory=0", f"teacher.checkpoint={teacher}",
        "epochs=1", "data.batch_size=3", "data.eval_batch_size=4", "data.num_workers=0", "data.val_fraction=0",
        "run.precision=fp32", "run.channels_last=false", "run.progress=false", "run.device=cpu", "run.threads=1",
    ])
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.teacher_cache is None  # random resized crops are not keyed: the teacher runs every step
    summary = trainer.fit()
    assert summary["last"]["epoch"] == 1 and summary["method"] == "kd" and torch.isfinite(torch.tensor(summary["last"]["train/loss"]))
