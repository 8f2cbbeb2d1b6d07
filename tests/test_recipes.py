"""Recipes with ``base:``: deep-merge over a base file (a chain allowed), one-line errors, short shipped recipes."""
from pathlib import Path

import pytest
import yaml

from distillscope.config import load_config, read_recipe
from distillscope.engine import Trainer
from distillscope.errors import DistillscopeError

REPO = Path(__file__).resolve().parents[1]
C10K = REPO / "configs" / "cifar10_5k"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_deep_merges_mappings_and_replaces_lists_and_values(tmp_path):
    write(tmp_path, "_root.yaml", "epochs: 7\noptim: {lr: 0.1, milestones: [1, 2, 3], nesterov: true}\n"
                                  "method: {name: kd, T: 4.0, mask: {logits: 0.7}}\nrun: {precision: fp32}\n")
    write(tmp_path, "sub/_mid.yaml", "base: ../_root.yaml\noptim: {lr: 0.2}\nteacher: {name: resnet8, checkpoint: t}\n")
    recipe = write(tmp_path, "sub/r.yaml", "base: _mid.yaml\nname: r\noptim: {milestones: [5]}\n"
                                           "method: {T: 2.0, mask: {features: 0.2}}\nrun: null\n")
    expected = {
        "epochs": 7,
        "optim": {"lr": 0.2, "milestones": [5], "nesterov": True},
        "method": {"name": "kd", "T": 2.0, "mask": {"logits": 0.7, "features": 0.2}},
        "run": None,
        "teacher": {"name": "resnet8", "checkpoint": "t"},
        "name": "r",
    }
    assert read_recipe(recipe) == expected
    cfg = load_config(recipe, ["run={}"])
    assert (cfg.name, cfg.epochs, cfg.optim.lr, cfg.optim.milestones, cfg.optim.nesterov) == ("r", 7, 0.2, [5], True)
    assert cfg.method == expected["method"] and cfg.teacher.checkpoint == "t"


def test_a_missing_base_and_a_cycle_give_one_line(tmp_path):
    recipe = write(tmp_path, "r.yaml", "base: _nowhere.yaml\nname: r\n")
    with pytest.raises(DistillscopeError) as err:
        load_config(recipe)
    assert "r.yaml" in str(err.value) and "_nowhere.yaml" in str(err.value) and "\n" not in str(err.value)

    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    write(tmp_path, "self.yaml", "base: self.yaml\n")
    for name in ("a.yaml", "self.yaml"):
        with pytest.raises(DistillscopeError, match="cycle") as err:
            load_config(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(DistillscopeError, match="one file name"):
        load_config(write(tmp_path, "two.yaml", "base: [a.yaml, b.yaml]\n"))


@pytest.mark.parametrize("recipe", sorted(C10K.glob("[!_]*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_say_only_what_differs(recipe):
    """Each recipe names a base (``_base.yaml``, ``_kd_base.yaml``, ... or a recipe it varies) and its method, and holds
    only the rest."""
    lines = [line for line in recipe.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 12, f"{recipe.name}: {len(lines)} lines besides comments"
    assert lines[0].startswith("base: "), recipe.name
    assert yaml.safe_load(recipe.read_text())["method"]["name"], f"{recipe.name}: name its method (tests read it from the file)"


def test_a_base_loads_alone_as_a_valid_config():
    """``distillscope train configs/cifar10_5k/_base.yaml`` is a CE resnet8 run on the shared data and schedule."""
    cfg = load_config(C10K / "_base.yaml")
    assert (cfg.method, cfg.student.name, cfg.epochs, cfg.optim.schedule) == ({"name": "ce"}, "resnet8", 30, "onecycle")


def test_saved_config_of_a_based_recipe_is_fully_resolved(tmp_path, tiny_overrides):
    cfg = load_config(C10K / "resnet8_ce.yaml", tiny_overrides + ["epochs=1"])
    Trainer(cfg, tmp_path / "run").fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert "base" not in saved
    assert saved == cfg.to_dict()
    assert saved["name"] == "c10k-resnet8-ce" and saved["optim"]["nesterov"] is True  # from the recipe and from its base
    assert load_config(tmp_path / "run" / "config.yaml").to_dict() == cfg.to_dict()  # what resuming reads
