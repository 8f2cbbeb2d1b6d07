"""`eval` and `explain` on other data than the runs learned give `train`'s warning (class names, else data spec)."""
import re

import numpy as np
import pytest
from PIL import Image

from distillscope.cli import main
from distillscope.config import load_config
from distillscope.engine import Trainer

DATA = "shapes?n=60&size=16&n_test=20"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    Trainer(load_config(None, ["epochs=1", f"data.spec={DATA}", "data.val_fraction=0", "data.batch_size=30", "data.num_workers=0",
                               "student.name=resnet8", "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32",
                               "name=shapes"]), root / "run").fit()
    return root / "run"


@pytest.fixture(scope="module")
def clothes(tmp_path_factory):
    """An image folder with 10 classes (as many as shapes), two 16-pixel images each in train/ and test/."""
    root = tmp_path_factory.mktemp("clothes")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("bag", "boot", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "top", "trouser"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def warnings_of(capsys, argv) -> list[str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    return [line for line in err.splitlines() if line.startswith("distillscope: warning:")]


def test_eval_warns_on_other_classes_or_other_data_and_not_on_its_own(run, clothes, capsys):
    evaluate = ["eval", str(run), "--device", "cpu", "--data"]
    assert warnings_of(capsys, [*evaluate, DATA]) == []
    (line,) = warnings_of(capsys, [*evaluate, f"folder:{clothes}?size=16"])
    assert "the checkpoint's class names differ from the data's (class 0: checkpoint " in line and "data 'bag')" in line
    (line,) = warnings_of(capsys, [*evaluate, "shapes?n=60&size=16&n_test=30"])
    assert f"the checkpoint was trained on '{DATA}' but is evaluated on 'shapes?n=60&size=16&n_test=30'" in line


def test_explain_warns_for_each_run_trained_on_other_data(run, tmp_path, capsys):
    other = "shapes?n=60&size=16&n_test=30"
    argv = ["explain", "--student", str(run), "--teacher", str(run), "--only", "agreement", "--device", "cpu", "--limit", "10"]
    assert warnings_of(capsys, [*argv, "--data", DATA, "--out", str(tmp_path / "same")]) == []
    (line,) = warnings_of(capsys, [*argv, "--data", other, "--out", str(tmp_path / "other")])  # one run named twice: one warning
    assert f"the student {run} was trained on '{DATA}' but it is explained on '{other}'" in line


def test_train_gives_the_same_warnings_for_its_teacher(run, clothes, tmp_path):
    common = ["epochs=1", "data.val_fraction=0", "data.num_workers=0", "student.name=resnet8", "run.progress=false", "run.device=cpu",
              "run.teacher_cache=off", "method.name=kd", "teacher.name=resnet8", f"teacher.checkpoint={run}"]
    with pytest.warns(UserWarning, match=r"the teacher's class names differ from this run's \(class 0: teacher '.*', data 'bag'\)"):
        Trainer(load_config(None, common + [f"data.spec=folder:{clothes}?size=16"]), tmp_path / "a")
    with pytest.warns(UserWarning, match=re.escape(f"the teacher was trained on '{DATA}' but this run uses "
                                                   "'shapes?n=60&size=16&n_test=30'; distilling across")):
        Trainer(load_config(None, common + ["data.spec=shapes?n=60&size=16&n_test=30"]), tmp_path / "b")
