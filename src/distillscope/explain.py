"""``distillscope explain``: what a KD student learned, as maps, scores and numbers, in one folder.

For a student, its teacher and optionally its base (same architecture trained without KD; the teacher
stands in when absent, as the UniCAM paper allows for same-architecture pairs) on a dataset's test
split, it writes into a new folder:

* ``grid.png`` and ``grid_<layer>.png``: images, Grad-CAM (true class) of teacher / student / base and
  UniCAM distilled / residual, averaged over ``--layers`` and per layer, on ``--grid-images`` test images drawn
  with ``--seed``, one per class in turn (:func:`grid_rows`);
* ``scores.csv`` / ``scores.json``: FSS, RS and the partial RS per layer (``analysis/scores.py``), on clean
  and on each model's own ROAD-LeRF inputs, vs the teacher and vs the base. ROAD ranks the pixels by each
  model's own ``road_cam`` at that layer (softmax of the true class): Grad-CAM by default, as in the paper
  (Adhane et al., Fig. 4 caption and Sec. 4.2.2: layer-specific features "extracted from regions localised
  using Grad-CAM"); ``hirescam``, which the authors' released code uses (``PetImages/main_RS_FSS.py`` in
  github.com/gadhane/UniCAM), is the other choice;
* ``localisation.csv`` / ``.json`` when the data has object masks (``shapes``): energy in the mask and
  pointing-game hits of every map;
* ``summary.md`` and ``settings.json`` (batch size, seed, estimator, CAMs, label embeddings, notes).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import plotting
from .analysis.cam import CAM_METHODS, class_logit
from .analysis.embeddings import label_embeddings
from .analysis.localisation import localisation_scores
from .analysis.scores import feature_scores
from .analysis.unicam import distilled_and_residual, unicam_maps
from .data import load_data
from .data.augment import normalize
from .data.base import ArrayDataset
from .data.loader import Loader
from .engine import load_model
from .engine.device import pick_device
from .errors import DistillscopeError


@dataclass
class ExplainSettings:
    student: str
    teacher: str
    data: str
    out: str
    base: str | None = None
    layers: list[str] = field(default_factory=lambda: ["stage:-1"])
    labels: str = "auto"
    estimator: str = "unbiased"
    cam: str = "gradcam"  # the Grad-CAM grids and UniCAM maps
    road_cam: str = "gradcam"  # ranks the pixels ROAD-LeRF removes for the perturbed FSS/RS ("gradcam" or "hirescam")
    # (B, tokens, C) layers as maps: "auto" (1 class token if tokens-1 is square), N prefix tokens, None: off
    tokens: str | int | None = "auto"
    batch_size: int = 64
    seed: int = 0
    limit: int | None = None
    road_fraction: float | None = 0.5
    grid_images: int = 8
    device: str = "auto"
    progress: bool = True


def _images_of(dataset, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if isinstance(dataset, ArrayDataset):
        masks = None if dataset.masks is None else dataset.masks[:n]
        return dataset.images[:n], dataset.targets[:n], masks
    items = [dataset[i] for i in range(n)]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items]), None


def _load_models(settings: ExplainSettings, device: torch.device, num_classes: int, load=None) -> tuple[dict, dict]:
    models, states = {}, {}
    for role in ("student", "teacher", "base"):
        path = getattr(settings, role)
        if path is None:
            continue
        models[role], states[role] = load(path) if load else load_model(path, device)
        if states[role]["num_classes"] != num_classes:
            raise DistillscopeError(f"--{role} '{path}' has {states[role]['num_classes']} classes but '{settings.data}' has {num_classes}")
    return models, states


def _road_lerf(fraction: float | None, mean, std, seed: int):
    """``perturb(images, maps)``: ROAD-LeRF removal of the least relevant ``fraction`` of pixels, imputed in
    [0, 1] pixel units (ROAD's noise 0.01 is in those units) and normalised again; None for clean only."""
    if fraction is None:
        return None
    from .analysis.road import road_perturb

    generator = torch.Generator().manual_seed(seed)

    def perturb(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
        return (road_perturb(images * s + m, maps, fraction, "lerf", generator=generator) - m) / s

    return perturb


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def run_explain(settings: ExplainSettings, data=None, load=None) -> dict:
    """Compute everything and write the output folder (which must not exist yet, or be empty). ``data`` (the loaded
    ``settings.data``) and ``load`` (``path -> (model, state)`` on the settings' device) let a caller that has them
    loaded already, such as the report, hand them over instead of reading them again."""
    out = Path(settings.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DistillscopeError(f"--out '{out}' already exists and is not empty; choose a new folder")
    for name in ("cam", "road_cam"):
        if getattr(settings, name) not in CAM_METHODS:
            raise DistillscopeError(f"{name} '{getattr(settings, name)}' unknown; valid: {', '.join(CAM_METHODS)}")
    started = time.perf_counter()
    device = pick_device(settings.device)
    data = load_data(settings.data) if data is None else data
    models, states = _load_models(settings, device, data.num_classes, load)
    notes = []
    mean, std = tuple(states["student"]["mean"]), tuple(states["student"]["std"])
    for role, state in states.items():
        if tuple(state["mean"]) != mean or tuple(state["std"]) != std:
            notes.append(f"{role} was trained with another input normalisation; the student's is used for all models")
    raw, targets, masks = _images_of(data.test, settings.limit)
    images, targets = normalize(raw.to(device), mean, std), targets.to(device)
    layers = {spec: spec for spec in settings.layers}

    kind, _, source = settings.labels.partition(":")
    proto_model = models.get(source or "teacher") if kind == "prototype" else None
    if kind == "prototype" and proto_model is None:
        raise DistillscopeError(f"--labels {settings.labels}: name a loaded model, e.g. prototype:teacher")
    batches = Loader(data.train, 256, mean, std, device=device).epoch(0) if kind == "prototype" else None
    embeddings = label_embeddings(data.classes, kind, proto_model, batches)

    gradcam = {role: _gradcam_maps(model, images, targets, layers, settings) for role, model in models.items()}

    base_role = "base" if "base" in models else "teacher"
    if base_role == "teacher":
        notes.append("no --base given: the teacher is the base of UniCAM (best when it shares the student's architecture)")
    distilled, residual = distilled_and_residual(models["student"], models[base_role], layers, embeddings, CAM_METHODS[settings.cam],
                                                 settings.tokens)
    unicam = {
        label: unicam_maps(u, images, targets, settings.batch_size, settings.seed, settings.progress, desc=f"UniCAM {label}")
        for label, u in (("distilled", distilled), ("residual", residual))
    }
    notes += sorted(set(unicam["distilled"]["notes"]))

    perturb = _road_lerf(settings.road_fraction, mean, std, settings.seed)
    references = {role: model for role, model in models.items() if role != "student"}
    score_rows = feature_scores(models["student"], references, layers, images, targets, embeddings, estimator=settings.estimator,
                                perturb=perturb,
                                cam=settings.road_cam, batch_size=settings.batch_size, seed=settings.seed, progress=settings.progress,
                                tokens=settings.tokens)["rows"]

    all_maps = {f"gradcam_{role}": maps for role, maps in gradcam.items()}
    for label, res in unicam.items():
        all_maps[f"unicam_{label}"] = _with_mean(res["layers"])
    loc_rows = [] if masks is None else _localisation(all_maps, masks, unicam["distilled"]["valid"])

    out.mkdir(parents=True, exist_ok=True)
    shown = grid_rows(targets.cpu(), settings.grid_images, settings.seed)
    _save_grids(out, raw, targets.cpu(), data.classes, all_maps, shown)
    _write_csv(out / "scores.csv", score_rows)
    (out / "scores.json").write_text(json.dumps(score_rows, indent=1))
    if loc_rows:
        _write_csv(out / "localisation.csv", loc_rows)
        (out / "localisation.json").write_text(json.dumps(loc_rows, indent=1))
    record = {**asdict(settings), "label_embeddings": embeddings.kind, "unicam_base": base_role, "images": len(images), "grid_rows": shown,
              "unicam_r2": {k: v["r2"] for k, v in unicam.items()}, "notes": notes, "seconds": round(time.perf_counter() - started, 1)}
    (out / "settings.json").write_text(json.dumps(record, indent=1))
    (out / "summary.md").write_text(_summary(record, score_rows, loc_rows))
    return {"scores": score_rows, "localisation": loc_rows, "settings": record, "out": out}


def _gradcam_maps(model, images: torch.Tensor, targets: torch.Tensor, layers: dict, settings: ExplainSettings) -> dict[str, torch.Tensor]:
    """The model's CAM of the true class's logit at each layer (and their mean), batch by batch."""
    maps = {name: [] for name in layers}
    for rows in torch.arange(len(images), device=images.device).split(settings.batch_size):
        result = CAM_METHODS[settings.cam](model, layers, tokens=settings.tokens)(images[rows], class_logit(targets[rows]))
        for name in layers:
            maps[name].append(result.layers[name].cpu())
    return _with_mean({name: torch.cat(parts) for name, parts in maps.items()})


def _localisation(all_maps: dict, masks: torch.Tensor, unicam_valid: torch.Tensor) -> list[dict]:
    """Localisation scores of every map set and layer; UniCAM maps only where their batch was not skipped."""
    rows = []
    for map_name, per_layer in all_maps.items():
        keep = unicam_valid if map_name.startswith("unicam") else torch.ones_like(unicam_valid)
        for layer, maps in per_layer.items():
            rows.append({"maps": map_name, "layer": layer, **localisation_scores(maps[keep], masks[keep])})
    return rows


def _with_mean(per_layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-layer maps, plus their mean under ``mean`` when there are several layers."""
    if len(per_layer) > 1:
        per_layer["mean"] = torch.stack(list(per_layer.values())).mean(dim=0)
    return per_layer


def grid_rows(targets: torch.Tensor, count: int, seed: int) -> list[int]:
    """Rows of the ``count`` images the grids show: a seeded permutation of the split dealt one image per class in
    turn (every class once before any twice), so a split ordered by class still shows several classes."""
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed)).tolist()
    turn, seen = [], {}
    for row in order:
        label = int(targets[row])
        turn.append(seen.get(label, 0))
        seen[label] = turn[-1] + 1
    return [row for _, row in sorted(zip(turn, order), key=lambda pair: pair[0])][:count]


def _save_grids(out: Path, raw: torch.Tensor, targets: torch.Tensor, classes: list[str], all_maps: dict, rows: list[int]) -> None:
    """``grid.png`` (the mean over layers, or the one layer) and ``grid_<layer>.png`` per layer of several."""
    layers = next(iter(all_maps.values()))
    for layer in layers:
        name = "grid.png" if layer == "mean" or len(layers) == 1 else f"grid_{layer.replace(':', '').replace('/', '_')}.png"
        plotting.save(_grid(raw, targets, classes, all_maps, layer, rows), out / name)


def _grid(raw: torch.Tensor, targets: torch.Tensor, classes: list[str], all_maps: dict, layer: str, rows: list[int]):
    """The images of ``rows``, each with every map set's map at ``layer`` over it (one column per map set)."""
    count = len(rows)
    columns = list(all_maps)
    fig, axes = plotting.new_figure(count, len(columns) + 1, figsize=(1.6 * (len(columns) + 1), 1.6 * count), squeeze=False,
                                    constrained_layout=False)
    for i, row in enumerate(rows):
        picture = raw[row].permute(1, 2, 0).cpu().numpy()
        axes[i, 0].imshow(picture)
        axes[i, 0].set_ylabel(classes[int(targets[row])], fontsize=7)
        for j, name in enumerate(columns, start=1):
            axes[i, j].imshow(picture)
            axes[i, j].imshow(all_maps[name][layer][row].numpy(), cmap=plotting.HEAT, alpha=0.5, vmin=0, vmax=1)
    for j, title in enumerate(["image", *columns]):
        axes[0, j].set_title(title.replace("_", "\n"), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"layer: {layer}", fontsize=8)
    fig.tight_layout()
    return fig


def _summary(record: dict, score_rows: list[dict], loc_rows: list[dict]) -> str:
    lines = [
        "# distillscope explain", "",
        f"student `{record['student']}`, teacher `{record['teacher']}`, base `{record['base'] or '(teacher)'}` on `{record['data']}` "
        f"({record['images']} test images). UniCAM batches of {record['batch_size']} drawn with seed {record['seed']}; "
        f"estimator {record['estimator']}; label embeddings: {record['label_embeddings']}; CAM: {record['cam']}; "
        f"ROAD-LeRF removal fraction: {record['road_fraction']}, pixels ranked by {record['road_cam']}. {record['seconds']} s.", "",
        "## Scores (pooled over batches; mean ± std over batches in scores.csv)", "",
        "| reference | layer | condition | FSS | RS student | RS reference | RS student given reference | RS reference given student |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table: dict = {}
    for row in score_rows:
        table.setdefault((row["reference"], row["layer"], row["condition"]), {})[row["statistic"]] = row["pooled"]
    for (ref, layer, cond), stats in table.items():
        cells = [_fmt(stats.get(s))
                 for s in ("fss", "rs_student", "rs_reference", "rs_student_given_reference", "rs_reference_given_student")]
        lines.append(f"| {ref} | {layer} | {cond} | " + " | ".join(cells) + " |")
    if loc_rows:
        lines += ["", "## Localisation on the object masks", "",
                  "| maps | layer | energy in mask | pointing | mask area (chance) | undefined |", "|---|---|---|---|---|---|"]
        for row in loc_rows:
            lines.append(f"| {row['maps']} | {row['layer']} | {_fmt(row['energy'])} | {_fmt(row['pointing'])} | "
                         f"{_fmt(row['mask_area'])} | {row['undefined']} |")
    if record["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in record["notes"]]]
    return "\n".join(lines) + "\n"
