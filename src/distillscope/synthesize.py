"""Data-free images from a trained teacher: DeepInversion, Adaptive DeepInversion and their floors (``distillscope synthesize``).

DeepInversion (Yin et al., CVPR 2020, "Dreaming to Distill", Eqs. 2-4) optimises a batch x̂ from noise for
sampled target classes y with

    L(x̂) = CE(f(x̂), y) + β_BN Σ_l (‖μ_l(x̂) − μ_l‖₂ + ‖σ²_l(x̂) − σ²_l‖₂) + β_TV R_TV(x̂) + β_L2 ‖x̂‖₂

where μ_l(x̂), σ²_l(x̂) are the batch mean and (biased) variance of the input of BN layer l over (N, H, W)
and μ_l, σ²_l its running statistics; R_TV sums the L2 norms of the horizontal, vertical and both diagonal
neighbour differences. Defaults are the authors' CIFAR-10 "paper parameters" (NVlabs/DeepInversion
``cifar10/``: batch 256, 2,000 Adam steps at lr 0.05, β_BN = 10, β_TV = 2.5e-5, β_L2 = 0), with a random
roll of up to 2 px per step; their "better" images use lr 0.1 and β_TV = 1e-3. We keep the last iterate.

Adaptive DeepInversion (``adi``, §3.3, Eqs. 6-7) adds a competition with a student S to the DeepInversion loss,

    L_ADI(x̂) = L(x̂) + α_c (1 − JS(p_T(x̂), p_S(x̂))),   JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m),  m = ½ (p + q),

with p = softmax(z/τ), natural logs (so JS ∈ [0, ln 2]), averaged over the batch; gradients reach x̂ through
both networks (neither network's weights move). τ = 3 is the authors' (their code's JS temperature, and the KD
temperature the authors report for CIFAR-10). Their code instead takes KL(m ‖ ·) on probabilities clamped to
[0.01, 0.99]; we follow the paper's equation. The student starts fresh (a zoo model; the authors' CIFAR-10
students start untrained) or from a run folder, and learns as images are made: after each finished batch it
takes ``student_steps`` SGD steps (momentum 0.9, weight decay 5e-4) of KD, τ² KL(p_T ‖ p_S), on mini-batches
of ``batch_size`` drawn uniformly from every image made so far, as saved (8-bit), so that a resumed run sees
what an uninterrupted one does (the paper's Table 1 caption, quoted in NVlabs/DeepInversion issue 6: one new
batch every 50 KD iterations, merged into the set made so far). The default α_c = 10 is the paper's CIFAR-10
value as we recall it (§4.1), not checked against a source at hand; the authors' public CIFAR-10 script
defaults to 0.01 and their ImageNet README gives 0.2. The authors' public code has no student training.

Modes: ``deepinversion``; ``adi``; ``deepdream`` (β_BN = 0, the paper's DeepDream floor); ``noise`` (N(0,1)
images in the teacher's normalised space, no optimisation).

Images are labelled by their target class (balanced: image i of batch b gets class (b·B + i) mod K);
``noise`` images are labelled the same way, so train on them with ``method.ce_weight: 0``. Output:
``DIR/train/<class>/b{batch}_{i}.png``, ``DIR/test/<class>/`` (a copy of the first tenth of each class,
so that ``folder:DIR`` reads the set; evaluate students on the real test set), ``DIR/grid.png``,
``DIR/synthesize.json`` (the settings) and ``DIR/teacher_fit.json`` (the teacher's top-1 and cross-entropy on the
saved images against their target classes: whether the images carry their class at all). Each batch is written as
soon as it is done, with a marker ``DIR/done/b{batch}``; a re-run with the same settings skips finished batches.
In ``adi`` mode the marker is itself the student's checkpoint after that batch (weights + SGD momentum, one
atomic write; older markers are emptied once a newer one exists), so a resumed run continues exactly as an
uninterrupted one; the last marker is the final student (``load_model`` reads it).
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .data import denormalize, normalize
from .engine.checkpoint import (atomic_write, fit_weights, load_checkpoint, optimizer_state, optimizer_tensors, prefixed, unprefixed,
                                write_safetensors)
from .errors import DistillscopeError
from .methods.kd import kd_loss

MODES = ("deepinversion", "adi", "deepdream", "noise")


@dataclass
class SynthesisSettings:
    n: int
    mode: str = "deepinversion"
    batch_size: int = 256
    steps: int = 2000
    lr: float = 0.05
    bn_weight: float = 10.0
    tv_weight: float = 2.5e-5
    l2_weight: float = 0.0
    ce_weight: float = 1.0
    size: int = 32
    seed: int = 0
    # adi only: the student (a fresh zoo model or a run folder) and its competition and KD
    student_arch: str | None = None
    student: str | None = None
    competition_weight: float = 10.0
    temperature: float = 3.0
    student_steps: int = 50
    student_lr: float = 0.05

    def record(self) -> dict:
        """The settings a folder is tied to: the ADI fields only in ``adi`` mode (earlier folders stay valid)."""
        return {k: v for k, v in asdict(self).items() if self.mode == "adi" or k not in ADI_FIELDS}


ADI_FIELDS = ("student_arch", "student", "competition_weight", "temperature", "student_steps", "student_lr")


def competition_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """ADI's competition term 1 − JS(p_T, p_S) (Yin et al. 2020, Eq. 6), batch mean, p = softmax(z/τ), natural log."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * (log_p.exp() * (log_p - log_m)).sum(1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(1)
    return 1.0 - js.mean()


class BNStatisticsLoss:
    """Context manager: hooks every BatchNorm2d of ``model``; after a forward pass, :attr:`loss` holds
    Σ_l ‖μ_l(x) − running_mean_l‖₂ + ‖σ²_l(x) − running_var_l‖₂ (DeepInversion Eq. 4, biased batch variance)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.terms: list[torch.Tensor] = []

    def _hook(self, module, inputs, output):
        x = inputs[0].float()
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var))

    def __enter__(self):
        if not self.layers:
            raise DistillscopeError("synthesize: the teacher has no BatchNorm2d layers, so DeepInversion has no statistics to match; "
                                    "use --mode deepdream")
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def reset(self) -> None:
        self.terms = []

    @property
    def loss(self) -> torch.Tensor:
        return torch.stack(self.terms).sum()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sum of the L2 norms of the horizontal, vertical and two diagonal neighbour differences of ``x``."""
    pairs = [(x[:, :, :, :-1], x[:, :, :, 1:]), (x[:, :, :-1, :], x[:, :, 1:, :]), (x[:, :, 1:, :-1], x[:, :, :-1, 1:]),
             (x[:, :, :-1, :-1], x[:, :, 1:, 1:])]
    return sum(torch.linalg.vector_norm(a - b) for a, b in pairs)


def batch_targets(batch: int, count: int, batch_size: int, num_classes: int) -> torch.Tensor:
    start = batch * batch_size
    return torch.arange(start, start + count) % num_classes


def synthesize_batch(teacher: nn.Module, targets: torch.Tensor, s: SynthesisSettings, generator: torch.Generator, device,
                     student: nn.Module | None = None) -> torch.Tensor:
    """One batch of images in the teacher's normalised input space, (B, 3, size, size); ``adi`` needs the
    (frozen, eval-mode) ``student`` of the competition term."""
    x = torch.randn(len(targets), 3, s.size, s.size, generator=generator).to(device)
    if s.mode == "noise":
        return x
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=s.lr)
    targets = targets.to(device)
    bn = BNStatisticsLoss(teacher) if s.mode in ("deepinversion", "adi") else None
    with bn or contextlib.nullcontext():
        for _ in range(s.steps):
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            view = torch.roll(x, shifts=shift, dims=(2, 3))
            if bn:
                bn.reset()
            logits = teacher(view)
            loss = s.ce_weight * F.cross_entropy(logits, targets)
            if bn:
                loss = loss + s.bn_weight * bn.loss
            if s.mode == "adi":
                loss = loss + s.competition_weight * competition_loss(logits, student(view), s.temperature)
            loss = loss + s.tv_weight * total_variation(view) + s.l2_weight * torch.linalg.vector_norm(view)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return x.detach()


def train_student(student: nn.Module, optimizer: torch.optim.Optimizer, teacher: nn.Module, pool: torch.Tensor, s: SynthesisSettings,
                  generator: torch.Generator, mean, std, device) -> None:
    """``s.student_steps`` SGD steps of KD (τ² KL(p_T ‖ p_S)) on mini-batches drawn without replacement from
    ``pool``, every image made so far as uint8 (N, 3, H, W); leaves the student frozen in eval mode."""
    student.train().requires_grad_(True)
    for _ in range(s.student_steps):
        picked = torch.randperm(len(pool), generator=generator)[: s.batch_size]
        x = normalize(pool[picked].to(device), tuple(mean), tuple(std))
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = kd_loss(student(x), teacher_logits, s.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    student.eval().requires_grad_(False)


def to_uint8(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised images (B, 3, H, W) back to uint8 (B, H, W, 3) with the teacher's data mean and std."""
    return denormalize(x.cpu(), tuple(mean), tuple(std)).permute(0, 2, 3, 1).numpy()


def class_folders(classes: list[str]) -> list[str]:
    """Folder names that sort in the teacher's class order (``folder:`` sorts them), prefixed if they would not."""
    return classes if classes == sorted(classes) and len(set(classes)) == len(classes) else [f"{i:03d}_{c}" for i, c in enumerate(classes)]


def _check_out(out: Path, settings: dict) -> None:
    record = out / "synthesize.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved != settings:
            changed = [k for k in {**saved, **settings} if saved.get(k) != settings.get(k)]
            raise DistillscopeError(f"synthesize: '{out}' holds a synthesis with other settings ({', '.join(changed)}); "
                                    "choose another --out or repeat its settings")
    elif out.exists() and any(out.iterdir()):
        raise DistillscopeError(f"synthesize: '{out}' exists and is not a synthesis folder; choose another --out")


def _check_settings(s: SynthesisSettings) -> None:
    if s.mode not in MODES:
        raise DistillscopeError(f"synthesize --mode {s.mode!r}: choose one of {', '.join(MODES)}")
    if s.n < 1 or s.batch_size < 1 or s.steps < 1:
        raise DistillscopeError("synthesize: --n, --batch-size and --steps must be at least 1")
    if s.mode == "adi":
        if (s.student_arch is None) == (s.student is None):
            raise DistillscopeError("synthesize --mode adi: give the student, either --student-arch NAME (a fresh zoo model) or --student "
                                    "RUN (a trained run folder)")
        if s.student_steps < 0 or s.temperature <= 0:
            raise DistillscopeError("synthesize --mode adi: --student-steps must be at least 0 and --temperature positive")
        return
    defaults = {f.name: f.default for f in fields(SynthesisSettings)}
    given = [f"--{k.replace('_', '-')}" for k in ADI_FIELDS if getattr(s, k) != defaults[k]]
    if given:
        raise DistillscopeError(f"synthesize: {', '.join(given)} only apply to --mode adi (the student's competition); "
                                "drop them or use --mode adi")


def _new_student(s: SynthesisSettings, num_classes: int, device) -> tuple[nn.Module, dict]:
    """The ADI student, frozen in eval mode, and the checkpoint state that rebuilds it (``load_model``)."""
    from .engine import load_model
    from .models import create_model

    if s.student is not None:
        student, state = load_model(s.student, device)
        if state["num_classes"] != num_classes:
            raise DistillscopeError(f"synthesize --student '{s.student}': it has {state['num_classes']} classes and the teacher "
                                    f"{num_classes}; give a student of the teacher's data")
        meta = {k: state[k] for k in ("model", "deploy", "config") if k in state}
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            student = create_model(s.student_arch, num_classes=num_classes).to(device)
        meta = {"model": s.student_arch}
    return student.eval().requires_grad_(False), meta


def _save_student(path: Path, student: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """One atomic safetensors write: the student's weights (``model.*``), its optimiser state (``optim.{i}.{key}``), ``state``."""
    write_safetensors(path, {**prefixed("model", student.state_dict()), **optimizer_tensors(optimizer)[0]}, state)


def _restore_student(path: Path, student: nn.Module, optimizer: torch.optim.Optimizer, device) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        raise DistillscopeError(f"synthesize --mode adi: '{path}' holds no student state to resume from (was a later marker removed?); "
                                "start again in a new --out")
    tensors, _ = load_checkpoint(path, device)
    fit_weights(student, unprefixed("model", tensors), str(path))
    optimizer.load_state_dict({"state": optimizer_state(tensors), "param_groups": optimizer.state_dict()["param_groups"]})


def _image_path(out: Path, folders: list[str], batch: int, i: int, target: int) -> Path:
    return out / "train" / folders[target] / f"b{batch:05d}_{i:04d}.png"


def _read_images(out: Path, folders: list[str], batches: int, batch_size: int, pool: torch.Tensor) -> None:
    """Fill ``pool`` (uint8, (N, 3, H, W)) with the saved images of the first ``batches`` (full) batches."""
    for b in range(batches):
        for i, target in enumerate(batch_targets(b, batch_size, batch_size, len(folders)).tolist()):
            image = np.array(Image.open(_image_path(out, folders, b, i, target)).convert("RGB"))
            pool[b * batch_size + i] = torch.from_numpy(image).permute(2, 0, 1)


def synthesize(teacher_path: str | Path, out: str | Path, settings: SynthesisSettings, device: str = "cpu", progress: bool = True) -> Path:
    """Write the data set of ``settings.n`` images from the teacher at ``teacher_path`` into ``out``; returns ``out``."""
    from .engine import load_model

    s, out = settings, Path(out)
    _check_settings(s)
    teacher, state = load_model(teacher_path, device)
    teacher.eval().requires_grad_(False)
    classes, num_classes = state.get("classes") or [str(i) for i in range(state["num_classes"])], state["num_classes"]
    if s.n < num_classes:
        raise DistillscopeError(f"synthesize --n {s.n}: give at least one image per class ({num_classes}) so that every class folder "
                                "exists")
    record = {**s.record(), "teacher": str(teacher_path)}
    _check_out(out, record)
    adi = s.mode == "adi"
    if adi:
        student, student_meta = _new_student(s, num_classes, device)
        optimizer = torch.optim.SGD(student.parameters(), lr=s.student_lr, momentum=0.9, weight_decay=5e-4)
        pool = torch.empty((s.n, 3, s.size, s.size), dtype=torch.uint8)  # every image made so far, for the student's KD
        student_after = -1  # the batch the in-memory student has been trained through
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthesize.json").write_text(json.dumps(record, indent=2))
    folders = class_folders(classes)
    batches = -(-s.n // s.batch_size)
    done = out / "done"
    done.mkdir(exist_ok=True)
    finished = [b for b in range(batches) if (done / f"b{b}").exists()]
    if adi and finished != list(range(len(finished))):
        raise DistillscopeError(f"synthesize --mode adi: '{done}' marks batches {finished}, not a run of batches from 0, so the student "
                                "cannot be resumed; start again in a new --out")
    for b in tqdm(range(batches), desc=f"synthesize ({s.mode})", disable=None if progress else True):
        if b in finished:
            continue
        count = min(s.batch_size, s.n - b * s.batch_size)
        targets = batch_targets(b, count, s.batch_size, num_classes)
        if adi and student_after != b - 1:  # resuming: the student and the images as they were after batch b - 1
            _restore_student(done / f"b{b - 1}", student, optimizer, device)
            _read_images(out, folders, b, s.batch_size, pool)
        generator = torch.Generator().manual_seed(s.seed * 1_000_003 + b)
        images = to_uint8(synthesize_batch(teacher, targets, s, generator, device, student if adi else None), state["mean"], state["std"])
        for i, (image, target) in enumerate(zip(images, targets.tolist())):
            path = _image_path(out, folders, b, i, target)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
        if not adi:
            (done / f"b{b}").touch()
            continue
        made = b * s.batch_size + count
        pool[b * s.batch_size: made] = torch.from_numpy(images).permute(0, 3, 1, 2)
        train_student(student, optimizer, teacher, pool[:made], s, generator, state["mean"], state["std"], device)
        meta = {**student_meta, "num_classes": num_classes, "classes": classes, "mean": list(state["mean"]), "std": list(state["std"]),
                "batch": b}
        _save_student(done / f"b{b}", student, optimizer, meta)
        if b > 0:
            atomic_write(done / f"b{b - 1}", lambda tmp: tmp.write_bytes(b""))  # only the newest marker keeps the student
        student_after = b
    _write_test_copy(out)
    _write_grid(out, folders)
    fit = teacher_fit(teacher, out, folders, state, device)
    (out / "teacher_fit.json").write_text(json.dumps(fit, indent=2))
    return out


@torch.no_grad()
def teacher_fit(teacher: nn.Module, out: Path, folders: list[str], state: dict, device, batch_size: int = 256) -> dict:
    """The teacher's top-1 (%) and mean cross-entropy on the saved (8-bit) training images against their target
    classes: how much of its class each image carries for the teacher that made it."""
    files = [(path, label) for label, folder in enumerate(folders) for path in sorted((out / "train" / folder).glob("*.png"))]
    correct, nll = 0, 0.0
    for start in range(0, len(files), batch_size):
        chunk = files[start: start + batch_size]
        images = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in chunk])).permute(0, 3, 1, 2)
        targets = torch.tensor([label for _, label in chunk], device=device)
        logits = teacher(normalize(images.to(device), tuple(state["mean"]), tuple(state["std"]))).float()
        correct += int((logits.argmax(1) == targets).sum())
        nll += float(F.cross_entropy(logits, targets, reduction="sum"))
    return {"images": len(files), "top1": 100.0 * correct / len(files), "nll": nll / len(files)}


def _write_test_copy(out: Path) -> None:
    """DIR/test: the first tenth (at least one image) of each train class, so ``folder:DIR`` finds both splits."""
    test = out / "test"
    if test.exists():
        shutil.rmtree(test)  # our own copy of train images, rebuilt from the finished set
    for folder in sorted((out / "train").iterdir()):
        files = sorted(folder.glob("*.png"))
        (test / folder.name).mkdir(parents=True)
        for file in files[: max(1, len(files) // 10)]:
            shutil.copy2(file, test / folder.name / file.name)


def _write_grid(out: Path, folders: list[str], per_class: int = 8) -> None:
    """DIR/grid.png: up to ``per_class`` images of each class, one class per row."""
    rows = [sorted((out / "train" / f).glob("*.png"))[:per_class] for f in folders if (out / "train" / f).is_dir()]
    tiles = [[np.asarray(Image.open(p).convert("RGB")) for p in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    grid = np.full((len(tiles) * (h + 2), per_class * (w + 2), 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid[r * (h + 2): r * (h + 2) + h, c * (w + 2): c * (w + 2) + w] = tile
    Image.fromarray(grid).save(out / "grid.png")
