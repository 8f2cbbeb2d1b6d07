"""UniCAM: the projection, the objective and the map against independent computations; degenerate batches."""
import dcor
import numpy as np
import pytest
import torch
from torch import nn

from distillscope.analysis.embeddings import LabelEmbeddings
from distillscope.analysis.dcor import pairwise_distances, project_out, u_centered
from distillscope.analysis.unicam import UniCAM, batch_rows, distilled_and_residual, unicam_maps
from distillscope.errors import DistillscopeError
from distillscope.models import create_model


def u_centred_by_loops(x):
    """Székely–Rizzo U-centring written out with loops (UniCAM eq. 1-2, eps = 0)."""
    n = len(x)
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
    u = np.zeros_like(d)
    for i in range(n):
        for j in range(n):
            if i != j:
                u[i, j] = d[i, j] - d[i].sum() / (n - 2) - d[:, j].sum() / (n - 2) + d.sum() / ((n - 1) * (n - 2))
    return u


def test_projecting_out_the_base_leaves_a_matrix_orthogonal_to_it():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    x = y @ torch.randn(5, 7, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(9, 7, generator=gen, dtype=torch.float64)
    p = project_out(u_centered(pairwise_distances(x)), u_centered(pairwise_distances(y))).numpy()  # P_Y⊥ X̃ (UniCAM eq. 3)
    x_u, y_u = u_centred_by_loops(x.numpy()), u_centred_by_loops(y.numpy())
    n = 9
    inner = lambda a, b: (a * b).sum() / (n * (n - 3))  # noqa: E731 (diagonals are zero)
    assert abs(inner(p, y_u)) < 1e-9 * inner(x_u, x_u)
    # what was removed is a multiple of the base's matrix
    removed = x_u - p
    coef = inner(x_u, y_u) / inner(y_u, y_u)
    np.testing.assert_allclose(removed, coef * y_u, atol=1e-8)
    assert abs(coef) > 0.1


def small_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Flatten(),
                         nn.Linear(64, 3)).double()


def reference_r2(xf, yf, gf):
    """R²(X|Y,G) from the dcor package: project Y's U-centred matrix out of X's, correlate with G's."""
    a, b, c = (dcor.u_centered(dcor.distances.pairwise_distances(v)) for v in (xf, yf, gf))
    p = dcor.u_complementary_projection(b)(a)
    return dcor.u_product(p, c) / np.sqrt(dcor.u_product(p, p) * dcor.u_product(c, c))


def torch_r2_by_formula(x, y, g):
    """The same statistic in plain torch (differentiable), for an independent gradient."""
    def u(v):
        n = len(v)
        d = torch.sqrt(((v[:, None] - v[None]) ** 2).sum(-1) + 1e-30) * (1 - torch.eye(n, dtype=v.dtype))
        out = d - d.sum(0, keepdim=True) / (n - 2) - d.sum(1, keepdim=True) / (n - 2) + d.sum() / ((n - 1) * (n - 2))
        return out * (1 - torch.eye(n, dtype=v.dtype))

    a, b, c = u(x), u(y), u(g)
    p = a - (a * b).sum() / (b * b).sum() * b
    return (p * c).sum() / torch.sqrt((p * p).sum() * (c * c).sum())


def test_objective_and_map_match_independent_computations():
    model_x, model_y = small_net(1), small_net(2)
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    emb = LabelEmbeddings(torch.randn(3, 5, generator=gen), ["a", "b", "c"], "test")
    result = UniCAM(model_x, model_y, {"mid": "1"}, emb)(images, targets)

    feat_x = model_x[:2](images)
    feat_y = model_y[:2](images).detach()
    g = emb.vectors[targets].double()
    assert result.r2["mid"] == pytest.approx(reference_r2(feat_x.detach().flatten(1).numpy(), feat_y.flatten(1).numpy(), g.numpy()),
                                             abs=1e-9)

    feat_x = feat_x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch_r2_by_formula(feat_x.flatten(1), feat_y.flatten(1), g), feat_x)
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * feat_x.detach()).sum(1))  # Grad-CAM, 8x8 = image size
    low = cam.flatten(1).min(1).values[:, None, None]
    high = cam.flatten(1).max(1).values[:, None, None]
    want = torch.where(high > low, (cam - low) / (high - low), torch.zeros_like(cam))
    np.testing.assert_allclose(result.maps.numpy(), want.numpy(), atol=1e-6)


def test_degenerate_batches_are_skipped_with_a_note():
    model = small_net(0)
    emb = LabelEmbeddings(torch.eye(3), ["a", "b", "c"], "onehot")
    unicam = UniCAM(model, small_net(1), ["1"], emb)
    one_class = unicam(torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    assert one_class.maps is None and "one class" in one_class.skipped
    too_few = unicam(torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2]))
    assert too_few.maps is None and "at least 4" in too_few.skipped
    with pytest.raises(DistillscopeError, match="at least 4"):
        batch_rows(10, 3, 0)


def test_dataset_maps_on_zoo_models_per_layer_finite_and_seeded():
    student, base = create_model("resnet8", num_classes=4).double(), create_model("resnet8", num_classes=4).double()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(14, 3, 16, 16, generator=gen, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 3, 3])
    emb = LabelEmbeddings(torch.randn(4, 6, generator=gen), list("abcd"), "test")
    distilled, residual = distilled_and_residual(student, base, {"l1": "stage:0", "l3": "stage:-1"}, emb)
    out = unicam_maps(distilled, images, targets, batch_size=6, seed=5, progress=False)
    assert out["batch_size"] == 6 and out["seed"] == 5
    rows = batch_rows(14, 6, 5)
    assert [len(r) for r in rows] == [6, 6, 2]
    assert out["valid"].sum() == 12 and not out["valid"][rows[2]].any() and len(out["notes"]) == 1
    assert torch.isfinite(out["maps"]).all() and out["maps"].min() >= 0 and out["maps"].max() <= 1
    assert set(out["layers"]) == {"l1", "l3"} and len(out["r2"]) == 2
    torch.testing.assert_close(out["maps"], (out["layers"]["l1"] + out["layers"]["l3"]) / 2)
    again = unicam_maps(distilled, images, targets, batch_size=6, seed=5, progress=False)
    assert torch.equal(again["maps"], out["maps"])
    back = unicam_maps(residual, images, targets, batch_size=6, seed=5, progress=False)
    assert not torch.allclose(back["maps"], out["maps"])
    assert residual.model_x is base and residual.model_y is student
