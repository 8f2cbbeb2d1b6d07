"""How close a student is to its teacher: predictions, representations and classifier geometry.

* Top-1 agreement: the fraction of images on which both models predict the same class.
* KL to the teacher: mean over images of KL(p_t ‖ p_s) = Σ_c p_t,c (log p_t,c − log p_s,c), p = softmax(z / T),
  in nats (T = 1 unless given).
* Linear CKA (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited", Eq. 2 with a
  linear kernel): for features X (N×D1) and Y (N×D2) flattened per image, K = XXᵀ, L = YYᵀ, H = I − 11ᵀ/N,
  CKA = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F), equal to ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) for column-centred X, Y.
  Computed from N×N Gram matrices, so any two layers compare at the cost of their N×N Grams; features are
  gathered in chunks of images, in as few passes as fit a memory budget.
* t-SNE of penultimate features (scikit-learn, PCA initialisation, fixed seed) on a seeded subsample.
* Classifier-weight correlation (paper 003, SFKD, Fig. 5: "correlation matrices of teacher and student
  classifier weights ... computed using normalized weights"): the rows w_c of the final linear layer are
  L2-normalised and C = Ŵ Ŵᵀ (C×C, cosine of class weight vectors). The teacher–student difference is
  |C_t − C_s|; its mean over the off-diagonal entries is the L1 error reported (the diagonal is 1 in both).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillscopeError
from ..models.taps import resolve_tap
from .features import read_features


def agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Fraction of rows with the same top-1 class."""
    if logits_a.shape != logits_b.shape:
        raise DistillscopeError(f"logits of the two models differ in shape: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    return float((logits_a.argmax(1) == logits_b.argmax(1)).double().mean())


def kl_to_teacher(teacher_logits: torch.Tensor, model_logits: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean KL(p_teacher ‖ p_model) in nats at ``temperature``."""
    if teacher_logits.shape != model_logits.shape:
        raise DistillscopeError(f"logits of the two models differ in shape: {tuple(teacher_logits.shape)} vs {tuple(model_logits.shape)}")
    log_t = F.log_softmax(teacher_logits.double() / temperature, dim=1)
    log_m = F.log_softmax(model_logits.double() / temperature, dim=1)
    return float((log_t.exp() * (log_t - log_m)).sum(1).mean())


def gram(features: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix XXᵀ (float64, N×N) of features flattened per row."""
    x = features.flatten(1).float()
    return (x @ x.T).double()


def centre_gram(k: torch.Tensor) -> torch.Tensor:
    """HKH with H = I − 11ᵀ/N."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def layer_grams(model: nn.Module, taps: dict[str, str], images: torch.Tensor, batch_size: int = 256, max_bytes: int = 2**30,
                progress: bool = False, desc: str = "Gram matrices") -> dict[str, torch.Tensor]:
    """Gram matrix per tap. The N×D float32 features of as many taps as fit in ``max_bytes`` are gathered in one
    pass over the images, the others in further passes (a tap larger than the budget gets a pass of its own)."""
    from tqdm.auto import tqdm

    widths = {name: f.flatten(1).shape[1] for name, f in read_features(model, images[:1], taps).items()}
    passes: list[list[str]] = [[]]
    used = 0
    for name in taps:
        need = len(images) * widths[name] * 4
        if passes[-1] and used + need > max_bytes:
            passes.append([])
            used = 0
        passes[-1].append(name)
        used += need
    grams = {}
    for names in tqdm(passes, desc=desc, disable=not progress, leave=False):
        features = read_features(model, images, {name: taps[name] for name in names}, batch_size, cpu=True)
        for name in names:
            grams[name] = gram(features.pop(name))
    return {name: grams[name] for name in taps}


def cka_matrix(grams_a: dict[str, torch.Tensor], grams_b: dict[str, torch.Tensor]) -> np.ndarray:
    """CKA of every layer of A (rows) with every layer of B (columns)."""
    centred_b = {name: centre_gram(g) for name, g in grams_b.items()}
    result = np.zeros((len(grams_a), len(grams_b)))
    for i, ga in enumerate(grams_a.values()):
        kc = centre_gram(ga)
        for j, lc in enumerate(centred_b.values()):
            denominator = kc.norm() * lc.norm()
            result[i, j] = float((kc * lc).sum() / denominator) if denominator > 0 else np.nan
    return result


def stage_taps(model: nn.Module) -> dict[str, str]:
    """Every declared stage of a zoo model and its penultimate feature, as tap specs."""
    count = len(getattr(model, "stage_taps", ()))
    if not count:
        raise DistillscopeError(f"{type(model).__name__} declares no stage taps; give tap specs (module paths) instead")
    return {**{f"stage:{i}": f"stage:{i}" for i in range(count)}, "embedding": "embedding"}


def subsample(targets: torch.Tensor, count: int, seed: int, max_classes: int | None = None) -> torch.Tensor:
    """Sorted row indices: up to ``count`` rows drawn without replacement (seeded), from at most ``max_classes``
    classes drawn at random (seeded) when there are more."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(len(targets))
    classes = targets.unique()
    if max_classes is not None and len(classes) > max_classes:
        keep = classes[torch.randperm(len(classes), generator=generator)[:max_classes]]
        rows = rows[torch.isin(targets, keep)]
    if len(rows) > count:
        rows = rows[torch.randperm(len(rows), generator=generator)[:count]]
    return rows.sort().values


def tsne_2d(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of the rows (scikit-learn, PCA init, ``random_state=seed``); perplexity capped below N/3.
    Runs on one thread: a few hundred points take seconds, and scikit-learn's own OpenMP pool beside torch's
    was measured 10-100× slower on shared cores."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    if n < 5:
        raise DistillscopeError(f"t-SNE needs at least 5 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features.double().numpy())


def classifier_weights(model: nn.Module) -> torch.Tensor:
    """Weight (C×D) of the final linear layer: the module whose input is the model's ``embedding`` tap."""
    path, _ = resolve_tap(model, "embedding")
    layer = dict(model.named_modules())[path]
    if not isinstance(layer, nn.Linear):
        raise DistillscopeError(f"{type(model).__name__}: the module at '{path}' is {type(layer).__name__}, not the final nn.Linear "
                                "classifier")
    return layer.weight.detach().float().cpu()


def weight_correlation(weights: torch.Tensor) -> np.ndarray:
    """C = Ŵ Ŵᵀ with every class row L2-normalised (paper 003, Fig. 5)."""
    w = weights.double()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (w @ w.T).numpy()


def correlation_difference(teacher_corr: np.ndarray, model_corr: np.ndarray) -> tuple[np.ndarray, float]:
    """|C_t − C_s| and its mean over the off-diagonal entries (the L1 error)."""
    if teacher_corr.shape != model_corr.shape:
        raise DistillscopeError(f"class counts differ: teacher {teacher_corr.shape[0]}, model {model_corr.shape[0]}")
    diff = np.abs(teacher_corr - model_corr)
    off = ~np.eye(len(diff), dtype=bool)
    return diff, float(diff[off].mean()) if off.any() else 0.0
