"""run.compile and run.cuda_graph: same results as the eager step (the CUDA test needs a GPU; compile is slow on CPU)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from distillscope.config import load_config
from distillscope.engine import Trainer, save_checkpoint
from distillscope.engine.checkpoint import prefixed
from distillscope.errors import DistillscopeError
from distillscope.models import create_model


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "t.safetensors"
    save_checkpoint(path, prefixed("model", create_model("resnet8", num_classes=10).state_dict()), {"model": "resnet8", "num_classes": 10})
    return path


def _assert_close(a: dict, b: dict, rel: float, one_sample: float = 0.0) -> None:
    """Losses within ``rel``; accuracies (%) within ``one_sample`` points: other kernels may flip one borderline image."""
    for key, value in a.items():
        if key != "img_per_s":
            tolerance = one_sample + rel if "top" in key else rel
            assert math.isclose(value, b[key], rel_tol=rel, abs_tol=tolerance), (key, value, b[key])


def test_cuda_graph_is_refused_off_the_gpu(tmp_path, tiny_overrides):
    with pytest.raises(DistillscopeError, match="run.cuda_graph=true needs one CUDA process.*run.device=cpu"):
        Trainer(load_config(None, tiny_overrides + ["run.cuda_graph=true"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cuda_graph_is_refused_for_methods_that_pair_samples_on_the_host(tmp_path, tiny_overrides):
    # a captured batch has no partners: replays would train CS-KD without its own-output teacher
    with pytest.raises(DistillscopeError, match="method 'cskd', which draws partner samples on the host"):
        Trainer(load_config(None, tiny_overrides + ["run.cuda_graph=true", "method={name: cskd}"]), tmp_path / "run")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DISTILLSCOPE_SLOW_TESTS"),
                    reason="torch.compile takes minutes on a small CPU; set DISTILLSCOPE_SLOW_TESTS=1")
def test_compiled_models_train_like_eager_ones_and_keep_their_taps(tmp_path, tiny_overrides, teacher):
    overrides = tiny_overrides + ["epochs=1", "method.name=fitnet", "teacher.name=resnet8", f"teacher.checkpoint={teacher}"]
    eager = Trainer(load_config(None, overrides), tmp_path / "eager").fit()
    compiled = Trainer(load_config(None, overrides + ["run.compile=true"]), tmp_path / "compiled").fit()
    assert compiled["last"]["train/hint"] > 0
    _assert_close(compiled["last"], eager["last"], rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["ce", "kd"])
def test_cuda_graph_step_matches_the_eager_step(tmp_path, tiny_overrides, teacher, method):
    overrides = tiny_overrides + ["run.device=cuda", f"method.name={method}", "data.spec=shapes?n=320&size=16&n_test=40"]
    if method == "kd":
        from distillscope.engine.cache import build_cache

        overrides += ["teacher.name=resnet8", f"teacher.checkpoint={teacher}", f"run.teacher_cache={tmp_path / 'cache'}"]
        assert build_cache(load_config(None, overrides))[0][0].complete  # a graph reads a complete cache only
    eager = Trainer(load_config(None, overrides), tmp_path / "eager").fit()
    graphed_trainer = Trainer(load_config(None, overrides + ["run.cuda_graph=true"]), tmp_path / "graphed")
    graphed = graphed_trainer.fit()
    assert graphed_trainer.graphed.graph is not None and graphed_trainer.graphed.epoch == 1  # captured, and again for epoch 2
    _assert_close(graphed["last"], eager["last"], rel=1e-3, one_sample=100 / 40 + 1e-9)  # the smallest split: 40 test images
