"""run.loggers: TensorBoard, MLflow and W&B (offline) get every epoch once, the flattened config and the summary."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillscope.config import load_config
from distillscope.engine import Trainer
from distillscope.errors import DistillscopeError

SRC = Path(__file__).resolve().parents[1] / "src"


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train(out: Path, overrides: list[str], loggers: str, interrupt=None, step: int = 5) -> dict:
    cfg = load_config(None, overrides + ["epochs=3", f"run.loggers=[csv,{loggers}]"])
    if interrupt is None:
        return Trainer(cfg, out).fit()
    interrupt(Trainer(cfg, out), step)  # in the middle of epoch 2 (4 steps per epoch)
    return Trainer(cfg, out, resume=True).fit()


def _tensorboard(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return acc


def _mlflow(uri: str):
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def _wandb_records(run: Path):
    """Every record of the run's offline ``.wandb`` files (W&B's LevelDB-style log: 7-byte header, 32 KiB blocks,
    chunks of ``<crc32, length, type>``), in order."""
    from wandb.proto import wandb_internal_pb2

    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, chunks = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunks += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a full record, or the last chunk of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(chunks)
                chunks = b""
                yield record


def _wandb_finished(run: Path, sittings: int = 1) -> None:
    """Wait until wandb-core, which writes the offline files on its own time after ``finish()``, has written each sitting's exit record."""
    deadline = time.time() + 60
    while sum(r.WhichOneof("record_type") == "exit" for r in _wandb_records(run)) < sittings and time.time() < deadline:
        time.sleep(0.2)


def _wandb_history(run: Path, sittings: int = 1) -> list[dict]:
    _wandb_finished(run, sittings)
    rows = []
    for record in _wandb_records(run):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_tensorboard_has_every_epochs_scalars_and_the_config(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.plugins.hparams import plugin_data_pb2

    summary = _train(tmp_path / "run", tiny_overrides, "tensorboard")
    rows, acc = _rows(tmp_path / "run"), _tensorboard(tmp_path / "run")
    for key in ("val/top1", "test/top1", "train/loss", "lr"):
        assert [(e.step, e.value) for e in acc.Scalars(key)] == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    assert [e.value for e in acc.Scalars("summary/best/test/top1")] == [pytest.approx(summary["best"]["test/top1"])]
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["data.batch_size"].number_value == 32 and hparams["student.name"].string_value == "resnet8"
    assert not (tmp_path / "run" / "mlruns").exists() and not (tmp_path / "run" / "wandb").exists()


def test_csv_alone_writes_no_tracker_files(tmp_path, tiny_overrides):
    Trainer(load_config(None, tiny_overrides + ["epochs=1"]), tmp_path / "run").fit()
    assert [r["epoch"] for r in _rows(tmp_path / "run")] == [1]
    assert not {"tensorboard", "mlruns", "wandb", "trackers.json"} & {p.name for p in (tmp_path / "run").iterdir()}


def test_mlflow_store_has_the_params_metrics_and_summary(tmp_path, tiny_overrides, monkeypatch):
    pytest.importorskip("mlflow")
    store = (tmp_path / "store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # the user's store wins over RUN/mlruns
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    summary = _train(tmp_path / "run", tiny_overrides, "mlflow")
    assert not (tmp_path / "run" / "mlruns").exists()
    client, run = _mlflow(store)
    assert run.data.params["data.batch_size"] == "32" and run.data.params["method.name"] == "ce" and run.data.params["epochs"] == "3"
    rows = _rows(tmp_path / "run")
    history = client.get_metric_history(run.info.run_id, "val/top1")
    assert sorted((m.step, m.value) for m in history) == [(r["epoch"], pytest.approx(r["val/top1"])) for r in rows]
    assert run.data.metrics["summary/last/test/top1"] == pytest.approx(summary["last"]["test/top1"])
    assert run.data.tags["precision"] == "fp32" and run.info.status == "FINISHED"


def test_wandb_offline_run_has_the_history_config_and_summary(tmp_path, tiny_overrides, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = _train(tmp_path / "run", tiny_overrides, "wandb")
    rows, history = _rows(tmp_path / "run"), _wandb_history(tmp_path / "run")
    assert [(h["_step"], h["val/top1"]) for h in history] == [(r["epoch"], pytest.approx(r["val/top1"])) for r in rows]
    records = list(_wandb_records(tmp_path / "run"))
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "run" for u in r.run.config.update}
    assert config["data.batch_size"] == 32 and config["student.name"] == "resnet8"
    summaries = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "summary"
                 for u in r.summary.update if u.key}
    assert summaries["best/test/top1"] == pytest.approx(summary["best"]["test/top1"]) and summaries["precision"] == "fp32"


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_a_resumed_run_logs_each_epoch_once(tracker, tmp_path, tiny_overrides, interrupt_at, monkeypatch):
    pytest.importorskip(tracker)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, RUN/mlruns, which the tracker allows
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    _train(run, tiny_overrides, tracker, interrupt_at)
    expected = [(r["epoch"], pytest.approx(r["test/top1"])) for r in _rows(run)]
    assert [e for e, _ in expected] == [1, 2, 3]
    if tracker == "tensorboard":
        logged = [(e.step, e.value) for e in _tensorboard(run).Scalars("test/top1")]
    elif tracker == "mlflow":
        client, found = _mlflow((run / "mlruns").as_uri())  # one MLflow run, continued under the id in trackers.json
        assert found.info.run_id == json.loads((run / "trackers.json").read_text())["mlflow"] and found.info.status == "FINISHED"
        logged = [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "test/top1")]
    else:
        assert len(list(run.glob("wandb/offline-run-*"))) == 2  # both sittings, one W&B run id
        # offline-run-DATE_TIME-ID, with "-1" appended when both sittings start within the same second
        assert len({p.name.split("-")[3] for p in run.glob("wandb/offline-run-*")}) == 1
        logged = [(h["_step"], h["test/top1"]) for h in _wandb_history(run, sittings=2)]
    assert sorted(logged) == expected


def test_an_unknown_or_missing_tracker_fails_in_one_line_before_the_run(tmp_path, tiny_overrides, monkeypatch):
    with pytest.raises(DistillscopeError, match=r"run.loggers\[1\]: 'comet' is not one of 'csv', 'tensorboard', 'mlflow', 'wandb'"):
        load_config(None, ["run.loggers=[csv,comet]"])
    for name in ("tensorboard", "mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
        cfg = load_config(None, tiny_overrides + [f"run.loggers=[csv,{name}]"])
        with pytest.raises(DistillscopeError) as err:
            Trainer(cfg, tmp_path / name)
        assert str(err.value) == f"run.loggers: '{name}' needs the {name} package; install it with pip install 'distillscope[{name}]'"
        assert not (tmp_path / name).exists()  # refused before the run folder was made


def test_only_rank_0_logs_under_torchrun(tmp_path, tiny_overrides):
    pytest.importorskip("tensorboard")
    args = [a for o in tiny_overrides + ["epochs=1", "run.loggers=[csv,tensorboard]"] for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "distillscope", "train"]
    done = subprocess.run([*launcher, *args, "--out", str(tmp_path / "run")], env=env, capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 1  # one event file: rank 1 wrote none
    assert [e.step for e in _tensorboard(tmp_path / "run").Scalars("val/top1")] == [1]
