"""The information plane (paper 003 §3, Fig. 2; its supplementary §A): I(X;F) against I(Y;F) of a tapped layer
F, per saved checkpoint, as trajectories over training epochs.

Estimators (each head is trained on features of ``fit`` images and scored on held-out images):

- I(X;F) = H(X) − H(X|F) ≥ H(X) − R(X|F), with R the expected reconstruction error of a decoder from F
  (Hjelm et al. 2019, as paper 003 uses it); R is the binary cross-entropy between the image in [0, 1] and the
  decoder's output, summed over pixels and channels (nats per image). H(X) is unknown, so it is replaced by
  R(X|∅), the BCE of the best input-free prediction (the mean fit image): Î(X;F) = R(X|∅) − R(X|F), the
  reconstruction gain from F, zero when F tells nothing about X. Bias: this is a proxy, not a bound — BCE on
  continuous pixels is not a normalised log-likelihood — and it is biased low by decoder capacity and
  optimisation (a better decoder only raises it); scoring on held-out images keeps memorisation from
  raising it. It supports comparisons (runs, epochs, layers) on one dataset and decoder, not absolute values.
- I(Y;F) = H(Y) − H(Y|F) ≥ H(Y) − CE, CE = E[−log q(Y|F)] of an auxiliary classifier q (cross-entropy is
  never below the conditional entropy). Î(Y;F) = Ĥ(Y) − CE_held-out, Ĥ(Y) the plug-in entropy of the held-out
  labels (nats). Biased low by the classifier's capacity and optimisation (and slightly by the plug-in
  Ĥ(Y), by about (classes − 1) / 2N); unbiased for q's own cross-entropy because it is scored on held-out data.

Heads: a small decoder (1×1 or linear stem, ×2 upsampling 3×3 conv blocks, width ``width``) and a small
classifier (3×3 conv + 4×4 average pool + MLP for maps, an MLP for vectors), trained with Adam and early
stopping on a validation carve of the fit images (paper 003: Adam "to convergence", lr 0.05; here lr 3e-3,
which converged within 30 epochs on the synthetic checks).
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import DistillscopeError
from .features import read_features
from .interaction import images_and_labels

FIGURE = "infoplane.png"


@dataclass
class ProbeSettings:
    """How the decoder and the classifier are trained (at most ``epochs``, early stopping after ``patience``)."""

    epochs: int = 60
    patience: int = 5
    lr: float = 3e-3
    batch_size: int = 128
    width: int = 32
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"


class _Decoder(nn.Module):
    def __init__(self, feature_shape: tuple[int, ...], image_shape: tuple[int, ...], width: int):
        super().__init__()
        channels, height, _ = image_shape
        if len(feature_shape) == 3:
            self.stem, grid = nn.Conv2d(feature_shape[0], width, 1), feature_shape[1]
        else:
            grid = max(1, height // 8)
            self.stem = nn.Sequential(nn.Linear(feature_shape[0], width * grid * grid), nn.Unflatten(1, (width, grid, grid)))
        blocks = [nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        while grid < height:
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
            grid *= 2
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(width, channels, 3, padding=1)
        self.size = image_shape[1:]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(f))
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.head(x)  # logits of the pixel values


def _classifier(feature_shape: tuple[int, ...], num_classes: int, width: int) -> nn.Module:
    if len(feature_shape) == 3:
        pool = min(4, feature_shape[1])
        return nn.Sequential(nn.Conv2d(feature_shape[0], width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                             nn.Linear(width * pool * pool, 4 * width), nn.ReLU(), nn.Linear(4 * width, num_classes))
    return nn.Sequential(nn.Linear(feature_shape[0], 4 * width), nn.ReLU(), nn.Linear(4 * width, num_classes))


def _pixel_bce(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image BCE summed over channels and pixels (nats)."""
    return F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(1)


def _per_sample_loss(head: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss, batch_size: int) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        out = torch.cat([loss(head(inputs[i:i + batch_size]), targets[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])
    head.train()
    return out


def _fit(head: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss, settings: ProbeSettings) -> nn.Module:
    """Adam on ``loss`` (per-sample values, averaged) with early stopping on a validation carve; best state kept."""
    gen = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(inputs), generator=gen).to(inputs.device)
    carve = max(1, int(round(len(inputs) * settings.val_fraction)))
    val, train = order[:carve], order[carve:]
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.lr)
    best, best_state, waited = math.inf, copy.deepcopy(head.state_dict()), 0
    for _ in range(settings.epochs):
        for rows in train[torch.randperm(len(train), generator=gen).to(inputs.device)].split(settings.batch_size):
            optimiser.zero_grad(set_to_none=True)
            loss(head(inputs[rows]), targets[rows]).mean().backward()
            optimiser.step()
        score = _per_sample_loss(head, inputs[val], targets[val], loss, 4 * settings.batch_size).mean().item()
        if best - score > 1e-6 * abs(score):  # a real improvement (always, after the first epoch)
            best, best_state, waited = score, copy.deepcopy(head.state_dict()), 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    head.load_state_dict(best_state)
    return head.eval()


def _check(features_fit: torch.Tensor, features_eval: torch.Tensor, targets_fit, targets_eval) -> None:
    if (features_fit.shape[1:] != features_eval.shape[1:] or len(features_fit) != len(targets_fit)
            or len(features_eval) != len(targets_eval)):
        raise DistillscopeError(f"features {tuple(features_fit.shape)} / {tuple(features_eval.shape)} do not match their "
                                f"{len(targets_fit)} / {len(targets_eval)} targets")
    if features_fit.ndim not in (2, 4):
        raise DistillscopeError(f"features must be vectors (N, D) or maps (N, C, H, W), got {tuple(features_fit.shape)}")


def estimate_ixf(features_fit: torch.Tensor, images_fit: torch.Tensor, features_eval: torch.Tensor, images_eval: torch.Tensor,
                 settings: ProbeSettings = ProbeSettings()) -> dict:
    """Î(X;F) = R(X|∅) − R(X|F) in nats per image (module docstring); images are floats in [0, 1], (N, C, H, W)."""
    _check(features_fit, features_eval, images_fit, images_eval)
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    f_fit, x_fit, f_eval, x_eval = (t.float().to(device) for t in (features_fit, images_fit, features_eval, images_eval))
    constant = x_fit.mean(0, keepdim=True).clamp(1e-6, 1 - 1e-6)
    r_constant = _pixel_bce(torch.logit(constant).expand_as(x_eval), x_eval).mean().item()
    decoder = _fit(_Decoder(tuple(f_fit.shape[1:]), tuple(x_fit.shape[1:]), settings.width).to(device), f_fit, x_fit, _pixel_bce, settings)
    r_decoder = _per_sample_loss(decoder, f_eval, x_eval, _pixel_bce, 4 * settings.batch_size).mean().item()
    return {"ixf": r_constant - r_decoder, "reconstruction_bce": r_decoder, "constant_bce": r_constant}


def estimate_iyf(features_fit: torch.Tensor, labels_fit: torch.Tensor, features_eval: torch.Tensor, labels_eval: torch.Tensor,
                 num_classes: int, settings: ProbeSettings = ProbeSettings()) -> dict:
    """Î(Y;F) = Ĥ(Y) − CE of an auxiliary classifier on held-out features, in nats (module docstring)."""
    _check(features_fit, features_eval, labels_fit, labels_eval)
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    f_fit, f_eval = features_fit.float().to(device), features_eval.float().to(device)
    y_fit, y_eval = labels_fit.long().to(device), labels_eval.long().to(device)
    p = torch.bincount(y_eval.cpu(), minlength=num_classes).double() / len(y_eval)
    h_y = float(-(p[p > 0] * p[p > 0].log()).sum())

    def cross_entropy(logits, y):
        return F.cross_entropy(logits, y, reduction="none")

    classifier = _fit(_classifier(tuple(f_fit.shape[1:]), num_classes, settings.width).to(device), f_fit, y_fit, cross_entropy, settings)
    ce = _per_sample_loss(classifier, f_eval, y_eval, cross_entropy, 4 * settings.batch_size).mean().item()
    return {"iyf": h_y - ce, "ce": ce, "h_y": h_y}


def epoch_checkpoints(run: str | Path, epochs: list[int] | None = None) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of a run folder's ``epoch_{e}.safetensors``, in epoch order (only ``epochs`` if given)."""
    run = Path(run)
    if not run.is_dir():
        raise DistillscopeError(f"run folder '{run}' does not exist")
    found = sorted((int(m.group(1)), p)
                   for p in run.glob("epoch_*.safetensors") if (m := re.fullmatch(r"epoch_(\d+)\.safetensors", p.name)))
    if not found:
        raise DistillscopeError(f"run '{run}' kept no per-epoch checkpoints; train it with --set run.keep_every=K (e.g. 10)")
    if epochs is None:
        return found
    missing = sorted(set(epochs) - {e for e, _ in found})
    if missing:
        raise DistillscopeError(f"run '{run}' kept no checkpoint of epoch(s) {missing}; it kept {[e for e, _ in found]}")
    return [(e, p) for e, p in found if e in epochs]


@dataclass
class InfoPlaneResult:
    """One point per run, layer and kept epoch: ``ixf``, ``iyf`` and what they were computed from."""

    points: list[dict]
    settings: dict

    def trajectory(self, run: str, layer: str) -> list[dict]:
        return [p for p in self.points if p["run"] == run and p["layer"] == layer]

    def to_dict(self) -> dict:
        return {"settings": self.settings, "points": self.points}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def figures(self, out_dir: str | Path) -> list[Path]:
        """``infoplane.png`` in ``out_dir`` (an existing file is never overwritten)."""
        from .. import plotting

        return plotting.save_all({FIGURE: infoplane_figure(self)}, out_dir)


def infoplane_figure(result: InfoPlaneResult):
    """The information plane: one panel per layer, a line per run, points coloured by epoch."""
    from .. import plotting

    points = result.points
    layers = list(dict.fromkeys(p["layer"] for p in points))
    runs = list(dict.fromkeys(p["run"] for p in points))
    names = [Path(run).name for run in runs]
    labels = names if len(set(names)) == len(names) else runs
    epochs = [p["epoch"] for p in points]
    fig, axes = plotting.new_figure(1, len(layers), figsize=(5.5 * len(layers) + 1, 4.5), squeeze=False)
    markers = "osD^v<>ph*"
    for ax, layer in zip(axes[0], layers):
        for i, run in enumerate(runs):
            trail = result.trajectory(run, layer)
            x, y, e = ([p[key] for p in trail] for key in ("ixf", "iyf", "epoch"))
            ax.plot(x, y, color="0.6", linewidth=1, zorder=1)
            scatter = ax.scatter(x, y, c=e, cmap=plotting.SEQUENTIAL, vmin=min(epochs), vmax=max(epochs), marker=markers[i % len(markers)],
                                 edgecolors="k", linewidths=0.4, zorder=2, label=labels[i])
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("I(X;F) estimate (nats / image)")
        ax.set_ylabel("I(Y;F) estimate (nats)")
        ax.legend(fontsize=8)
    fig.colorbar(scatter, ax=axes[0].tolist(), label="epoch")
    return fig


def layer_features(model: nn.Module, layer: str, images: torch.Tensor, mean, std, device, batch_size: int = 256) -> torch.Tensor:
    """Features of ``model`` at ``layer`` for uint8 ``images`` (eval mode, no augmentation), on ``device``."""
    from ..data import normalize

    return read_features(model, images, {"f": layer}, batch_size, device, prepare=lambda x: normalize(x, tuple(mean), tuple(std)))["f"]


def information_plane(runs: list[str | Path], data_spec: str, layers: list[str] = ("embedding",), n_fit: int = 2000, n_eval: int = 1000,
                      settings: ProbeSettings = ProbeSettings(), progress: bool = True, epochs: list[int] | None = None,
                      data=None) -> InfoPlaneResult:
    """Estimate (Î(X;F), Î(Y;F)) for every run's ``epoch_{e}.safetensors`` (only ``epochs`` if given) and every
    layer: heads fit on the first ``n_fit`` training images and scored on the first ``n_eval`` test images (no
    augmentation). A caller holding it passes ``data`` (``data_spec`` loaded)."""
    from ..data import load_data
    from ..engine import load_model

    if not runs:
        raise DistillscopeError("give at least one run folder")
    work = [(run, epoch, path) for run in runs for epoch, path in epoch_checkpoints(run, epochs)]
    data = load_data(data_spec) if data is None else data
    fit_images, fit_labels = images_and_labels(data.train, n_fit)
    eval_images, eval_labels = images_and_labels(data.test, n_eval)
    device = torch.device(settings.device)
    points = []
    for run, epoch, path in tqdm(work, desc="checkpoints", disable=not progress):
        model, state = load_model(path, device)
        if state["num_classes"] != data.num_classes:
            raise DistillscopeError(f"checkpoint '{path}' has {state['num_classes']} classes but '{data_spec}' has {data.num_classes}")
        for layer in layers:
            f_fit, f_eval = (layer_features(model, layer, images, state["mean"], state["std"], device)
                             for images in (fit_images, eval_images))
            x_fit, x_eval = fit_images.float() / 255, eval_images.float() / 255
            point = {"run": str(run), "layer": layer, "epoch": epoch, "test_top1": state.get("metrics", {}).get("test/top1")}
            point.update(estimate_ixf(f_fit, x_fit, f_eval, x_eval, settings))
            point.update(estimate_iyf(f_fit, fit_labels, f_eval, eval_labels, data.num_classes, settings))
            points.append(point)
    meta = {"data": data_spec, "fit": f"first {len(fit_images)} training images", "held_out": f"first {len(eval_images)} test images",
            "layers": list(layers), "probe": asdict(settings), "units": {"ixf": "nats per image", "iyf": "nats"}}
    return InfoPlaneResult(points, meta)
