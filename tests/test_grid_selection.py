"""The explain / report CAM grids draw their images across classes with the seed, not the split's first images."""
import json

import numpy as np
import torch
from PIL import Image

from distillscope.config import load_config
from distillscope.engine import Trainer
from distillscope.explain import ExplainSettings, grid_rows, run_explain


def test_grid_rows_deal_one_image_per_class_in_turn_from_a_seeded_permutation():
    targets = torch.arange(10).repeat_interleave(20)  # ordered by class, as an image folder's test split
    rows = grid_rows(targets, 8, seed=0)
    assert len(rows) == 8 and len(set(rows)) == 8 and len({int(targets[r]) for r in rows}) == 8
    assert grid_rows(targets, 8, seed=0) == rows  # the seed decides
    assert grid_rows(targets, 8, seed=1) != rows
    counts = np.bincount(targets[grid_rows(targets, 25, seed=3)].numpy(), minlength=10)
    assert counts.min() == 2 and counts.max() == 3  # every class twice before any a third time
    assert sorted(grid_rows(targets[:5], 8, seed=0)) == [0, 1, 2, 3, 4]  # fewer images than asked: all of them


def test_explain_grid_on_a_class_ordered_folder_spans_several_classes(tmp_path):
    data = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(10):
            (data / split / f"class{c}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / split / f"class{c}" / f"{i}.png")
    spec = f"folder:{data}?size=16"
    Trainer(load_config(None, ["epochs=1", f"data.spec={spec}", "data.val_fraction=0", "data.batch_size=30", "data.num_workers=0",
                               "student.name=resnet8", "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32"]),
            tmp_path / "run").fit()
    run = str(tmp_path / "run")
    settings = {"student": run, "teacher": run, "data": spec, "labels": "onehot", "batch_size": 10, "grid_images": 6, "road_fraction": None,
                "device": "cpu", "progress": False}
    first = run_explain(ExplainSettings(out=str(tmp_path / "a"), seed=4, **settings))["settings"]["grid_rows"]
    targets = [t for t in range(10) for _ in range(3)]  # the folder's test split, class by class
    assert len(first) == 6 and len({targets[r] for r in first}) == 6  # the first 6 images would be 2 classes
    assert (tmp_path / "a" / "grid.png").is_file()
    run_explain(ExplainSettings(out=str(tmp_path / "b"), seed=4, **settings))
    assert json.loads((tmp_path / "b" / "settings.json").read_text())["grid_rows"] == first  # the same seed, the same images
