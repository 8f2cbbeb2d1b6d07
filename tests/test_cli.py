import json

import pytest

from distillscope.cli import main
from distillscope.demo import run_demo


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_commands(capsys):
    code, out, _ = _run(capsys, "list", "models")
    assert code == 0 and {"resnet8", "wrn_40_2", "resnet32x4", "mobilenetv2"} <= set(out.split())
    assert {"ce", "kd", "fitnet"} <= set(_run(capsys, "list", "methods")[1].split())
    assert {"cifar10", "cifar100", "folder", "shapes"} <= set(_run(capsys, "list", "datasets")[1].split())


def test_train_eval_and_table(tmp_path, capsys, tiny_overrides):
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    code, out, err = _run(capsys, "train", *sets, "--set", "name=cli", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "last epoch test top-1" in out and str(tmp_path / "a") in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    code, out, _ = _run(capsys, "eval", str(tmp_path / "a"), "--data", "shapes?n=160&size=16&n_test=40", "--json", "--device", "cpu")
    metrics = json.loads(out)
    assert code == 0 and metrics["count"] == 40
    assert metrics["top1"] == pytest.approx(summary["best"]["test/top1"])
    assert _run(capsys, "train", *sets, "--set", "name=cli", "--set", "seed=1", "--out", str(tmp_path / "b"))[0] == 0
    code, out, _ = _run(capsys, "table", str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 0 and "| cli | resnet8 | ce | fp32 | 0, 1 |" in out and "±" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--set", "student.name=resnet9"], "unknown model 'resnet9'"),
        (["train", "--resume"], "--resume needs --out"),
        (["eval", "/no/such/run", "--data", "shapes"], "does not exist"),
        (["table", "/no/such/run"], "has no summary.json"),
    ],
)
def test_errors_are_one_clear_line(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("distillscope: error:")


def test_demo_prints_the_comparison_and_never_reuses_a_folder(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    rows = run_demo(tmp_path / "demo", epochs=1, n=120, n_test=40, size=16, report=False)
    out = capsys.readouterr().out
    assert [r["role"] for r in rows] == ["teacher", "ce_student", "kd_student"]
    assert "| kd_student | resnet8 | kd | 0 |" in out and "| teacher | resnet20 | ce | 0 |" in out
    assert "Verdict: the KD student beats the CE student by" in out
    assert (tmp_path / "demo-2" / "kd_student" / "summary.json").is_file()
    assert not any((tmp_path / "demo").iterdir())


def _fake_rows(accuracies: dict[int, tuple[float, float, float]]) -> list[dict]:
    rows = []
    for seed, values in accuracies.items():
        for role, acc in zip(("teacher", "ce_student", "kd_student"), values):
            summary = {"student": "m", "method": "x", "last": {"test/top1": acc}, "best": {"test/top1": acc - 1}, "precision": "fp32",
                       "machine": "cpu"}
            rows.append({"role": role, "seed": seed, "summary": summary, "seconds": 1.0})
    return rows


def test_demo_table_and_verdict_over_seeds():
    from distillscope.demo import format_table, verdict

    rows = _fake_rows({0: (90.0, 70.0, 75.0), 1: (92.0, 72.0, 71.0)})
    table = format_table(rows)
    assert "| ce_student | m | x | 0, 1 | 71.00 ± 1.41% | 70.00 ± 1.41% |" in table and "precision fp32; cpu" in table
    text = verdict(rows)  # KD - CE: +5 and -1 -> +2.00 ± 4.24; teacher - CE: +20 both
    assert "seed 1: teacher 92.00%, CE student 72.00%, KD student 71.00% (KD - CE -1.00)" in text
    assert "by +2.00 ± 4.24 points" in text and "(in 1 of 2 seeds)" in text and "+20.00 ± 0.00 points above" in text
    assert "did not help in every seed" in text


def test_demo_seeds_flag_is_checked(capsys):
    code, out, err = _run(capsys, "demo", "--seeds", "a,b")
    assert code == 2 and "--seeds 'a,b': expected seeds like 0,1,2 or a range like 0-4" in err


def test_eval_reproduces_a_bf16_channels_last_run_exactly(tmp_path, capsys, tiny_overrides):
    sets = [a for o in tiny_overrides + ["epochs=1", "run.precision=bf16", "run.channels_last=true"] for a in ("--set", o)]
    assert _run(capsys, "train", *sets, "--out", str(tmp_path / "r"))[0] == 0
    best = json.loads((tmp_path / "r" / "summary.json").read_text())["best"]
    out = _run(capsys, "eval", str(tmp_path / "r"), "--data", "shapes?n=160&size=16&n_test=40", "--json", "--device", "cpu")[1]
    metrics = json.loads(out)
    assert metrics["top1"] == best["test/top1"] and metrics["nll"] == pytest.approx(best["test/nll"], abs=1e-6)


def test_version(capsys):
    import distillscope

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"distillscope {distillscope.__version__}"


def test_threads_sets_torchs_cpu_threads_for_the_command(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["--threads", "1", "list", "methods"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["--threads", "0", "list", "methods"]) == 2
    assert "--threads 0: give at least 1" in capsys.readouterr().err
