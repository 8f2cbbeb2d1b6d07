"""FSS and RS per layer (Adhane et al., "On Explaining Knowledge Distillation", Sec. 3.2, eq. 8-9).

At a layer, with S the student's and R the reference's (teacher or base) flattened features of a batch
and G the label embeddings of its targets, each statistic is a distance correlation of two centred
distance matrices, ``<A, B> / sqrt(<A, A> <B, B>)``:

* ``fss``: (S, R), the feature similarity score;
* ``rs_student`` / ``rs_reference``: (S, G) / (R, G), the relevance score;
* ``rs_student_given_reference``: (P_R⊥ S, G) = R²(S|R, G), what the student has beyond the reference
  (UniCAM's "distilled" statistic); ``rs_reference_given_student``: (P_S⊥ R, G), the "residual" one;
  P_B⊥ A = A − <A, B>/<B, B> B.

``estimator`` is one choice for all of them and is written into the output: ``unbiased`` uses U-centred
matrices and ``<A, B> = Σ_{i≠j} A_ij B_ij / (n(n−3))`` (R*, Székely & Rizzo 2014; the partial scores are
then the standard semi-partial statistics), ``biased`` double-centred matrices and ``<A, B> = mean(A∘B)``
(dCor²_n; the partial scores are the same projection under that inner product).

Conditions: ``clean`` inputs, and ``lerf``: each model sees its *own* ROAD-perturbed inputs (the least
relevant pixels by its own CAM at that layer replaced by imputation, as in the paper's eq. 7), given as
a ``perturb(images, maps) -> images`` callable. Statistics are pooled over many seeded batches: the
mean ± std of the per-batch values and the pooled value ``Σ_b <A_b, B_b> / sqrt(Σ_b <A_b, A_b> Σ_b <B_b, B_b>)``.

Token layers ((B, T, C) transformer outputs) are read as the maps their CAM uses (``tokens``, as in ``cam.py``):
the class token is dropped before the patch tokens are flattened, so the features scored are those ROAD perturbs.
"""
from __future__ import annotations

import math
from itertools import product
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DistillscopeError
from ..models.taps import Tokens, with_tokens
from .cam import CAM_METHODS, softmax_target
from .dcor import double_centered, pairwise_distances, u_centered, u_inner
from .embeddings import LabelEmbeddings
from .features import read_features
from .unicam import LayerSpecs, batch_rows, layer_pairs, skip_reason

ESTIMATORS = ("unbiased", "biased")
STATISTICS = ("fss", "rs_student", "rs_reference", "rs_student_given_reference", "rs_reference_given_student")
Perturb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def centred(x: torch.Tensor, estimator: str) -> torch.Tensor:
    """The centred distance matrix of the samples ``x`` (n, d): U-centred or double-centred."""
    d = pairwise_distances(x)
    return u_centered(d) if estimator == "unbiased" else double_centered(d)


def inner(a: torch.Tensor, b: torch.Tensor, estimator: str) -> torch.Tensor:
    return u_inner(a, b) if estimator == "unbiased" else (a * b).mean()


def _remove(a: torch.Tensor, b: torch.Tensor, estimator: str) -> torch.Tensor:
    bb = inner(b, b, estimator)
    return a if bb <= 0 else a - inner(a, b, estimator) / bb * b


def batch_statistics(s: torch.Tensor, r: torch.Tensor, g: torch.Tensor, estimator: str) -> dict[str, tuple[float, float, float]]:
    """``{statistic: (<A, B>, <A, A>, <B, B>)}`` for one batch (see the module docstring)."""
    if estimator not in ESTIMATORS:
        raise DistillscopeError(f"estimator '{estimator}' unknown; valid: {', '.join(ESTIMATORS)}")
    a, b, c = (centred(v.flatten(1).double(), estimator) for v in (s, r, g))
    pairs = {
        "fss": (a, b),
        "rs_student": (a, c),
        "rs_reference": (b, c),
        "rs_student_given_reference": (_remove(a, b, estimator), c),
        "rs_reference_given_student": (_remove(b, a, estimator), c),
    }
    return {name: tuple(float(inner(p, q, estimator)) for p, q in ((x, y), (x, x), (y, y))) for name, (x, y) in pairs.items()}


def _ratio(num: float, aa: float, bb: float) -> float:
    return num / math.sqrt(aa * bb) if aa > 0 and bb > 0 else 0.0


def pool(terms: list[tuple[float, float, float]]) -> dict[str, float | int | None]:
    """Mean and sample std of the per-batch values (std None for one batch) and the pooled value."""
    values = [_ratio(*t) for t in terms]
    k = len(values)
    if k == 0:
        return {"mean": None, "std": None, "pooled": None, "batches": 0}
    mean = sum(values) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1)) if k > 1 else None
    sums = [sum(t[i] for t in terms) for i in range(3)]
    return {"mean": mean, "std": std, "pooled": _ratio(*sums), "batches": k}


@torch.no_grad()
def tapped_features(model: nn.Module, images: torch.Tensor, specs: dict[str, str]) -> dict[str, torch.Tensor]:
    """``{name: (n, d) float64}`` features of ``model`` (eval mode) at the tap ``specs``."""
    return {name: f.flatten(1) for name, f in read_features(model, images, specs, dtype=torch.float64).items()}


def perturbed_features(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, specs: dict[str, str], perturb: Perturb,
                       cam: str = "gradcam") -> dict[str, torch.Tensor]:
    """Per layer: the model's CAM there (softmax of the true class), its inputs perturbed by that map, its features there."""
    maps = CAM_METHODS[cam](model, specs)(images, softmax_target(targets)).layers
    return {name: tapped_features(model, perturb(images, maps[name]), {name: spec})[name] for name, spec in specs.items()}


def feature_scores(
    student: nn.Module,
    references: dict[str, nn.Module],
    layers: LayerSpecs,
    images: torch.Tensor,
    targets: torch.Tensor,
    embeddings: LabelEmbeddings,
    *,
    estimator: str = "unbiased",
    perturb: Perturb | None = None,
    cam: str = "gradcam",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    tokens: Tokens = "auto",
) -> dict:
    """FSS, RS and the partial RS of ``student`` vs each of ``references`` (``{name: model}``, e.g. teacher
    and base) at ``layers``, over seeded batches of ``images``.

    Conditions: ``clean``, plus ``lerf`` when ``perturb`` is given. Returns ``rows`` (one per reference,
    layer, condition and statistic with mean, std, pooled value and batch count) and the settings used.
    """
    if estimator not in ESTIMATORS:
        raise DistillscopeError(f"estimator '{estimator}' unknown; valid: {', '.join(ESTIMATORS)}")
    if cam not in CAM_METHODS:
        raise DistillscopeError(f"cam '{cam}' unknown; valid: {', '.join(CAM_METHODS)}")
    pairs = layer_pairs(layers)
    specs_s = {name: with_tokens(s, tokens) for name, (s, _) in pairs.items()}
    specs_r = {name: with_tokens(r, tokens) for name, (_, r) in pairs.items()}
    conditions = ["clean"] + (["lerf"] if perturb is not None else [])
    terms = {key: [] for key in product(references, pairs, conditions, STATISTICS)}
    notes = []
    for rows in tqdm(batch_rows(len(images), batch_size, seed), desc="FSS/RS", disable=None if progress else True, leave=False):
        rows = rows.to(images.device)
        x, y = images[rows], targets[rows]
        reason = skip_reason(y)
        if reason:
            notes.append(reason)
            continue
        g = embeddings[y].double()

        def features(model, specs, cond):
            return tapped_features(model, x, specs) if cond == "clean" else perturbed_features(model, x, y, specs, perturb, cam)

        for cond in conditions:
            fs = features(student, specs_s, cond)
            for ref, model in references.items():
                fr = features(model, specs_r, cond)
                for layer in pairs:
                    for stat, t in batch_statistics(fs[layer], fr[layer], g, estimator).items():
                        terms[ref, layer, cond, stat].append(t)
    table = [{"reference": ref, "layer": layer, "condition": cond, "statistic": stat, **pool(t)}
             for (ref, layer, cond, stat), t in terms.items()]
    return {"rows": table, "estimator": estimator, "batch_size": batch_size, "seed": seed, "cam": cam, "labels": embeddings.kind,
            "notes": notes}
