import pytest
import torch
from torch import nn

from distillscope.errors import DistillscopeError
from distillscope.models import FeatureTaps, create_model, resolve_tap


def test_aliases_resolve_to_the_declared_paths():
    model = create_model("resnet20", num_classes=10)
    assert resolve_tap(model, "stage:0") == (model.stage_taps[0], "output")
    assert resolve_tap(model, "stage:-1") == (model.stage_taps[-1], "output")
    assert resolve_tap(model, "stage:mid") == (model.stage_taps[1], "output")
    assert resolve_tap(model, "embedding") == ("fc", "input")
    assert resolve_tap(model, "preact:2")[1] == "input"


def test_taps_match_manual_hooks_and_embedding_feeds_the_classifier():
    model = create_model("resnet8", num_classes=10).eval()
    manual = {}
    model.layer2.register_forward_hook(lambda m, i, o: manual.setdefault("layer2", o))
    with FeatureTaps(model, {"mid": "layer2", "emb": "embedding", "pre": "preact:-1", "last": "stage:-1"}) as taps:
        x = torch.randn(3, 3, 32, 32)
        logits, feats = taps(x)
    assert torch.equal(feats["mid"], manual["layer2"])
    assert torch.allclose(model.fc(feats["emb"]), logits)
    assert torch.allclose(feats["pre"].relu(), feats["last"])
    assert feats["emb"].shape == (3, model.fc.in_features)


def test_remove_takes_every_hook_off():
    model = create_model("resnet8", num_classes=10)
    taps = FeatureTaps(model, ["stage:0", "embedding"])
    assert any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    taps.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_gradients_flow_through_tapped_features():
    model = create_model("resnet8", num_classes=10)
    _, feats = FeatureTaps(model, ["stage:1"])(torch.randn(2, 3, 32, 32))
    feats["stage:1"].pow(2).mean().backward()
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None


def test_plain_module_paths_work_on_any_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    logits, feats = FeatureTaps(model, {"conv": "0", "flat": "3@input"})(torch.randn(2, 3, 5, 5))
    assert feats["conv"].shape == (2, 4, 3, 3) and feats["flat"].shape == (2, 36)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("layer9", "no module at path 'layer9'"),
        ("layer1.7", "nearby paths: layer1"),
        ("stage:5", "has 3 stages"),
        ("stage:x", "must be an integer or 'mid'"),
        ("layer1@output", "only '@input'"),
    ],
)
def test_bad_tap_specs_name_the_problem(spec, message):
    with pytest.raises(DistillscopeError, match=message):
        FeatureTaps(create_model("resnet8", num_classes=10), [spec])


def test_aliases_on_models_without_declarations_explain_themselves():
    with pytest.raises(DistillscopeError, match="declares no stage"):
        FeatureTaps(nn.Sequential(nn.Linear(2, 2)), ["stage:0"])


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.used(x)


def test_unused_module_is_reported():
    model = _WithUnused()
    with pytest.raises(DistillscopeError, match="did not fire"):
        FeatureTaps(model, ["unused"])(torch.randn(1, 2))


def _torchvision():
    try:
        import torchvision

        return torchvision
    except Exception:  # PyPI's torchvision fails to load on CPU-only torch builds
        return None


@pytest.mark.skipif(_torchvision() is None, reason="torchvision does not import here")
def test_taps_on_a_torchvision_model():
    model = _torchvision().models.resnet18(num_classes=5).eval()
    logits, feats = FeatureTaps(model, {"l3": "layer3", "pool": "fc@input"})(torch.randn(1, 3, 64, 64))
    assert feats["l3"].shape[1] == 256 and torch.allclose(model.fc(feats["pool"]), logits, atol=1e-5)
