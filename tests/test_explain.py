"""`distillscope explain` end to end on tiny shapes runs."""
import csv
import json

import pytest

from distillscope.cli import main
from distillscope.config import load_config
from distillscope.engine import Trainer

DATA = "shapes?n=160&size=16&n_test=40"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = ["epochs=1", f"data.spec={DATA}", "data.val_fraction=0", "data.batch_size=32", "data.num_workers=0", "student.name=resnet8",
              "optim.lr=0.05", "run.progress=false", "run.threads=1", "run.device=cpu"]
    Trainer(load_config(None, common + ["name=t", "method.name=ce"]), root / "teacher").fit()
    Trainer(load_config(None, common + ["name=b", "method.name=ce", "seed=1"]), root / "base").fit()
    Trainer(load_config(None, common + ["name=s", "method.name=kd", "teacher.name=resnet8", f"teacher.checkpoint={root / 'teacher'}"]),
            root / "student").fit()
    return root


def explain(runs, out, *extra):
    return main(["explain", "--student", str(runs / "student"), "--teacher", str(runs / "teacher"), "--data", DATA, "--out", str(out),
                 "--labels", "onehot", "--limit", "24", "--batch-size", "8", "--grid-images", "3", "--device", "cpu", *extra])


def test_explain_writes_grids_tables_localisation_and_summary(runs, tmp_path, capsys):
    out = tmp_path / "explain"
    code = explain(runs, out, "--base", str(runs / "base"), "--layers", "stage:0", "stage:-1", "--road-fraction", "0.5")
    assert code == 0, capsys.readouterr().err
    for name in ("grid.png", "grid_stage0.png", "grid_stage-1.png", "scores.csv", "scores.json", "localisation.csv", "summary.md",
                 "settings.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "scores.csv")))
    # 2 references x 2 layers x 2 conditions x 5 statistics
    assert len(rows) == 40 and {r["condition"] for r in rows} == {"clean", "lerf"} and {r["reference"] for r in rows} == {"teacher", "base"}
    assert all(r["batches"] == "3" for r in rows)
    loc = json.loads((out / "localisation.json").read_text())
    assert {r["maps"] for r in loc} == {"gradcam_student", "gradcam_teacher", "gradcam_base", "unicam_distilled", "unicam_residual"}
    assert all(0 <= r["energy"] <= 1 and 0 <= r["pointing"] <= 1 for r in loc)
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["batch_size"] == 8 and settings["seed"] == 0 and settings["label_embeddings"] == "onehot"
            and settings["unicam_base"] == "base")
    summary = (out / "summary.md").read_text()
    assert "batches of 8 drawn with seed 0" in summary and "| base | stage:-1 | lerf |" in summary and "energy in mask" in summary


def test_explain_without_base_uses_the_teacher_and_never_overwrites(runs, tmp_path, capsys):
    out = tmp_path / "e2"
    assert explain(runs, out, "--no-road", "--labels", "prototype:teacher") == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["unicam_base"] == "teacher" and any("no --base" in n for n in settings["notes"])
    assert settings["label_embeddings"] == "prototype" and settings["road_fraction"] is None
    capsys.readouterr()
    assert explain(runs, out, "--no-road") == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty" in err and err.count("\n") == 1


@pytest.mark.parametrize("road_cam", [None, "hirescam"])
def test_road_lerf_ranks_pixels_by_the_road_cam_setting(runs, tmp_path, monkeypatch, road_cam):
    from distillscope.analysis import scores
    from distillscope.explain import ExplainSettings, run_explain

    used = []

    def recording(name):
        cls = scores.CAM_METHODS[name]

        def make(*args, **kwargs):
            used.append(name)
            return cls(*args, **kwargs)
        return make

    monkeypatch.setattr(scores, "CAM_METHODS", {name: recording(name) for name in scores.CAM_METHODS})
    extra = {} if road_cam is None else {"road_cam": road_cam}
    settings = ExplainSettings(student=str(runs / "student"), teacher=str(runs / "teacher"), data=DATA, out=str(tmp_path / "e"),
                               labels="onehot", limit=16, batch_size=8, grid_images=2, device="cpu", progress=False, **extra)
    result = run_explain(settings)
    expected = road_cam or "gradcam"  # the paper's choice (Fig. 4, Sec. 4.2.2) is the default
    assert used and set(used) == {expected}  # only the LeRF inputs go through scores' CAM
    assert result["settings"]["road_cam"] == expected and result["settings"]["cam"] == "gradcam"
    assert json.loads((tmp_path / "e" / "settings.json").read_text())["road_cam"] == expected
    assert f"pixels ranked by {expected}" in (tmp_path / "e" / "summary.md").read_text()


def test_unknown_road_cam_is_refused_before_any_work(runs, tmp_path):
    from distillscope.errors import DistillscopeError
    from distillscope.explain import ExplainSettings, run_explain

    with pytest.raises(DistillscopeError, match="road_cam 'scorecam' unknown"):
        run_explain(ExplainSettings(student=str(runs / "student"), teacher=str(runs / "teacher"), data=DATA, out=str(tmp_path / "e"),
                                    road_cam="scorecam"))
    assert not (tmp_path / "e").exists()
