"""The Interaction Tensor (Jiang, Baek & Kolter, ICLR 2024; used by Kang & Kim, 2026, §3.2): which features
which models use on which data points.

For M models (in named groups, e.g. seeds of a CE baseline, a KD student and a teacher), one tapped layer each
and N evaluation images without augmentation. The layer is by default ``stage:-1``, the last convolutional stage
before global pooling, flattened to D = C·H·W (paper 000: ResNet-18 at 32 px, 512×4×4 = 8,192 dims; resnet8
64×8×8 = 4,096; wrn_40_2 128×8×8 = 8,192). The pooled ``embedding`` (64 dims for resnet8) is too narrow for K = 50:
PCA then keeps nearly all of it, every model ends with ≈ K features, and the comparison is saturated
(``interaction_warnings`` flags K > 0.75·min(N, D)).

1. Per model m: PCA of its (N × D) features to K components, P_m = (F_m − mean) V_K ∈ R^{N×K} (``centre=False``:
   the uncentred SVD variant, P_m = F_m V_K, that the authors' CD notebook used). Each component's sign is
   fixed so that its largest-magnitude projection is positive.
2. Columns standardised over N; Λ[m, p, k, q] = Pearson correlation of P_m[:, k] and P_p[:, q] (M×M×K×K).
3. γ = 99th percentile of |Λ| over all its entries (or a given absolute threshold).
4. Greedy clustering in model/component order: each component (m, k) not yet assigned starts a new feature t
   (its own best correlation is 1) and claims every component (p, q) with |Λ[m, p, k, q]| > γ and
   |Λ[m, p, k, q]| > best[p, q], setting best[p, q] to it; a later feature may so steal a component. The
   authors keep ``best`` in an integer array, which truncates every correlation below 1 to 0 and lets any later
   feature above γ steal; here ``best`` is a float, as the rule intends.
5. Presence: R_m = P_m / max_n |P_m| per component; component k of model m is present at point n when
   R_m[n, k] exceeds the 90th percentile of all of that model's R_m entries (positive side only, as the authors).
6. Ω[m, n, t] = 1 when some component of model m assigned to feature t is present at n (Ω ∈ {0,1}^{M×N×T}).

The tensor compares *groups* of models (paper 000: 20 per group). With one model in a group, its feature count is
its K components and its features per point is ≈ K·(1 − presence percentile / 100) = 5.0 by construction; groups
of fewer than ``MIN_GROUP`` models are flagged (``interaction_warnings``).

Group statistics take the union over a group's models: its features are those any of its models learned
(a component assigned to them); frequency of a feature = points where Ω_group[n, t] = 1; features per point =
Σ_t Ω_group[n, t]. Shared features are features learned by every group (and by each pair). Confidence is each
point's max softmax probability averaged over the group's models.

Defaults K = 50, 99th (correlation) and 90th (presence) percentiles are those of Jiang et al. §3 as used by
Kang & Kim §3.2 (taken from the issue's reading of the authors' code, which the search index here did not hold;
the stored copy of paper 000 is its abstract page). Paper 000's CIFAR-100 numbers (baseline / KD student / teacher):
531 / 281 / 264 features, mean frequency 1329 / 2121 / 2243, ≈ 71 / 60 / 59 features per point.

Memory: Λ is float32 (36 MB for M = 60, K = 50); Ω is not stored densely (M×N×T can reach gigabytes) but
derived from the M×N×K presence and the M×K assignment (``omega``, ``group_omega``).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DistillscopeError

COMPONENTS = 50  # K: PCA components per model (Jiang et al. 2024, §3)
CORRELATION_PERCENTILE = 99.0  # γ = this percentile of |Λ| (Jiang et al. 2024, §3)
PRESENCE_PERCENTILE = 90.0  # presence threshold per model (Jiang et al. 2024, §3)
DEFAULT_LAYER = "stage:-1"  # the last conv stage before pooling, flattened C·H·W (paper 000 §3.2)
SATURATION = 0.75  # K above this fraction of min(N, D): PCA keeps nearly the whole layer (K = 50 of resnet8's 64-d embedding: 0.78)
MIN_GROUP = 3  # groups of fewer models: their numbers measure K and the presence rule, not the group
FIGURES = ("interaction_frequency.png", "interaction_features_per_point.png", "interaction_shared.png", "interaction_confidence.png")


# ----------------------------------------------------------------------------- the pieces
def pca_projections(features: np.ndarray, components: int = COMPONENTS, centre: bool = True) -> np.ndarray:
    """(N × D) features -> (N × K) projections on the top-K right singular vectors (of the centred matrix
    unless ``centre=False``); each column's sign makes its largest-magnitude entry positive.

    Computed from the top-K eigenpairs of the smaller Gram matrix (X Xᵀ when N ≤ D: P = U_K S_K; else Xᵀ X:
    P = X V_K), which for flattened stage maps (D in the thousands) is many times faster than a full SVD."""
    from scipy.linalg import eigh

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise DistillscopeError(f"features must be (N, D), got shape {x.shape}")
    if components > min(x.shape):
        raise DistillscopeError(f"{components} components asked but features are {x.shape[0]} points × {x.shape[1]} dims; "
                                "lower the components (--components)")
    if centre:
        x = x - x.mean(0)
    n, d = x.shape
    size = min(n, d)
    values, vectors = eigh(x @ x.T if n <= d else x.T @ x, subset_by_index=[size - components, size - 1])
    values, vectors = values[::-1], vectors[:, ::-1]  # descending
    p = vectors * np.sqrt(np.clip(values, 0.0, None)) if n <= d else x @ vectors
    extreme = p[np.abs(p).argmax(0), np.arange(components)]
    return p * np.where(extreme < 0, -1.0, 1.0)


def standardise_columns(projections: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit (population) variance over N; constant columns become zeros."""
    p = np.asarray(projections, dtype=np.float64)
    std = p.std(0)
    return np.where(std > 0, (p - p.mean(0)) / np.where(std > 0, std, 1.0), 0.0)


def cross_correlations(projections: np.ndarray, chunk: int = 512, progress: bool = False) -> np.ndarray:
    """Λ[m, p, k, q]: Pearson correlation of component k of model m with component q of model p.

    ``projections`` is (M, N, K); the result is a float32 (M, M, K, K) view, computed in row chunks.
    """
    m, n, k = projections.shape
    z = np.concatenate([standardise_columns(p) for p in projections], axis=1).astype(np.float32)  # (N, M·K)
    flat = np.empty((m * k, m * k), dtype=np.float32)
    for start in tqdm(range(0, m * k, chunk), desc="correlations", disable=not progress):
        flat[start:start + chunk] = z[:, start:start + chunk].T @ z / n
    np.clip(flat, -1.0, 1.0, out=flat)
    return flat.reshape(m, k, m, k).transpose(0, 2, 1, 3)


def correlation_threshold(correlations: np.ndarray, percentile: float = CORRELATION_PERCENTILE) -> float:
    """γ: the ``percentile`` of |Λ| over all entries."""
    return float(np.percentile(np.abs(correlations), percentile))


def cluster_components(correlations: np.ndarray, gamma: float, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Greedy clustering (step 4 of the module docstring); returns ``(assignment, best)``, both (M, K):
    the feature index of every component and the correlation by which its feature claimed it (1 for a
    feature's first component)."""
    m_count, _, k_count, _ = correlations.shape
    assignment = np.full((m_count, k_count), -1, dtype=np.int64)
    best = np.zeros((m_count, k_count), dtype=np.float64)
    features = 0
    for m, k in tqdm(list(itertools.product(range(m_count), range(k_count))), desc="clustering", disable=not progress):
        if assignment[m, k] >= 0:
            continue
        assignment[m, k], best[m, k] = features, 1.0
        strength = np.abs(correlations[m, :, k, :]).astype(np.float64)
        claim = (strength > gamma) & (strength > best)
        claim[m, k] = False
        assignment[claim], best[claim] = features, strength[claim]
        features += 1
    return assignment, best


def presence(projections: np.ndarray, percentile: float = PRESENCE_PERCENTILE) -> np.ndarray:
    """(N × K) projections of one model -> bool (N × K): P / max_n |P| above its own ``percentile``."""
    p = np.asarray(projections, dtype=np.float64)
    scale = np.abs(p).max(0)
    ratio = p / np.where(scale > 0, scale, 1.0)
    return ratio > np.percentile(ratio, percentile)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None


def interaction_warnings(components: int, points: int, groups: dict[str, list[int]], models: list[str] | None = None,
                         layer_dims: list[int] | None = None, layer: str | None = None,
                         presence_percentile: float = PRESENCE_PERCENTILE) -> list[dict]:
    """Reasons the tensor's numbers may measure the method rather than the models, as ``{"kind", "message", ...}``:

    * ``saturated``: K > ``SATURATION`` · min(N, D) for some model (D = its layer's dimension): PCA keeps nearly
      the whole layer, so every model has ≈ K features whatever it learned;
    * ``small_groups``: a group has fewer than ``MIN_GROUP`` models: one model's features are its K components and
      its features per point is ≈ K·(1 − presence percentile / 100) by construction.
    """
    out = []
    labels = models or [f"model{i}" for i in range(sum(len(rows) for rows in groups.values()))]
    where = f"layer {layer}" if layer else "layer"
    for dims in sorted(set(layer_dims or [])):
        limit = min(points, dims)
        if components <= SATURATION * limit:
            continue
        hit = [labels[m] for m, d in enumerate(layer_dims) if d == dims]
        size = (f"a {dims}-dimensional {where}" if dims <= points
                else f"{points} points (the {dims}-dimensional {where} has at most {points} components)")
        wider = "a wider layer" + ("" if layer == DEFAULT_LAYER else f" (--layer {DEFAULT_LAYER})")
        hint = f"{wider} or fewer --components" if dims <= points else "more images (--n) or fewer --components"
        out.append({"kind": "saturated", "components": components, "points": points, "dims": dims, "models": hit,
                    "message": f"saturated: K = {components} components of {size} for {len(hit)} of {len(labels)} models "
                               f"(> {SATURATION:g} × {limit}); the feature count measures K, not the model. Use {hint}."})
    small = {name: len(rows) for name, rows in groups.items() if len(rows) < MIN_GROUP}
    if small:
        listed = ", ".join(f"{name} ({count} model{'s' * (count != 1)})" for name, count in small.items())
        per_point = components * (1 - presence_percentile / 100)
        out.append({"kind": "small_groups", "groups": small, "minimum": MIN_GROUP,
                    "message": f"small groups: the Interaction Tensor compares groups of models (paper 000: 20 per group), and "
                               f"{listed} {'has' if len(small) == 1 else 'have'} fewer than {MIN_GROUP}. With one model, a group's "
                               f"feature count is its K = {components} PCA components and its features per point is ≈ {per_point:.1f} "
                               f"by construction (presence is the top {100 - presence_percentile:g}% of the model's own entries); "
                               f"these numbers measure the method, not the group."})
    return out


# ----------------------------------------------------------------------------- the result
@dataclass
class InteractionResult:
    """Everything the Interaction Tensor is made of, and its statistics (``stats``)."""

    groups: dict[str, list[int]]  # group name -> model rows
    models: list[str]  # a label per model (its run folder)
    assignment: np.ndarray  # (M, K) feature of every component
    best: np.ndarray  # (M, K) correlation by which it was claimed
    present: np.ndarray  # (M, N, K) bool
    gamma: float
    settings: dict
    confidence: np.ndarray | None = None  # (M, N) max softmax probability
    correct: np.ndarray | None = None  # (M, N) bool
    layer_dims: list[int] | None = None  # D of every model's tapped layer (features per image)
    stats: dict = field(init=False)

    def __post_init__(self):
        self.stats = self._statistics()

    @property
    def num_features(self) -> int:
        return int(self.assignment.max()) + 1

    def omega(self, model: int | None = None) -> np.ndarray:
        """Ω as bool: (N, T) for one model row, else the whole (M, N, T) (large for many models)."""
        if model is not None:
            return self.group_union([model])
        return np.stack([self.group_union([m]) for m in range(len(self.models))])

    def group_union(self, rows: list[int]) -> np.ndarray:
        """(N, T) bool: Ω_group[n, t] = OR over the rows' models of Ω[m, n, t]."""
        out = np.zeros((self.present.shape[1], self.num_features), dtype=bool)
        for m in rows:
            for k, t in enumerate(self.assignment[m]):
                out[:, t] |= self.present[m, :, k]
        return out

    def group_omega(self, name: str) -> np.ndarray:
        return self.group_union(self.groups[name])

    def group_features(self, name: str) -> np.ndarray:
        """Sorted ids of the features the group's models learned."""
        return np.unique(self.assignment[self.groups[name]])

    def _statistics(self) -> dict:
        per_group, feature_sets = {}, {}
        for name, rows in self.groups.items():
            omega, learned = self.group_omega(name), self.group_features(name)
            feature_sets[name] = set(learned.tolist())
            frequency = omega[:, learned].sum(0)
            per_point = omega.sum(1)
            entry = {
                "models": [self.models[m] for m in rows],
                "features": int(len(learned)),
                "mean_frequency": float(frequency.mean()),
                "frequency_sorted": np.sort(frequency).tolist(),
                "features_per_point_mean": float(per_point.mean()),
                "features_per_point": per_point.tolist(),
                "features_never_present": int((frequency == 0).sum()),
            }
            if self.correct is not None:
                entry["top1"] = float(self.correct[rows].mean() * 100)
            if self.confidence is not None:
                confidence = self.confidence[rows].mean(0)
                entry["confidence_vs_features"] = {
                    "pearson": _pearson(per_point.astype(float), confidence),
                    "mean_confidence": float(confidence.mean()),
                    "by_feature_count": _binned_confidence(per_point, confidence),
                }
            per_group[name] = entry
        names = list(self.groups)
        shared_all = set.intersection(*feature_sets.values()) if names else set()
        shared_ids = np.array(sorted(shared_all), dtype=np.int64)
        shared = {
            "all_groups": len(shared_all),
            "pairwise": {f"{a}&{b}": len(feature_sets[a] & feature_sets[b]) for a, b in itertools.combinations(names, 2)},
            "regions": _venn_regions(feature_sets),
            "frequency_sorted_of_shared": {name: np.sort(self.group_omega(name)[:, shared_ids].sum(0)).tolist() for name in names},
        }
        m, n, k = self.present.shape
        warnings = interaction_warnings(k, n, self.groups, self.models, self.layer_dims, self.settings.get("layer"),
                                        self.settings.get("presence_percentile", PRESENCE_PERCENTILE))
        return {"models": m, "points": n, "components": k, "features": self.num_features, "gamma": self.gamma, "groups": per_group,
                "shared": shared, "warnings": warnings}

    def to_dict(self) -> dict:
        """Settings, statistics and the clustering (assignment, best) as plain JSON-able values."""
        dims = None if self.layer_dims is None else dict(zip(self.models, map(int, self.layer_dims)))
        return {"settings": self.settings, **self.stats, "layer_dims": dims, "model_labels": self.models, "group_rows": self.groups,
                "assignment": self.assignment.tolist(), "best_correlation": np.round(self.best, 6).tolist()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def figures(self, out_dir: str | Path) -> list[Path]:
        """:func:`interaction_figures` as PNGs in ``out_dir`` (existing files are never overwritten)."""
        from .. import plotting

        return plotting.save_all(interaction_figures(self), out_dir)


def _binned_confidence(per_point: np.ndarray, confidence: np.ndarray, bins: int = 8) -> list[dict]:
    edges = np.unique(np.quantile(per_point, np.linspace(0, 1, bins + 1)))
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (per_point >= lo) & ((per_point <= hi) if i == len(edges) - 2 else (per_point < hi))
        if inside.any():
            rows.append({"features": [float(lo), float(hi)], "points": int(inside.sum()),
                         "mean_confidence": float(confidence[inside].mean())})
    return rows


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _venn_regions(feature_sets: dict[str, set]) -> dict[str, int]:
    """Features in exactly each combination of groups ('A&B' = in A and B and no other group)."""
    names, regions = list(feature_sets), {}
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            inside = set.intersection(*(feature_sets[g] for g in combo))
            outside = set().union(*(feature_sets[g] for g in names if g not in combo))
            regions["&".join(combo)] = len(inside - outside)
    return regions


# ----------------------------------------------------------------------------- entry points
def interaction_tensor(
    projections: list[np.ndarray] | np.ndarray,
    groups: dict[str, list[int]],
    models: list[str] | None = None,
    confidence: np.ndarray | None = None,
    correct: np.ndarray | None = None,
    correlation_percentile: float = CORRELATION_PERCENTILE,
    gamma: float | None = None,
    presence_percentile: float = PRESENCE_PERCENTILE,
    settings: dict | None = None,
    progress: bool = False,
    layer_dims: list[int] | None = None,
) -> InteractionResult:
    """Build the Interaction Tensor from per-model PCA projections (M of shape N × K, see ``pca_projections``).

    ``groups`` maps a name to model rows; ``gamma`` (absolute) overrides ``correlation_percentile``;
    ``layer_dims`` (D per model, the width of the features PCA reduced) enables the saturation warning.
    """
    p = np.stack([np.asarray(x, dtype=np.float32) for x in projections])
    rows = sorted(r for members in groups.values() for r in members)
    if rows != list(range(len(p))):
        raise DistillscopeError(f"groups must name every model row 0..{len(p) - 1} exactly once, got rows {rows}")
    correlations = cross_correlations(p, progress=progress)
    threshold = correlation_threshold(correlations, correlation_percentile) if gamma is None else float(gamma)
    assignment, best = cluster_components(correlations, threshold, progress=progress)
    present = np.stack([presence(x, presence_percentile) for x in p])
    settings = {"components": p.shape[2], "correlation_percentile": None if gamma is not None else correlation_percentile,
                "gamma": threshold, "presence_percentile": presence_percentile, **(settings or {})}
    labels = models or [f"model{i}" for i in range(len(p))]
    if layer_dims is not None and len(layer_dims) != len(p):
        raise DistillscopeError(f"layer_dims has {len(layer_dims)} entries for {len(p)} models")
    return InteractionResult(dict(groups), labels, assignment, best, present, threshold, settings, confidence, correct,
                             None if layer_dims is None else [int(d) for d in layer_dims])


def images_and_labels(dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images (uint8, N×3×H×W) and labels of a dataset, without augmentation."""
    from ..data import ArrayDataset

    count = len(dataset) if n is None else min(n, len(dataset))
    if isinstance(dataset, ArrayDataset):
        return dataset.images[:count], dataset.targets[:count]
    items = [dataset[i] for i in range(count)]
    return torch.stack([item[0] for item in items]), torch.as_tensor([int(item[1]) for item in items])


def interaction_from_runs(
    groups: dict[str, list[str | Path]],
    data_spec: str,
    layer: str = DEFAULT_LAYER,
    n: int | None = None,
    split: str = "test",
    components: int = COMPONENTS,
    centre: bool = True,
    correlation_percentile: float = CORRELATION_PERCENTILE,
    gamma: float | None = None,
    presence_percentile: float = PRESENCE_PERCENTILE,
    device: str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
    data=None,
    load=None,
) -> InteractionResult:
    """Load every run (run folder -> best checkpoint, or a .safetensors file), tap ``layer`` on the first ``n``
    images of ``split`` (no augmentation; feature maps are flattened to C·H·W, as paper 000 does with the last
    stage, the default ``stage:-1``; ``embedding`` is the same map average-pooled), and build the tensor.
    A caller holding them passes ``data`` (``data_spec`` loaded) and ``load`` (run -> ``(model, state)`` on ``device``)."""
    from ..data import load_data, normalize
    from ..engine import load_model
    from .features import read_features

    if not groups or any(not runs for runs in groups.values()):
        raise DistillscopeError("give at least one group with at least one run, e.g. --group kd=runs/kd-s0,runs/kd-s1")
    if split not in ("train", "test"):
        raise DistillscopeError(f"split '{split}' is not one of train, test")
    data = load_data(data_spec) if data is None else data
    images, labels = images_and_labels(data.train if split == "train" else data.test, n)
    if len(images) <= components:
        raise DistillscopeError(f"{len(images)} images for {components} components; use more images (--n) or fewer components")
    projections, confidence, correct, labels_out, rows, dims = [], [], [], [], {}, []
    runs = [(name, run) for name, members in groups.items() for run in members]
    for name, run in tqdm(runs, desc="models", disable=not progress):
        model, state = load_model(run, device) if load is None else load(run)
        if state["num_classes"] != data.num_classes:
            raise DistillscopeError(f"run '{run}' has {state['num_classes']} classes but '{data_spec}' has {data.num_classes}")
        prepare = lambda x: normalize(x, tuple(state["mean"]), tuple(state["std"]))  # noqa: E731
        out = read_features(model, images, {"f": layer}, batch_size, device, prepare=prepare, logits=True)
        feats, logits = out["f"].flatten(1), out["logits"]  # N × C·H·W for a feature map
        if feats.shape[1] < components:
            raise DistillscopeError(f"layer '{layer}' of '{run}' has {feats.shape[1]} dims, fewer than {components} components; "
                                    f"tap a wider layer (--layer {DEFAULT_LAYER}) or use fewer --components")
        dims.append(int(feats.shape[1]))
        probs = logits.softmax(1).cpu()
        projections.append(pca_projections(feats.cpu().double().numpy(), components, centre).astype(np.float32))
        confidence.append(probs.max(1).values.numpy())
        correct.append((probs.argmax(1) == labels).numpy())
        rows.setdefault(name, []).append(len(labels_out))
        labels_out.append(str(run))
    settings = {"data": data_spec, "split": split, "points": len(images), "layer": layer, "centre": centre}
    return interaction_tensor(projections, rows, labels_out, np.stack(confidence), np.stack(correct), correlation_percentile, gamma,
                              presence_percentile, settings, progress, dims)


# ----------------------------------------------------------------------------- figures
def interaction_figures(result: InteractionResult) -> dict:
    """``{file name: figure}``: feature-frequency curves, features-per-point histograms, shared-feature bars and
    confidence vs feature count."""
    from .. import plotting

    groups, shared = result.stats["groups"], result.stats["shared"]
    drawn = []
    fig, axes = plotting.new_figure(1, 2, figsize=(11, 4))
    for name, entry in groups.items():
        axes[0].plot(entry["frequency_sorted"], label=f"{name} ({entry['features']} features, mean {entry['mean_frequency']:.0f})")
        axes[1].plot(shared["frequency_sorted_of_shared"][name], label=name)
    axes[0].set_title("feature frequency, sorted")
    axes[1].set_title(f"frequency of the {shared['all_groups']} features all groups share")
    if not shared["all_groups"]:
        axes[1].text(0.5, 0.5, "no feature is learned by every group", ha="center", va="center", transform=axes[1].transAxes)
    for ax in axes:
        ax.set_xlabel("feature (ascending frequency)")
        ax.set_ylabel("data points where present")
        ax.legend(fontsize=8)
    drawn.append(fig)

    fig, ax = plotting.new_figure(figsize=(6, 4))
    top = max(max(e["features_per_point"]) for e in groups.values())
    bins = np.arange(0, top + 2) - 0.5 if top < 60 else 40
    for name, entry in groups.items():
        ax.hist(entry["features_per_point"], bins=bins, histtype="step", linewidth=1.5,
                label=f"{name} (mean {entry['features_per_point_mean']:.1f})")
    ax.set_xlabel("features present at a data point")
    ax.set_ylabel("data points")
    ax.legend(fontsize=8)
    drawn.append(fig)

    regions = shared["regions"]
    fig, ax = plotting.new_figure(figsize=(max(5, 0.7 * len(regions) + 2), 4))
    ax.bar(range(len(regions)), list(regions.values()), color="tab:blue")
    ax.set_xticks(range(len(regions)), list(regions), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("features learned by exactly these groups")
    ax.set_title(f"shared features ({result.num_features} in all)")
    drawn.append(fig)

    fig, ax = plotting.new_figure(figsize=(6, 4))
    for name, entry in groups.items():
        binned = entry.get("confidence_vs_features", {}).get("by_feature_count", [])
        if binned:
            ax.plot([np.mean(b["features"]) for b in binned], [b["mean_confidence"] for b in binned], marker="o",
                    label=f"{name} (Pearson r = {_format(entry['confidence_vs_features']['pearson'])})")
    ax.set_xlabel("features present at a data point")
    ax.set_ylabel("mean confidence (max softmax)")
    ax.legend(fontsize=8)
    drawn.append(fig)
    return dict(zip(FIGURES, drawn))
