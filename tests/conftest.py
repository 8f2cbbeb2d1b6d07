"""Shared fixtures. Tests use only data the project makes (shapes) or ../shared/datasets."""
import os
import time

# The reference package `dcor` imports numba, whose default OpenMP layer slows torch 10-40x in the same process.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR10_5K = REPO.parent / "shared" / "datasets" / "cifar10-5k" / "cifar-10-batches-py"

@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep what runs cache (e.g. precision measurements) out of the user's home."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


def wait_for(condition, what: str, seconds: float):
    """Poll ``condition`` every 50 ms; fail naming ``what`` after ``seconds`` (generous: the CI machine is shared)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# Tiny tensors run fastest (and least disturbed by other processes) on one thread.
torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides():
    """Overrides for a fast CPU run: small shapes set at 16x16, resnet8, 2 epochs, fp32 (``auto`` would pick bf16
    on a CPU with native bf16, and the tolerances here are fp32's; tests/test_precision.py covers ``auto``)."""
    return [
        "epochs=2", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32",
        "data.num_workers=0", "student.name=resnet8", "optim.lr=0.05", "optim.schedule=cosine",
        "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32",
    ]


@pytest.fixture(autouse=True)
def teacher_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Runs with run.teacher_cache=auto keep their cache in the test session's temp folder, not ~/.cache."""
    monkeypatch.setenv("DISTILLSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "teacher-cache"))


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(trainer, step)``: run ``trainer.fit()`` until optimiser step ``step``, as if a signal came
    then; returns the :class:`TrainingInterrupted` it raised (the run is checkpointed, ready for ``--resume``)."""
    from distillscope.engine import TrainingInterrupted

    def run(trainer, step: int):
        original = trainer._train_step

        def step_then_stop(batch, epoch):
            out = original(batch, epoch)
            if trainer.step == step:
                trainer._stop.set()
            return out

        monkeypatch.setattr(trainer, "_train_step", step_then_stop)
        with pytest.raises(TrainingInterrupted) as err:
            trainer.fit()
        return err.value

    return run

