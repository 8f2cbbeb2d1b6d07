"""Image folders: in-memory vs streamed, plain view, random resized crop (drawn, recorded, replayed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import CIFAR10_5K
from distillscope.config import load_config
from distillscope.data import ArrayDataset, Loader, load_data
from distillscope.data.augment import draw_resized_crop, resolve_resized_crop
from distillscope.data.folder import FolderDataset
from distillscope.data.spec import parse_bytes
from distillscope.errors import DistillscopeError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
SIZES = [(40, 30), (25, 50), (64, 64), (17, 23), (90, 20)]  # (width, height): landscape, portrait, square, odd, very wide


def _write_folder(root, per_class=(5, 2), classes=("ant", "bee"), seed=0):
    """Random-pixel images of mixed sizes; returns the list of written train paths in folder order."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                w, h = SIZES[i % len(SIZES)]
                suffix = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.{suffix}")
    return root


def _unnormalize(images: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images * s * 255 + m * 255).round().clamp(0, 255).to(torch.uint8)


def _reference_box(area, log_ratio, y, x, H, W, ratio):
    """torchvision's RandomResizedCrop.get_params, written out with the same random numbers."""
    for s, lr in zip(area, log_ratio):
        target = s * H * W
        aspect = math.exp(lr)
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            return math.floor(y * (H - h + 1)), math.floor(x * (W - w + 1)), h, w
    in_ratio = W / H
    if in_ratio < min(ratio):
        w, h = W, round(W / min(ratio))
    elif in_ratio > max(ratio):
        h, w = H, round(H * max(ratio))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


def test_box_resolution_matches_the_reference_algorithm_including_the_fallback():
    gen = torch.Generator().manual_seed(0)
    ratio = (3 / 4, 4 / 3)
    for scale in ((0.08, 1.0), (0.9, 1.0)):
        draw = draw_resized_crop(200, gen, scale, ratio)
        for H, W in ((32, 32), (30, 40), (10, 100), (100, 10), (7, 9)):
            box = resolve_resized_crop(draw, H, W, ratio)
            got = torch.stack([box[k] for k in ("top", "left", "height", "width")], 1).tolist()
            want = [
                list(_reference_box(draw["area"][i].tolist(), draw["log_ratio"][i].tolist(), draw["y"][i].item(), draw["x"][i].item(),
                                    H, W, ratio))
                for i in range(200)
            ]
            assert got == want, (scale, H, W)
    # on a wide image a large scale never fits: every box is the centre crop clamped to ratio 4/3
    box = resolve_resized_crop(draw_resized_crop(50, gen, (0.9, 1.0), ratio), 10, 100, ratio)
    assert box["height"].tolist() == [10] * 50 and box["width"].tolist() == [13] * 50 and box["left"].tolist() == [43] * 50


def test_box_statistics_respect_scale_and_ratio():
    draw = draw_resized_crop(4000, torch.Generator().manual_seed(1), (0.25, 0.5), (0.5, 2.0))
    box = resolve_resized_crop(draw, 200, 200, (0.5, 2.0))
    area = (box["height"] * box["width"]).double() / 200**2
    aspect = box["width"].double() / box["height"]
    assert area.min() > 0.24 and area.max() < 0.51 and abs(area.mean().item() - 0.375) < 0.01
    assert aspect.min() > 0.49 and aspect.max() < 2.02 and abs(aspect.log().mean().item()) < 0.03
    assert (box["top"] + box["height"] <= 200).all() and (box["left"] + box["width"] <= 200).all() and (box["top"] >= 0).all()


def test_plain_view_is_resize_shorter_side_then_centre_crop(tmp_path):
    _write_folder(tmp_path)
    ds = FolderDataset(tmp_path / "train", size=16, crop=0.8)
    for i, path in enumerate(ds.paths):
        with Image.open(path) as img:
            img = img.convert("RGB")
        W, H = img.size
        short = 20  # 16 / 0.8
        new = (short, int(short * H / W)) if W <= H else (int(short * W / H), short)
        ref = img.resize(new, Image.BILINEAR)
        left, top = round((new[0] - 16) / 2), round((new[1] - 16) / 2)
        ref = np.asarray(ref)[top : top + 16, left : left + 16]
        image, target, index = ds[i]
        assert image.shape == (3, 16, 16) and index == i
        assert np.array_equal(image.permute(1, 2, 0).numpy(), ref)


def test_in_memory_and_streamed_folders_give_identical_batches(tmp_path):
    _write_folder(tmp_path)
    mem = load_data(f"folder:{tmp_path}?size=12", val_fraction=0.2)
    streamed = load_data(f"folder:{tmp_path}?size=12&memory=0", val_fraction=0.2)
    assert isinstance(mem.train, ArrayDataset) and isinstance(streamed.train, FolderDataset)
    assert mem.mean == streamed.mean and mem.std == streamed.std and mem.classes == streamed.classes == ["ant", "bee"]
    assert torch.equal(mem.val.index, streamed.val.index) and torch.equal(mem.train.targets, streamed.train.targets)
    for augment in ("pad_crop", "none"):
        a = list(Loader(mem.train, 3, mem.mean, mem.std, train=True, seed=2, augment=augment, pad=2).epoch(1))
        b = list(Loader(streamed.train, 3, mem.mean, mem.std, train=True, seed=2, augment=augment, pad=2).epoch(1))
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            assert torch.equal(x.images, y.images) and torch.equal(x.index, y.index) and x.aug.keys() == y.aug.keys()
    for split in ("val", "test"):
        a = list(Loader(getattr(mem, split), 4, mem.mean, mem.std).epoch(0))
        b = list(Loader(getattr(streamed, split), 4, mem.mean, mem.std, num_workers=1).epoch(0))
        assert all(torch.equal(x.images, y.images) and torch.equal(x.targets, y.targets) for x, y in zip(a, b))


def test_memory_limit_switches_between_decoding_and_streaming(tmp_path):
    _write_folder(tmp_path)
    need = (10 + 4) * 3 * 8 * 8  # every train and test image decoded at 8x8
    assert isinstance(load_data(f"folder:{tmp_path}?size=8&memory={need}").train, ArrayDataset)
    assert isinstance(load_data(f"folder:{tmp_path}?size=8&memory={need - 1}").train, FolderDataset)
    assert isinstance(load_data(f"folder:{tmp_path}?size=8&memory=2GB&workers=1").test, ArrayDataset)
    assert parse_bytes("2GB") == 2 * 2**30 and parse_bytes("512mb") == 512 * 2**20 and parse_bytes("1.5K") == 1536
    assert parse_bytes("3GiB") == 3 * 2**30 and parse_bytes("0") == 0 and parse_bytes("100") == 100
    for bad, message in (("memory=lots", "memory='lots' is not a size"), ("crop=1.5", r"crop=1.5 in \(0, 1\]"),
                         ("crop=x", "must be a number")):
        with pytest.raises(DistillscopeError, match=message):
            load_data(f"folder:{tmp_path}?{bad}")


def test_streamed_random_resized_crop_replays_on_the_source_image(tmp_path):
    _write_folder(tmp_path)
    data = load_data(f"folder:{tmp_path}?size=16&memory=0")
    loader = Loader(data.train, 5, MEAN, STD, train=True, seed=3, augment="random_resized_crop", scale=(0.2, 1.0))
    flips = []
    for batch in loader.epoch(0):
        assert set(batch.aug) == {"top", "left", "height", "width", "flip"} and batch.aug["top"].dtype == torch.float32
        images = _unnormalize(batch.images)
        for j, i in enumerate(batch.index.tolist()):
            with Image.open(data.train.paths[i]) as img:
                img = img.convert("RGB")
            W, H = img.size
            top, left, h, w = (round(batch.aug[k][j].item() * size) for k, size in (("top", H), ("left", W), ("height", H), ("width", W)))
            assert 0 <= top and top + h <= H and 0 <= left and left + w <= W and h * w >= 0.19 * H * W
            crop = img.crop((left, top, left + w, top + h)).resize((16, 16), Image.BILINEAR)
            ref = torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1)
            src = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()[None, :, top : top + h, left : left + w]
            torch_ref = F.interpolate(src, (16, 16), mode="bilinear", antialias=True, align_corners=False)[0]
            if batch.aug["flip"][j]:
                ref, torch_ref = ref.flip(2), torch_ref.flip(2)
            assert torch.equal(images[j], ref)
            assert (images[j].float() - torch_ref).abs().mean() < 2.0
            flips.append(bool(batch.aug["flip"][j]))
    assert any(flips) and not all(flips)


def test_in_memory_random_resized_crop_equals_an_independent_interpolation():
    gen = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randint(0, 256, (24, 3, 20, 20), generator=gen, dtype=torch.uint8), torch.arange(24) % 3, ["a", "b", "c"])
    loader = Loader(data, 8, MEAN, STD, train=True, seed=1, augment="random_resized_crop", flip=False)
    exact = total = 0
    for batch in loader.epoch(0):
        assert not batch.aug["flip"].any()
        images = _unnormalize(batch.images)
        for j, i in enumerate(batch.index.tolist()):
            top, left, h, w = (round(batch.aug[k][j].item() * 20) for k in ("top", "left", "height", "width"))
            crop = data.images[i, :, top : top + h, left : left + w].float()[None]
            ref = F.interpolate(crop, (20, 20), mode="bilinear", align_corners=False)[0]
            diff = (images[j].float() - ref.round()).abs()
            # pixels may differ by one level only where the exact value is a rounding tie (x.5)
            assert diff.max() <= 1 and ((ref - ref.floor() - 0.5).abs()[diff > 0] < 1e-3).all()
            exact, total = exact + int((diff == 0).sum()), total + diff.numel()
    assert exact / total > 0.95


@pytest.mark.parametrize("memory", ["2GB", "0"])
def test_random_resized_crop_epochs_replay_and_resume_exactly(tmp_path, memory):
    _write_folder(tmp_path)
    data = load_data(f"folder:{tmp_path}?size=12&memory={memory}")
    loader = Loader(data.train, 3, MEAN, STD, train=True, seed=5, augment="random_resized_crop")
    first, again, tail = list(loader.epoch(2)), list(loader.epoch(2)), list(loader.epoch(2, start_step=2))
    other = list(loader.epoch(3))
    assert len(tail) == len(first) - 2
    for a, b in zip(first, again):
        assert torch.equal(a.images, b.images) and all(torch.equal(a.aug[k], b.aug[k]) for k in a.aug)
    for a, b in zip(first[2:], tail):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index) and torch.equal(a.aug["top"], b.aug["top"])
    assert not torch.equal(first[0].aug["top"], other[0].aug["top"])


def test_random_resized_crop_needs_a_dataset_that_can_crop():
    class Fixed(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8, dtype=torch.uint8), 0, i

    with pytest.raises(DistillscopeError, match="random_resized_crop needs an in-memory dataset or an image folder"):
        Loader(Fixed(), 2, MEAN, STD, train=True, augment="random_resized_crop")
    assert len(list(Loader(Fixed(), 2, MEAN, STD, train=False, augment="random_resized_crop").epoch(0))) == 2
    with pytest.raises(DistillscopeError, match="'rrc' is not one of"):
        Loader(Fixed(), 2, MEAN, STD, train=True, augment="rrc")


def test_augment_config_accepts_old_booleans_and_checks_crop_parameters():
    assert load_config(None, ["data.augment=true"]).data.augment == "pad_crop"
    assert load_config(None, ["data.augment=false"]).data.augment == "none"
    cfg = load_config(None, ["data.augment=random_resized_crop", "data.crop_scale=[0.35, 1]", "data.crop_ratio=[0.5, 2]"])
    assert cfg.data.augment == "random_resized_crop" and cfg.data.crop_scale == [0.35, 1.0]
    for bad, message in (("data.augment=rrc", "'rrc' is not one of"), ("data.crop_scale=[0.5, 1.5]", "crop_scale"),
                         ("data.crop_ratio=[2]", "two numbers")):
        with pytest.raises(DistillscopeError, match=message):
            load_config(None, [bad])


@pytest.mark.skipif(not CIFAR10_5K.is_dir(), reason="cifar10-5k subset not present")
def test_a_folder_of_cifar_pngs_decodes_to_the_cifar_pixels(tmp_path):
    cifar = load_data(f"cifar10:{CIFAR10_5K}")
    rows = {}
    for split, ds in (("train", cifar.train), ("test", cifar.test)):
        for r in range(40):
            name = cifar.classes[int(ds.targets[r])]
            (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[r].permute(1, 2, 0).numpy()).save(tmp_path / split / name / f"{r:05d}.png")
            rows.setdefault(split, []).append((name, r))
    folder = load_data(f"folder:{tmp_path}")
    assert isinstance(folder.train, ArrayDataset) and folder.train.images.shape == (40, 3, 32, 32)
    order = [r for _, r in sorted(rows["train"])]  # class folders sorted by name, files by name
    assert torch.equal(folder.train.images, cifar.train.images[order])


def test_trainer_trains_on_a_streamed_folder_with_random_resized_crop(tmp_path, tiny_overrides):
    from distillscope.engine import Trainer

    _write_folder(tmp_path / "data", per_class=(6, 2))
    cfg = load_config(None, tiny_overrides + [
        "epochs=1", f"data.spec=folder:{tmp_path / 'data'}?size=16&memory=0", "data.augment=random_resized_crop",
        "data.val_fraction=0.25", "data.batch_size=4",
    ])
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.train_loader.augment == "random_resized_crop" and trainer.train_loader.scale == (0.08, 1.0)
    summary = trainer.fit()
    assert summary["last"]["epoch"] == 1 and math.isfinite(summary["last"]["train/loss"])
