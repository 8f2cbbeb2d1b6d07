"""Experiment trackers beside ``metrics.csv``: TensorBoard, MLflow, Weights & Biases (``run.loggers``).

Each is an optional extra (``pip install 'distillscope[tensorboard]'``, ``[mlflow]``, ``[wandb]``). A tracker
gets the resolved config once as flattened hyper-parameters (``data.batch_size``, ``method.T``, ...), every
epoch's metrics row with the epoch as its step, and the final summary. Only rank 0 creates trackers. On
``--resume`` the MLflow and W&B runs continue under the ids kept in ``RUN/trackers.json``, and only epochs
finished after the resume are logged, so no step is logged twice. A tracker is a class here taking
``(run folder, config dict, ids)`` with ``log(row, step)`` and ``finish(summary)``; ``summary`` is ``None`` when the
run stopped early (interrupted or failed), and ``RunLogger`` (``engine/logging.py``) calls them.

- ``tensorboard``: event files in ``RUN/tensorboard/``; hyper-parameters with the final metrics (HParams tab).
- ``mlflow``: ``MLFLOW_TRACKING_URI`` if set, else a local file store ``RUN/mlruns/`` (MLflow 3 keeps its file
  store only on request: ``MLFLOW_ALLOW_FILE_STORE`` is set to true for this default unless already set).
- ``wandb``: ``wandb.init`` in ``RUN/wandb/``, so ``WANDB_MODE=offline`` (or ``disabled``) and ``WANDB_PROJECT``
  apply as usual (project ``distillscope`` otherwise).
"""
from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

from ..config import flatten
from ..errors import DistillscopeError

TRACKERS = ("tensorboard", "mlflow", "wandb")  # besides "csv": metrics.csv/jsonl, always written


def require(names: list[str]) -> None:
    """Fail in one line, before a run starts, when a tracker's package is not installed."""
    for name in names:
        if name in TRACKERS:
            try:
                importlib.import_module(name)
            except ImportError:
                raise DistillscopeError(f"run.loggers: '{name}' needs the {name} package; "
                                        f"install it with pip install 'distillscope[{name}]'") from None


def hyperparameters(config: dict) -> dict[str, str | int | float | bool]:
    """The config as flat hyperparameters: dotted keys, lists and None as JSON text."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in flatten(config).items()}


def scalars(row: dict | None, prefix: str = "") -> dict[str, float]:
    """The numeric entries of a metrics row (not ``epoch``)."""
    return {f"{prefix}{k}": float(v) for k, v in (row or {}).items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def summary_scalars(summary: dict) -> dict[str, float]:
    """``best/val/top1``, ``last/test/top1``, ... and ``seconds``: what a tracker keeps as the run's result."""
    out = {**scalars(summary.get("best"), "best/"), **scalars(summary.get("last"), "last/")}
    if summary.get("seconds") is not None:
        out["seconds"] = float(summary["seconds"])
    return out


class TensorBoardTracker:
    def __init__(self, out: Path, config: dict, ids: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.config = SummaryWriter(str(out / "tensorboard")), hyperparameters(config)

    def log(self, row: dict, step: int) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, summary: dict | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        if summary is not None:
            step = (summary.get("last") or {}).get("epoch")
            metrics = {f"summary/{k}": v for k, v in summary_scalars(summary).items()}
            for proto in hparams(self.config, metrics):  # into this run's own event file, not a sub-folder as add_hparams does
                self.writer.file_writer.add_summary(proto, step)
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        self.writer.close()


class MLflowTracker:
    def __init__(self, out: Path, config: dict, ids: dict):
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (out / "mlruns").resolve().as_uri()
        self.client = mlflow.MlflowClient(uri)
        if ids.get("mlflow"):
            self.run_id = ids["mlflow"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "distillscope")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = ids["mlflow"] = self.client.create_run(experiment_id, run_name=out.name).info.run_id
        params = [mlflow.entities.Param(k, str(v)) for k, v in hyperparameters(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, row: dict, step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * time.time())
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in scalars(row).items()])

    def finish(self, summary: dict | None) -> None:
        if summary is None:
            self.client.set_terminated(self.run_id, status="KILLED")
            return
        self.log({f"summary/{k}": v for k, v in summary_scalars(summary).items()}, (summary.get("last") or {}).get("epoch", 0))
        for key in ("precision", "machine"):
            self.client.set_tag(self.run_id, key, str(summary.get(key)))
        self.client.set_terminated(self.run_id)


class WandbTracker:
    def __init__(self, out: Path, config: dict, ids: dict):
        import wandb

        resumed = "wandb" in ids
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "distillscope"), name=out.name, dir=str(out), id=ids.get("wandb"),
                              resume="allow", config=None if resumed else hyperparameters(config))
        ids["wandb"] = self.run.id

    def log(self, row: dict, step: int) -> None:
        self.run.log(scalars(row), step=step)

    def finish(self, summary: dict | None) -> None:
        if summary is not None:
            self.run.summary.update({**summary_scalars(summary), "precision": summary.get("precision"), "machine": summary.get("machine")})
        self.run.finish(exit_code=0 if summary is not None else 1)


CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


def open_trackers(names: list[str], out: Path, config: dict) -> list:
    """The trackers ``names`` asks for, opened for run folder ``out``; their run ids are kept in ``trackers.json``."""
    names = [n for n in names if n in CLASSES]
    if not names:
        return []
    require(names)
    state = out / "trackers.json"
    ids = json.loads(state.read_text()) if state.is_file() else {}
    trackers = [CLASSES[name](out, config, ids) for name in names]
    if ids:
        state.write_text(json.dumps(ids))
    return trackers
