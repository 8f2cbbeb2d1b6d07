"""The HTML report end to end on tiny shapes runs: numbers against independent evaluations, a self-contained
page, sections chosen or dropped, the CLI, the demo hook, and the page loaded in headless Chromium."""
import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from distillscope.cli import main
from distillscope.config import load_config
from distillscope.data import Loader, load_data
from distillscope.engine import Trainer, collect_logits, load_model
from distillscope.errors import DistillscopeError
from distillscope.report.html import ReportSettings, build_report, write_demo_report

DATA = "shapes?n=160&size=16&n_test=40"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # Debian's package (.ci/run installs it)
SMALL = {"tsne_points": 30, "cka_images": 30, "progress": False, "device": "cpu", "batch_size": 16}
ANALYSES = {  # the merged analyses at toy sizes
    "explain": {"labels": "onehot", "batch_size": 8, "grid_images": 3, "road_fraction": None},
    "interaction": {"components": 5},
    "infoplane": {"n_fit": 48, "n_eval": 24, "probe": {"epochs": 2, "width": 8}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = ["epochs=1", f"data.spec={DATA}", "data.val_fraction=0.2", "data.batch_size=32", "data.num_workers=0", "student.name=resnet8",
              "optim.lr=0.05", "run.progress=false", "run.threads=1", "run.device=cpu"]
    kd = ["method.name=kd", "teacher.name=resnet8", f"teacher.checkpoint={root / 'teacher'}"]
    Trainer(load_config(None, common + ["name=t", "method.name=ce", "seed=5"]), root / "teacher").fit()
    Trainer(load_config(None, common + ["name=b", "method.name=ce", "seed=1"]), root / "base").fit()
    Trainer(load_config(None, common + ["name=s", "seed=0", "run.keep_every=1"] + kd), root / "kd0").fit()
    Trainer(load_config(None, common + ["name=s", "seed=1"] + kd), root / "kd1").fit()
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "r"
    groups = {"KD": [str(runs / "kd0"), str(runs / "kd1")], "base": [str(runs / "base")]}
    settings = ReportSettings(out=str(out), teacher=str(runs / "teacher"), groups=groups, **SMALL, **ANALYSES)
    result = build_report(settings)
    return result, json.loads(result["json"].read_text()), result["html"].read_text()


def eval_logits(run: Path):
    model, state = load_model(run)
    loader = Loader(load_data(DATA).test, 7, tuple(state["mean"]), tuple(state["std"]))
    return collect_logits(model, loader)[:2]


def test_numbers_match_independent_evaluations(runs, report):
    _, record, _ = report
    teacher, targets = eval_logits(runs / "teacher")
    student, _ = eval_logits(runs / "kd0")
    calibration = record["sections"]["calibration"]["numbers"]["per_run"]
    assert calibration["KD s0"]["top1"] == pytest.approx(
        100 * sum(int(a == t) for a, t in zip(student.argmax(1).tolist(), targets.tolist())) / 40)
    same = sum(int(a == b) for a, b in zip(student.argmax(1).tolist(), teacher.argmax(1).tolist()))
    agreement = record["sections"]["agreement"]["numbers"]["per_run"]
    assert agreement["KD s0"]["agreement"] == pytest.approx(100 * same / 40)
    assert set(agreement) == {"KD s0", "KD s1", "base s1"}  # every run but the teacher
    p, q = teacher.double().softmax(1).numpy(), student.double().softmax(1).numpy()
    assert agreement["KD s0"]["kl"] == pytest.approx(np.mean([np.sum(p[i] * np.log(p[i] / q[i])) for i in range(40)]), rel=1e-5)

    # per-class gain of KD (mean over its two seeds) over the base, by loops
    base, _ = eval_logits(runs / "base")
    other, _ = eval_logits(runs / "kd1")
    gains = record["sections"]["per_class"]["numbers"]["gains"]["KD"]
    for c in range(10):
        rows = [i for i in range(40) if targets[i] == c]
        if rows:
            acc = lambda z: 100 * np.mean([int(z[i].argmax()) == c for i in rows])  # noqa: E731
            assert gains[c] == pytest.approx((acc(student) + acc(other)) / 2 - acc(base))

    # classifier-weight L1 from the raw fc weights
    def corr(run):
        w = load_model(run)[0].fc.weight.detach().double().numpy()
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        return w @ w.T

    diff = np.abs(corr(runs / "teacher") - corr(runs / "kd1"))
    assert record["sections"]["weights"]["numbers"]["l1_per_run"]["KD s1"] == pytest.approx(diff[~np.eye(10, dtype=bool)].mean())
    cka = np.array(record["sections"]["cka"]["numbers"]["cka_vs_teacher"]["student"])
    assert cka.shape == (4, 4) and np.all((cka > 0) & (cka <= 1 + 1e-9))
    assert len(record["sections"]["tsne"]["numbers"]["rows"]) == 30
    assert record["groups"]["teacher"] == [{"run": str((runs / "teacher").resolve()), "seed": 5}]


def test_merged_analyses_have_their_sections(runs, report):
    result, record, page = report
    assert record["skipped"] == {}, record["skipped"]
    interaction = record["sections"]["interaction"]["numbers"]
    assert set(interaction["groups"]) == {"KD", "base", "teacher"} and interaction["points"] == 40 and interaction["models"] == 4
    assert interaction["groups"]["KD"]["models"] == [str((runs / r).resolve()) for r in ("kd0", "kd1")]
    assert interaction["settings"]["layer"] == "stage:-1" and set(interaction["layer_dims"].values()) == {1024}  # resnet8 64×4×4 at 16 px
    assert [w["kind"] for w in interaction["warnings"]] == ["small_groups"]
    assert interaction["warnings"][0]["groups"] == {"KD": 2, "base": 1, "teacher": 1}
    section = re.search(r'<section id="interaction">(.*?)</section>', page, re.S).group(1)
    assert "compares groups of models" in section and section.index("⚠ small groups") < section.index("<table>")
    points = record["sections"]["infoplane"]["numbers"]["points"]
    assert [(p["epoch"], p["layer"]) for p in points] == [(1, "embedding")]  # only kd0 kept epochs
    cam = record["sections"]["cam"]["numbers"]
    assert cam["settings"]["images"] == 40 and {r["reference"] for r in cam["scores"]} == {"teacher", "base"}
    for name in ("grid.png", "scores.csv", "summary.md", "settings.json"):
        assert (result["html"].parent / name).is_file(), name


def test_page_is_self_contained_and_states_its_basis(report):
    result, record, page = report
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "the page must load nothing from outside"
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == page.count("<img") >= 8
    from PIL import Image

    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    for name in record["sections"]:
        section = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S).group(1)
        assert "Computed on:" in section
    assert "N = 40 images" in page and "seeds 0,1" in page
    for name, reason in record["skipped"].items():
        assert f'<section id="{name}" class="skipped">' in page and reason.split("(")[0].strip() in page
    json.dumps(record, allow_nan=False)  # strict JSON: NaN written as null


def test_a_teacher_group_holding_the_reference_teacher_is_compared_without_it(runs, tmp_path):
    groups = {"kd": [str(runs / "kd0")], "teacher": [str(runs / "teacher"), str(runs / "base")]}  # base stands in for a 2nd teacher seed
    result = build_report(ReportSettings(out=str(tmp_path / "t"), teacher=str(runs / "teacher"), groups=groups,
                                         only=["agreement", "weights"], **SMALL))
    record = json.loads(result["json"].read_text())
    assert set(record["sections"]["weights"]["numbers"]["l1_per_run"]) == {"kd s0", "teacher s1"}
    assert set(record["sections"]["agreement"]["numbers"]["per_group"]) == {"kd", "teacher"}
    assert "<td>teacher</td><td>1</td>" in result["html"].read_text()


def test_sections_can_be_chosen_and_errors_are_one_line(runs, tmp_path):
    result = build_report(ReportSettings(out=str(tmp_path / "a"), student=str(runs / "kd0"), only=["accuracy", "per_class"], **SMALL))
    record = json.loads(result["json"].read_text())
    assert list(record["sections"]) == ["accuracy"] and "no base run" in record["skipped"]["per_class"]
    assert record["teacher"] == str((runs / "teacher").resolve())  # read from the student's config
    result = build_report(ReportSettings(out=str(tmp_path / "v"), student=str(runs / "kd0"), split="val", only=["calibration"], **SMALL))
    assert json.loads(result["json"].read_text())["images"] == len(load_data(DATA, 0.2, 0).val)
    with pytest.raises(DistillscopeError, match="unknown report section 'cams'"):
        build_report(ReportSettings(out=str(tmp_path / "b"), student=str(runs / "kd0"), skip=["cams"]))
    with pytest.raises(DistillscopeError, match="already exists and is not empty"):
        build_report(ReportSettings(out=str(tmp_path / "a"), student=str(runs / "kd0")))
    with pytest.raises(DistillscopeError, match="--bins 0: must be at least 1"):
        build_report(ReportSettings(out=str(tmp_path / "d"), student=str(runs / "kd0"), bins=0))
    with pytest.raises(DistillscopeError, match="not a finished run folder"):
        build_report(ReportSettings(out=str(tmp_path / "c"), student=str(tmp_path)))


def test_cli_report(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["explain", "--group", f"kd={runs / 'kd0'},{runs / 'kd1'}", "--base", str(runs / "base"), "--only", "agreement", "weights",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert f"->  {out / 'report.html'}" in capsys.readouterr().out
    record = json.loads((out / "report.json").read_text())
    assert set(record["groups"]) == {"kd", "base", "teacher"} and set(record["sections"]) == {"agreement", "weights"}
    assert main(["explain", "--group", "kd", "--out", str(tmp_path / "x")]) == 2
    assert "NAME=RUN" in capsys.readouterr().err


def test_write_demo_report(runs, tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    for role, run in (("teacher", "teacher"), ("ce_student", "base"), ("kd_student", "kd0")):
        (demo / role).symlink_to(runs / run)
    path = write_demo_report(demo, only=["agreement"], progress=False, device="cpu")
    assert path == demo / "report" / "report.html" and path.is_file()
    record = json.loads((demo / "report" / "report.json").read_text())
    assert set(record["groups"]) == {"KD student", "CE student", "teacher"}
    assert record["base"] == str((runs / "base").resolve())


def chromium(page: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium as root in a sandbox without network: no sandbox, GPU, updates, sync or first-run, a fresh profile."""
    with tempfile.TemporaryDirectory() as profile:
        command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                   "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *flags, page.resolve().as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def page_check(page: Path) -> tuple[str, list[str]]:
    """The page's own verdict (the <body> attributes its inline script sets) and the console errors."""
    run = chromium(page, "--dump-dom")
    body = re.search(r"<body[^>]*>", run.stdout)
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    return body.group(0) if body else "", console


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no chromium here (Debian: apt-get install chromium; .ci/run installs it)")
def test_page_in_a_real_browser(report, tmp_path):
    result, _, page = report
    body, console = page_check(result["html"])
    assert f'data-images="ok:{page.count("<img")}"' in body and 'data-errors="0"' in body, body
    assert console == []
    height = min(int(re.search(r'data-height="(\d+)"', body).group(1)), 16000)
    shot = result["html"].with_name("report.png")  # the whole page, kept beside the report
    chromium(result["html"], "--hide-scrollbars", f"--window-size=1280,{height}", f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, height) and height > 3000
        assert len(np.unique(np.asarray(image.convert("L").resize((64, 300))))) > 20  # not a blank page
    # the check can fail: a broken image and a script error are caught
    bad = tmp_path / "bad.html"
    bad.write_text(page.replace("</main>", '<img src="data:image/png;base64,AAAA"><script>notDefined()</script></main>'))
    body, console = page_check(bad)
    assert 'data-images="broken:1"' in body and 'data-errors="2"' in body and any("notDefined" in line for line in console)
