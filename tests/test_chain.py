"""distillscope chain: steps in order, each distilling from the previous run; resumable as a whole."""
import json

import pytest
import yaml

from distillscope.chain import run_chain
from distillscope.config import load_config
from distillscope.cli import main
from distillscope.engine import Trainer, TrainingInterrupted
from distillscope.errors import DistillscopeError

TINY = {
    "epochs": 2, "data": {"spec": "shapes?n=160&size=16&n_test=40", "val_fraction": 0.2, "batch_size": 32, "num_workers": 0},
    "optim": {"lr": 0.05, "schedule": "cosine"}, "run": {"progress": False, "threads": 1, "device": "cpu", "precision": "fp32"},
}


def _recipes(tmp_path):
    teacher = {**TINY, "name": "t", "student": {"name": "resnet14"}, "method": {"name": "ce"}}
    student = {**TINY, "name": "s", "student": {"name": "resnet8"}, "method": {"name": "kd", "T": 2.0},
               "teacher": {"name": "resnet20", "checkpoint": "replaced-by-the-chain"}}
    paths = [tmp_path / "t.yaml", tmp_path / "s.yaml"]
    for path, recipe in zip(paths, (teacher, student)):
        path.write_text(yaml.safe_dump(recipe))
    return paths


def _comparable(row):
    return {k: v for k, v in row.items() if k != "img_per_s"}


def test_chain_resumes_after_an_interruption_and_skips_finished_steps(tmp_path, monkeypatch, capsys):
    paths = _recipes(tmp_path)
    reference = run_chain(paths, tmp_path / "full", echo=lambda _: None)
    assert reference[1]["config"]["teacher"] == {"name": "resnet14", "checkpoint": str(tmp_path / "full" / "0-t"), "skip_keys": []}

    original = Trainer._train_step
    calls = {"n": 0}

    def stop_in_step_1(self, batch, epoch):  # interrupt the student mid-run, after the teacher finished
        out = original(self, batch, epoch)
        if self.cfg.name == "s":
            calls["n"] += 1
            if calls["n"] == 5:
                self._stop.set()
        return out

    monkeypatch.setattr(Trainer, "_train_step", stop_in_step_1)
    with pytest.raises(TrainingInterrupted):
        run_chain(paths, tmp_path / "cut", echo=lambda _: None)
    assert (tmp_path / "cut" / "0-t" / "summary.json").is_file() and not (tmp_path / "cut" / "1-s" / "summary.json").is_file()
    monkeypatch.setattr(Trainer, "_train_step", original)

    messages = []
    resumed = run_chain(paths, tmp_path / "cut", echo=messages.append)
    assert messages[0].endswith("finished, skipped") and messages[1].startswith("chain step 1: resuming")
    assert [_comparable(s["last"]) for s in resumed] == [_comparable(s["last"]) for s in reference]
    assert main(["chain", *map(str, paths), "--out", str(tmp_path / "cut")]) == 0  # all finished: nothing to train
    assert "step 1: s (resnet8)" in capsys.readouterr().out
    assert json.loads((tmp_path / "cut" / "1-s" / "summary.json").read_text())["last"]["epoch"] == 2


def test_chain_needs_two_steps(tmp_path):
    with pytest.raises(DistillscopeError, match="at least two configs"):
        run_chain(_recipes(tmp_path)[:1], tmp_path / "out")


def test_chain_per_seed_and_its_table_row_apart_from_the_same_config_distilled_directly(tmp_path):
    from distillscope.report.tables import read_summaries, table_rows

    paths = _recipes(tmp_path)
    assert main(["chain", *map(str, paths), "--seeds", "0,1", "--out", str(tmp_path / "chain")]) == 0  # one chain per seed
    for seed in (0, 1):
        direct = load_config(paths[1], [f"seed={seed}", "teacher.name=resnet14", f"teacher.checkpoint={tmp_path / 'chain' / 's0' / '0-t'}"])
        Trainer(direct, tmp_path / f"direct-s{seed}").fit()
    assert json.loads((tmp_path / "chain" / "s1" / "1-s" / "chain.json").read_text()) == {"step": 1, "steps": ["t", "s"]}
    assert [json.loads((tmp_path / "chain" / f"s{seed}" / "1-s" / "summary.json").read_text())["seed"] for seed in (0, 1)] == [0, 1]

    folders = ([tmp_path / "chain" / f"s{seed}" / step for seed in (0, 1) for step in ("0-t", "1-s")]
               + [tmp_path / f"direct-s{seed}" for seed in (0, 1)])
    rows = {row["run"]: row for row in table_rows(read_summaries(folders))}
    assert set(rows) == {"t", "t → s", "s"}
    assert rows["t → s"]["seeds"] == [0, 1] and rows["s"]["seeds"] == [0, 1]
    assert rows["t → s"]["notes"] == ""  # each seed distils from its own assistant: expected, not a difference
    assert "teacher.checkpoint" not in rows["s"]["notes"]  # both direct seeds share one teacher
