"""Token models: (batch, tokens, channels) layers read as maps (models/taps.py), the zoo ViT, and the CAMs, UniCAM and
FSS/RS on its blocks, each against a computation written out here."""
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from distillscope.analysis.cam import GradCAM, HiResCAM, class_logit
from distillscope.analysis.dcor import semipartial_r2
from distillscope.analysis.embeddings import onehot_embeddings
from distillscope.analysis.scores import batch_statistics, feature_scores, pool
from distillscope.analysis.unicam import UniCAM
from distillscope.config import load_config
from distillscope.engine import Trainer
from distillscope.errors import DistillscopeError
from distillscope.models import FeatureTaps, canonical_tap, create_model
from distillscope.models.taps import tokens_to_map

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "cifar10_5k"


def small_vit(seed: int = 0) -> nn.Module:
    """A narrow ViT with large random weights: its class token differs between images as much as a trained one's."""
    torch.manual_seed(seed)
    model = create_model("vit_tiny_cifar", num_classes=4, dim=24, depth=4, heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    return model


def images(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def raw_tokens(model: nn.Module, path: str, x: torch.Tensor, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the module's (B, T, C) output, kept for its gradient when ``grad``."""
    seen = {}

    def hook(module, args, output):
        if grad:
            output.retain_grad()
        seen["out"] = output

    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, seen["out"]


def by_hand_map(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """Patch token k (after the prefix) sits at row k // side, column k % side: a loop, no reshape."""
    b, t, c = tokens.shape
    side = round((t - prefix) ** 0.5)
    out = torch.empty(b, c, side, side)
    for k in range(t - prefix):
        out[:, :, k // side, k % side] = tokens[:, prefix + k]
    return out


@pytest.mark.parametrize("tokens, prefix, given", [(65, 1, "auto"), (64, 0, "auto"), (17, 1, 1), (18, 2, 2), (16, 0, 0)])
def test_tokens_to_map_lays_patch_tokens_out_row_major_without_the_prefix(tokens, prefix, given):
    x = torch.randn(2, tokens, 5)
    x[:, :prefix] = 1e6  # class tokens must not appear in the map
    fmap = tokens_to_map(x, given)
    assert torch.equal(fmap, by_hand_map(x, prefix))
    assert fmap.abs().max() < 1e6


def test_vit_taps_read_blocks_as_maps_and_leave_the_logits_unchanged():
    model, x = small_vit(), images(2)
    assert model.stage_taps == ("blocks.0@tokens", "blocks.1@tokens", "blocks.2@tokens")  # depth 4: groups end at 0, 1; then block 2
    logits, raw = raw_tokens(model, "blocks.2", x)
    block1 = raw_tokens(model, "blocks.1", x)[1]
    specs = {"s": "stage:-1", "b": "blocks.2@tokens", "b1": "blocks.2@tokens:1", "raw": "blocks.2", "emb": "embedding",
             "cnn_style": "patch_embed@tokens", "in": "blocks.2@input@tokens"}
    with torch.no_grad(), FeatureTaps(model, specs) as taps:
        tapped_logits, f = taps(x)
    assert torch.equal(tapped_logits, logits)
    assert torch.equal(f["in"], by_hand_map(block1, 1))  # block 2's input is block 1's output
    assert f["raw"].shape == (2, 65, 24) and f["emb"].shape == (2, 24)
    for name in ("s", "b", "b1"):
        assert torch.equal(f[name], by_hand_map(raw, 1)), name
    assert f["cnn_style"].shape == (2, 24, 8, 8)  # a 4-D output passes unchanged
    assert canonical_tap(model, "stage:-1") == "blocks.2@tokens" and canonical_tap(model, "blocks.2") == "blocks.2"


def test_a_token_count_that_is_not_square_is_one_line_of_error():
    model = nn.Sequential(nn.Linear(4, 4))
    with FeatureTaps(model, {"t": "0@tokens"}) as taps, pytest.raises(DistillscopeError) as err:
        taps(torch.randn(2, 11, 4))  # neither 11 nor 10 is square
    assert "11 tokens minus 0 prefix token(s) are not a square grid" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DistillscopeError, match="65 tokens minus 2 prefix"):
        GradCAM(small_vit(), ["blocks.1"], tokens=2)(images(2))
    with pytest.raises(DistillscopeError, match="should give a number of prefix tokens"):
        FeatureTaps(small_vit(), ["blocks.1@tokens:x"])


@pytest.mark.parametrize("cam", [GradCAM, HiResCAM])
@pytest.mark.parametrize("layer", ["blocks.1", "blocks.1@tokens", "stage:1"])
def test_cams_on_a_vit_block_equal_the_formula_on_the_reshaped_tokens(cam, layer):
    model, x = small_vit(), images(4)
    targets = torch.tensor([0, 1, 2, 3])
    logits, raw = raw_tokens(model, "blocks.1", x, grad=True)
    logits.gather(1, targets[:, None]).sum().backward()
    a, g = by_hand_map(raw.detach(), 1), by_hand_map(raw.grad, 1)  # (B, C, 8, 8), class token dropped
    if cam is GradCAM:  # weights = spatial mean of the gradient; CAM = ReLU(sum_c w_c A_c)
        expected = torch.relu((g.mean(dim=(2, 3))[:, :, None, None] * a).sum(dim=1))
    else:  # HiResCAM = ReLU(sum_c G_c * A_c)
        expected = torch.relu((g * a).sum(dim=1))
    result = cam(model, [layer])(x, class_logit(targets))
    assert result.raw[layer].shape == (4, 8, 8) and result.layers[layer].shape == (4, 32, 32)
    assert expected.amax() > 0
    torch.testing.assert_close(result.raw[layer], expected, rtol=1e-4, atol=1e-6)


def test_tokens_none_keeps_tokens_and_cam_refuses_them():
    with pytest.raises(DistillscopeError, match=r"gives a \(2, 65, 24\) feature"):
        GradCAM(small_vit(), ["blocks.1"], tokens=None)(images(2))


def test_unicam_on_vit_blocks_differentiates_the_patch_token_objective():
    x_model, y_model, x = small_vit(0), small_vit(1), images(8)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    embeddings = onehot_embeddings(["a", "b", "c", "d"])
    result = UniCAM(x_model, y_model, ["blocks.1"], embeddings)(x, targets)
    assert result.maps.shape == (8, 32, 32) and torch.isfinite(result.maps).all() and result.maps.amax() > 0
    with torch.no_grad():
        fx, fy = raw_tokens(x_model, "blocks.1", x)[1], raw_tokens(y_model, "blocks.1", x)[1]
    g = embeddings[targets].double()
    # the order of the features does not change distances
    patches = semipartial_r2(fx[:, 1:].flatten(1).double(), fy[:, 1:].flatten(1).double(), g)
    with_class_token = semipartial_r2(fx.flatten(1).double(), fy.flatten(1).double(), g)
    assert result.r2["blocks.1"] == pytest.approx(float(patches), rel=1e-6)
    assert abs(float(with_class_token) - float(patches)) > 1e-6  # the class token would change it


def test_feature_scores_on_a_vit_block_and_against_a_cnn_student():
    teacher, student_vit, x = small_vit(0), small_vit(1), images(8)
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    embeddings = onehot_embeddings(["a", "b", "c", "d"])
    out = feature_scores(student_vit, {"teacher": teacher}, ["blocks.1"], x, targets, embeddings, batch_size=8,
                         perturb=lambda imgs, maps: imgs * (maps[:, None] > 0.5), progress=False)
    rows = {(r["condition"], r["statistic"]): r for r in out["rows"]}
    assert {cond for cond, _ in rows} == {"clean", "lerf"} and all(r["batches"] == 1 and r["pooled"] is not None for r in rows.values())
    with torch.no_grad():
        fs, fr = raw_tokens(student_vit, "blocks.1", x)[1], raw_tokens(teacher, "blocks.1", x)[1]
    by_hand = batch_statistics(fs[:, 1:].flatten(1), fr[:, 1:].flatten(1), embeddings[targets], "unbiased")
    for stat, terms in by_hand.items():
        assert rows["clean", stat]["pooled"] == pytest.approx(pool([terms])["pooled"], rel=1e-6), stat
    resnet = create_model("resnet8", num_classes=4).eval()  # a ViT teacher and a CNN student at stage:-1, as explain does
    mixed = feature_scores(resnet, {"teacher": teacher}, ["stage:-1"], x, targets, embeddings, batch_size=8, progress=False)
    assert all(r["pooled"] is not None for r in mixed["rows"])


def test_vit_teacher_distils_into_resnet8_with_kd_and_fitnet(tiny_overrides, tmp_path):
    teacher = tmp_path / "vit"
    Trainer(load_config(RECIPES / "vit_tiny.yaml", tiny_overrides + ["epochs=1", "student.name=vit_tiny_cifar"]), teacher).fit()
    for recipe, extra in (("resnet8_kd_from_vit", []), ("resnet8_fitnet", ["teacher.name=vit_tiny_cifar"])):
        cfg = load_config(RECIPES / f"{recipe}.yaml", tiny_overrides + ["epochs=1", f"teacher.checkpoint={teacher}", *extra])
        summary = Trainer(cfg, tmp_path / recipe).fit()
        assert summary["last"]["test/top1"] >= 0 and cfg.teacher.name == "vit_tiny_cifar", recipe


def test_a_cam_on_the_last_block_warns_that_no_gradient_reaches_its_patch_tokens():
    model = small_vit()  # depth 4: after block 3 only the class token goes on to the head
    with pytest.warns(UserWarning, match="gradient is zero there for every image"):
        result = GradCAM(model, ["blocks.3"])(images(2))
    assert not result.raw["blocks.3"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GradCAM(model, ["stage:-1"])(images(2)).raw["stage:-1"].any()  # block 2, the last map the head reads
