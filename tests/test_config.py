from pathlib import Path

import pytest

from distillscope.config import apply_overrides, load_config
from distillscope.errors import DistillscopeError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=0.2", "optim.milestones=[5, 8]", "run.precision=bf16", "epochs=3", "optim.clip_grad_norm=1"])
    assert cfg.optim.lr == 0.2 and cfg.optim.milestones == [5, 8] and cfg.run.precision == "bf16"
    assert cfg.epochs == 3 and isinstance(cfg.optim.clip_grad_norm, float)


def test_yaml_file_and_data_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nstudent: {name: resnet20}\nmethod: {name: ce}\n")
    cfg = load_config(path, data_spec="shapes?n=100")
    assert cfg.student.name == "resnet20" and cfg.data.spec == "shapes?n=100"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=0.1"], "unknown key 'optim.lrr'; valid keys: lr,"),
        (["bogus=1"], "unknown key 'bogus'"),
        (["optim.lr=fast"], "optim.lr: 'fast' should be float"),
        (["epochs=2.5"], "epochs: 2.5 should be int"),
        (["run.precision=fp8"], "'fp8' is not one of 'auto', 'fp32'"),
        (["student.name=resnet9"], "unknown model 'resnet9'; valid: .*resnet8"),
        (["method.name=dkdx"], "unknown method 'dkdx'"),
        (["method.name=kd"], "needs a teacher"),
        (["data.spec=mnist:/x"], "unknown dataset 'mnist'"),
        (["epochs=0"], "epochs: must be at least 1"),
        (["optim=3"], "optim: expected a mapping"),
        (["method.name=kd", "method.tau=2", "teacher.name=resnet20", "teacher.checkpoint=x"], "unknown parameter"),
    ],
)
def test_bad_configs_give_one_line_naming_the_key(overrides, message):
    with pytest.raises(DistillscopeError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_bad_files_and_set_syntax(tmp_path):
    with pytest.raises(DistillscopeError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(DistillscopeError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(DistillscopeError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(DistillscopeError, match="expected KEY=VALUE"):
        apply_overrides({}, ["lr0.1"])


def test_yaml_never_executes_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(DistillscopeError, match="not valid YAML"):
        load_config(path)


RECIPES = sorted(p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("_"))  # _*.yaml: bases, partial by design


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_recipes_validate(recipe):
    cfg = load_config(recipe)
    assert cfg.epochs >= 1


@pytest.mark.parametrize("written, expected",
                         [("1e-3", 0.001), ("5E-4", 0.0005), (".5", 0.5), ("1_000", 1000.0), ("2", 2.0), ("+1.5e+1", 15.0)])
def test_numbers_are_accepted_as_people_write_them(tmp_path, written, expected):
    cfg = load_config(None, [f"optim.lr={written}", f"optim.weight_decay={written}", "method.name=kd", "teacher.name=resnet8",
                             "teacher.checkpoint=x", f"method.T={written}"])
    assert cfg.optim.lr == expected and isinstance(cfg.optim.lr, float) and cfg.optim.weight_decay == expected
    (tmp_path / "r.yaml").write_text(f"optim:\n  lr: {written}\n  weight_decay: {written}\nepochs: 1_0\n")
    cfg = load_config(tmp_path / "r.yaml")
    assert cfg.optim.lr == expected and cfg.epochs == 10


@pytest.mark.parametrize("override, message", [("epochs=1e-3", "should be int"), ("epochs=2.5", "should be int"),
                                                ("optim.lr=1e", "should be float"), ("optim.lr=nan", "should be float")])
def test_numbers_that_are_not_numbers_of_the_right_kind_are_refused(override, message):
    with pytest.raises(DistillscopeError, match=message):
        load_config(None, [override])
    assert load_config(None, ["epochs=1e2"]).epochs == 100


def test_every_shipped_recipe_uses_precision_auto():
    for recipe in RECIPES:
        assert load_config(recipe).run.precision == "auto", recipe
