"""SFKD: salient feature masking of the teacher's outputs (paper 003, §3.2, Eqs. 4-5).

Only the most salient entries of a teacher output F ∈ R^N are distilled: F_K = F ⊙ M with M_i = 1 for
the top-K entries and 0 elsewhere. Any method takes it from YAML; the base class masks the teacher's
outputs once per step, before :meth:`DistillMethod.distill_losses` sees them::

    method: {name: kd, mask: {logits: 0.7}}
    method: {name: fitnet, mask: {features: 0.8, rank: magnitude}}
    method: {name: at, mask: {attention: 0.6}}

K is the kept fraction in (0, 1] (the paper's K^0.5 ... K^1.0): the ``ceil(K·N)`` largest of N entries
are kept (with any entry tied with the smallest of them), so K = 1 keeps everything and reproduces the
unmasked method exactly. Per sample:

- ``logits``: over the classes (N = number of classes).
- ``features``: over all entries of each tapped teacher feature (N = C·H·W, or D for an embedding). A map
  after a ReLU (the zoo's ``stage:i`` taps) is mostly zeros: a K above its share of nonzero entries keeps them
  all and leaves the map unchanged (wrn_40_2's middle stage: 36-47% nonzero); the trainer warns when it sees that.
- ``attention``: over the H·W positions of each tapped 4-D teacher map (N, C, H, W), ranked by the
  spatial attention map a = Σ_c A_c² (attention transfer's φ with p = 2); every channel at the other
  positions is zeroed. Then φ(masked A) = Top_K(φ(A)) for any φ = Σ_c |A_c|^p: for AT this is the
  paper's Q_{t^K} = vec(φ(Top_K(A_t))) read as "the top-K elements of the teacher's attention map"
  (Eq. 3); other methods see a spatially masked map. With both ``attention`` and ``features``, the
  spatial mask is applied first. Maps that are not 4-D are left to ``features``.
- ``rank``: ``value`` (default; Eq. 4, "the top-K values") or ``magnitude`` (|F|, as §3.1 words it for
  logits; differs from ``value`` only where entries are negative, e.g. logits or ``preact`` taps).
- ``logits_fill``: ``0`` (default, Eq. 5 as written: masked logits become 0 and still enter the
  softmax with weight e^0) or ``-inf`` (masked classes leave the softmax: teacher probability 0).
  Feature entries are always zeroed.

Proposition 1 says masking concentrates the teacher's distribution. With fill ``0`` on negative logits it can do
the opposite (masked classes are raised to 0), so a run with a logit mask records the mean entropy of the softened
teacher softmax(z/T) before and after the mask (:func:`teacher_entropy_sums`, ``train/teacher_entropy[_masked]``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DistillscopeError

KEYS = ("logits", "features", "attention")
OPTIONS = ("rank", "logits_fill")
RANKS = ("value", "magnitude")


def kept_count(fraction: float, n: int) -> int:
    """How many of ``n`` entries a kept fraction K keeps: ceil(K·n), at least 1."""
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def top_k_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per sample (dim 0), the entries of ``scores`` at least as large as its ceil(K·N)-th largest one.

    Entries tied with that threshold are all kept. The comparison keeps ``scores``' memory layout.
    """
    k = kept_count(fraction, scores[0].numel())
    threshold = scores.flatten(1).topk(k, dim=1).values[:, -1]
    return scores >= threshold.view(-1, *[1] * (scores.dim() - 1))


def mask_entries(x: torch.Tensor, fraction: float, rank: str = "value", fill: float = 0.0) -> torch.Tensor:
    """Keep the top-K entries of each sample's ``x`` (by value or magnitude); ``fill`` the rest."""
    scores = x.detach()
    return torch.where(top_k_mask(scores.abs() if rank == "magnitude" else scores, fraction), x, fill)


def mask_attention(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero every channel of (N, C, H, W) ``x`` outside the top-K positions of a = Σ_c x_c²."""
    energy = x.detach().float().pow(2).sum(1, keepdim=True)
    return torch.where(top_k_mask(energy, fraction), x, 0.0)


@dataclass(frozen=True)
class SalientMask:
    """Top-K masks for the teacher's logits, features and attention maps (``None``: left as is)."""

    logits: float | None = None
    features: float | None = None
    attention: float | None = None
    rank: str = "value"
    logits_fill: float = 0.0

    def __call__(self, teacher):
        """A masked copy of the teacher's :class:`~distillscope.methods.base.Outputs` and of its extra ``view``
        (the input is not modified)."""
        if self.features is not None and not teacher.features:
            raise DistillscopeError("method.mask.features: this method taps no teacher features; "
                                    "mask its logits instead (method.mask.logits)")
        if self.attention is not None and not any(f.dim() == 4 for f in teacher.features.values()):
            raise DistillscopeError("method.mask.attention: this method taps no 4-D (N, C, H, W) teacher maps; "
                                    "use method.mask.features or .logits")
        logits = self.mask_logits(teacher.logits)
        features = {}
        for name, feature in teacher.features.items():
            if self.attention is not None and feature.dim() == 4:
                feature = mask_attention(feature, self.attention)
            if self.features is not None:
                feature = mask_entries(feature, self.features, self.rank)
            features[name] = feature
        return type(teacher)(logits, features, None if teacher.view is None else self(teacher.view))

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The teacher's logits as this mask leaves them (unchanged without ``logits``)."""
        return logits if self.logits is None else mask_entries(logits, self.logits, self.rank, self.logits_fill)


def softened_entropy(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Per sample (row), the entropy in nats of softmax(logits / T), in float32; a class with probability 0
    (a logit of -inf) adds 0 (0 · log 0 = 0)."""
    p = F.softmax(logits.detach().float() / T, dim=1)
    return -torch.special.xlogy(p, p).sum(1)


def teacher_entropy_sums(teacher, mask: SalientMask, T: float) -> torch.Tensor:
    """``[Σ H(softmax(z/T)), Σ H(softmax(mask(z)/T))]`` over the batch's samples (float32, shape (2,)) from the
    teacher's logits z; with several teachers (a list of Outputs) each sample's entropies are averaged over them."""
    teachers = teacher if isinstance(teacher, list) else [teacher]
    sums = [torch.stack([softened_entropy(t.logits, T).sum(), softened_entropy(mask.mask_logits(t.logits), T).sum()]) for t in teachers]
    return torch.stack(sums).mean(0)


def softening_temperature(method) -> tuple[float, str | None]:
    """The temperature T a logit method softens the teacher with, for :func:`teacher_entropy_sums`, and a note when
    the entropy at T is not exactly what the method distils: ``T`` (KD, DKD, DIST, MTKD, AEKD, ...), MLKD's
    ``temperatures`` when they are all one value, else T = 1."""
    T = getattr(method, "T", None)
    temperatures = getattr(method, "temperatures", None)
    if temperatures is not None and len(set(temperatures)) == 1:
        T = temperatures[0]
    if isinstance(T, bool) or not isinstance(T, (int, float)):
        several = f"softens at several temperatures ({', '.join(f'{t:g}' for t in temperatures)})" if temperatures else "has no temperature"
        return 1.0, f"T = 1: {type(method).__name__} {several}"
    if getattr(method, "logit_standardization", False):
        return float(T), "the method softens z-scored logits; this is softmax(z/T) of the raw ones"
    return float(T), None


def parse_mask(config: dict | None) -> SalientMask | None:
    """Validate ``method.mask`` from YAML into a :class:`SalientMask`; one clear line per mistake."""
    if config is None:
        return None
    example = "e.g. method.mask: {logits: 0.7}"
    if not isinstance(config, dict):
        raise DistillscopeError(f"method.mask: expected a mapping, got {config!r}; {example}")
    unknown = sorted(set(config) - set(KEYS + OPTIONS))
    if unknown:
        raise DistillscopeError(f"method.mask: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(KEYS + OPTIONS)}")
    if not any(config.get(key) is not None for key in KEYS):
        raise DistillscopeError(f"method.mask: give a kept fraction for at least one of {', '.join(KEYS)}; {example}")
    for key in KEYS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
            raise DistillscopeError(f"method.mask.{key}={value!r}: the kept fraction K must be a number in (0, 1]; K = 1 keeps everything")
    rank = config.get("rank", "value")
    if rank not in RANKS:
        raise DistillscopeError(f"method.mask.rank={rank!r}: choose value or magnitude")
    fill = config.get("logits_fill", 0)
    if isinstance(fill, bool) or fill not in (0, "-inf", -math.inf):
        raise DistillscopeError(f"method.mask.logits_fill={fill!r}: choose 0 (as the paper writes it) or -inf (masked classes leave the "
                                "softmax)")
    fractions = {key: None if config.get(key) is None else float(config[key]) for key in KEYS}
    return SalientMask(**fractions, rank=rank, logits_fill=-math.inf if fill in ("-inf", -math.inf) else 0.0)
