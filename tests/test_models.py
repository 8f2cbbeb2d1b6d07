"""Model zoo: registration, shapes, parameter counts and the tap contract."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from distillscope.errors import UnknownNameError
from distillscope.models import create_model, list_models

# Published CRD/RepDistiller sizes (millions of parameters, 100 classes).
PUBLISHED = {
    "resnet8": 0.08, "resnet20": 0.28, "resnet32": 0.47, "resnet44": 0.67,
    "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    # resnet14: the brief's 0.17M does not fit RepDistiller's resnet14 (ResNet(14, [16,16,32,64])),
    # which counts 181,108 by hand (stem 464, stages 9,344 + 33,088 + 131,712, fc 6,500).
    "resnet14": 0.181,
    "wrn_16_1": 0.18, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26,
    "vgg8": 3.96, "vgg13": 9.46, "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36,
    "resnet18": 11.2, "resnet34": 21.3, "resnet50": 23.7,
}
# No published figure to check against: computed values, pinned so changes are noticed.
COMPUTED = {"vgg11": 9.277, "vgg16": 14.774, "vgg19": 20.087, "resnet101": 42.697}

EXPECTED_NAMES = set(PUBLISHED) | set(COMPUTED)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny batches: one intra-op thread is far faster than contending for shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@lru_cache(maxsize=None)
def model100(name: str) -> nn.Module:
    return create_model(name, num_classes=100)  # train mode: BN uses batch stats, not an identity


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_zoo():
    assert set(list_models()) >= EXPECTED_NAMES
    assert len(EXPECTED_NAMES) == 25


@lru_cache(maxsize=None)
def traced(name: str):
    """One forward pass of the 100-class model with every declared tap hooked.

    Returns the logits and ``{tap: (tensor seen by the hook, clone taken at hook time)}``.
    """
    model = model100(name)
    modules = dict(model.named_modules())
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for tap in dict.fromkeys(model.stage_taps + model.preact_taps + (model.embedding_tap,)):
        path, _, where = tap.partition("@")
        assert where in ("", "input"), tap
        assert path in modules, f"{name}: tap {tap!r} does not resolve"

        def hook(module, args, output, tap=tap, use_input=bool(where)):
            t = args[0] if use_input else output
            captured[tap] = (t, t.detach().clone())

        handles.append(modules[path].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(X)
    finally:
        for h in handles:
            h.remove()
    return logits, captured


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_builds_and_maps_batch_to_logits(name, num_classes):
    if num_classes == 100:
        model, out = model100(name), traced(name)[0]
    else:
        model = create_model(name, num_classes=num_classes)
        with torch.no_grad():
            out = model(X)
    assert model.name == name
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == num_classes
    assert isinstance(out, torch.Tensor) and out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,millions", sorted(PUBLISHED.items()))
def test_param_count_matches_published(name, millions):
    # published figures are rounded to 0.01M: allow 2% or that rounding, whichever is larger
    assert n_params(model100(name)) == pytest.approx(millions * 1e6, rel=0.02, abs=0.005e6)


@pytest.mark.parametrize("name,millions", sorted(COMPUTED.items()))
def test_param_count_pinned(name, millions):
    assert n_params(model100(name)) == pytest.approx(millions * 1e6, rel=0.001)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_taps_resolve_and_describe_stages(name):
    model = model100(name)
    modules = dict(model.named_modules())
    assert model.embedding_tap == "fc@input"
    for tap in model.stage_taps + model.preact_taps + (model.embedding_tap,):
        assert tap.split("@")[0] in modules, f"{name}: tap {tap!r} does not resolve"
    assert len(model.stage_taps) == len(model.preact_taps) >= 3
    _, captured = traced(name)

    # nothing downstream modified a captured tensor in place
    for tap, (seen, snapshot) in captured.items():
        assert torch.equal(seen, snapshot), f"{name}: {tap} was modified in place"

    stages = [captured[t][1] for t in model.stage_taps]
    assert all(s.ndim == 4 and s.shape[0] == 2 for s in stages)
    sizes = [s.shape[-1] for s in stages]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1], sizes
    last = stages[-1]
    assert last.shape[1] == model.fc.in_features
    embedding = captured["fc@input"][1]
    assert torch.allclose(embedding, F.adaptive_avg_pool2d(last, 1).flatten(1), atol=1e-5)

    # preact is the tensor the stage's final ReLU acts on (or the stage itself when linear)
    for stage_tap, pre_tap, stage in zip(model.stage_taps, model.preact_taps, stages):
        pre = captured[pre_tap][1]
        assert pre.shape == stage.shape, (stage_tap, pre_tap)
        if pre_tap != stage_tap:
            assert (pre < 0).any(), f"{name}: {pre_tap} has no negative values, not a pre-activation"
            assert torch.allclose(pre.relu(), stage), (stage_tap, pre_tap)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_no_inplace_modules(name):
    offenders = [n for n, m in model100(name).named_modules() if getattr(m, "inplace", False)]
    assert offenders == []


def test_unknown_model_lists_choices():
    with pytest.raises(UnknownNameError) as info:
        create_model("nope", num_classes=10)
    message = str(info.value)
    assert "nope" in message and "resnet8x4" in message and "shufflenetv2" in message
