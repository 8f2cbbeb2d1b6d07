"""Grad-CAM / HiResCAM against closed forms on a hand-built linear model."""
import numpy as np
import pytest
import torch
from torch import nn

from distillscope.analysis.cam import GradCAM, HiResCAM, class_logit, minmax_normalise, softmax_target
from distillscope.errors import DistillscopeError

K, H, W, C = 3, 5, 4, 4


def linear_model(seed=0):
    """x -> A = 1x1 conv (no bias) -> logits = W_c · vec(A). Every gradient is known in closed form."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, K, 1, bias=False), nn.Flatten(), nn.Linear(K * H * W, C, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(K, 3, 1, 1, generator=gen))
        model[2].weight.copy_(torch.randn(C, K * H * W, generator=gen))
    return model


def closed_form(model, images, grad_of, method):
    """Per image, with numpy loops: A[k,i,j] = sum_c conv[k,c] x[c,i,j]; the map from the known gradient."""
    conv = model[0].weight.detach().numpy()[:, :, 0, 0]
    head = model[2].weight.detach().numpy().reshape(C, K, H, W)
    out = []
    for b, x in enumerate(images.numpy()):
        act = np.zeros((K, H, W))
        for k in range(K):
            for c in range(3):
                act[k] += conv[k, c] * x[c]
        logits = np.array([(head[c] * act).sum() for c in range(C)])
        grad = grad_of(b, logits, head)
        if method == "gradcam":
            cam = sum(grad[k].mean() * act[k] for k in range(K))
        else:
            cam = sum(grad[k] * act[k] for k in range(K))
        cam = np.maximum(cam, 0)
        span = cam.max() - cam.min()
        out.append((cam - cam.min()) / span if span > 1e-12 else np.zeros_like(cam))
    return np.stack(out)


@pytest.mark.parametrize("cls,method", [(GradCAM, "gradcam"), (HiResCAM, "hirescam")])
def test_class_logit_matches_closed_form(cls, method):
    model = linear_model()
    images = torch.randn(6, 3, H, W, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3, 1, 0])
    got = cls(model, ["0"])(images, class_logit(targets))
    want = closed_form(model, images, lambda b, logits, head: head[targets[b]], method)
    assert got.maps.shape == (6, H, W)
    np.testing.assert_allclose(got.maps.numpy(), want, atol=1e-5)


@pytest.mark.parametrize("cls,method", [(GradCAM, "gradcam"), (HiResCAM, "hirescam")])
def test_softmax_target_matches_closed_form(cls, method):
    model = linear_model(seed=3)
    images = torch.randn(4, 3, H, W, generator=torch.Generator().manual_seed(2)) * 0.3
    targets = torch.tensor([2, 0, 3, 1])

    def grad_softmax(b, logits, head):  # d p_t / dA = p_t (W_t - sum_j p_j W_j)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        t = int(targets[b])
        return p[t] * (head[t] - np.tensordot(p, head, axes=1))

    got = cls(model, ["0"])(images, softmax_target(targets))
    np.testing.assert_allclose(got.maps.numpy(), closed_form(model, images, grad_softmax, method), atol=1e-5)


def test_default_objective_is_predicted_class_and_batch_equals_single_images():
    model = linear_model()
    images = torch.randn(5, 3, H, W, generator=torch.Generator().manual_seed(4))
    cam = GradCAM(model, ["0"])
    batch = cam(images)
    predicted = model(images).argmax(1)
    np.testing.assert_allclose(batch.maps.numpy(), cam(images, predicted).maps.numpy(), atol=1e-6)
    for i in range(5):
        single = cam(images[i : i + 1], int(predicted[i]))
        np.testing.assert_allclose(single.maps[0].numpy(), batch.maps[i].numpy(), atol=1e-5)


def test_callable_objective_and_multilayer_mean_with_upsampling():
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    images = torch.randn(3, 3, 8, 8, generator=gen)
    objective = lambda logits, features: logits[:, 1] - logits[:, 2]  # noqa: E731
    both = GradCAM(model, {"early": "1", "late": "2"})(images, objective)
    early = GradCAM(model, {"early": "1"})(images, objective)
    late = GradCAM(model, {"late": "2"})(images, objective)
    assert both.raw["late"].shape == (3, 4, 4) and both.layers["late"].shape == (3, 8, 8)
    np.testing.assert_allclose(both.maps.numpy(), (early.maps.numpy() + late.maps.numpy()) / 2, atol=1e-6)
    for m in both.layers.values():  # each layer's map spans [0, 1] per image (or is all zero)
        flat = m.flatten(1)
        assert torch.all((flat.max(1).values == 0) | ((flat.min(1).values.abs() < 1e-6) & ((flat.max(1).values - 1).abs() < 1e-6)))
    assert np.isfinite(both.objective)


def test_minmax_normalise_constant_map_is_zero():
    maps = torch.stack([torch.full((2, 2), 3.0), torch.tensor([[1.0, 2.0], [3.0, 5.0]])])
    out = minmax_normalise(maps)
    assert torch.equal(out[0], torch.zeros(2, 2))
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))


def test_bad_inputs_raise_one_clear_error():
    model = linear_model()
    images = torch.randn(2, 3, H, W)
    with pytest.raises(DistillscopeError, match="needs \\(B, C, H, W\\)"):
        GradCAM(model, ["1"])(images)  # the flattened output
    with pytest.raises(DistillscopeError, match="float scalar"):
        GradCAM(model, ["0"])(images, lambda logits, f: logits)
    with pytest.raises(DistillscopeError, match="no module at path"):
        GradCAM(model, ["nope"])(images)


def test_model_mode_is_restored():
    model = linear_model().train()
    GradCAM(model, ["0"])(torch.randn(2, 3, H, W))
    assert model.training
