"""The Trainer: one student, an optional frozen teacher, one method, exact checkpoints.

Every epoch it trains (progress bar), evaluates on validation and test, logs, and atomically writes
``last.safetensors`` (everything needed to resume) and, when validation top-1 improves,
``best.safetensors`` (the student alone); with ``run.keep_every=k`` also ``epoch_{e}.safetensors`` (the student
alone) after every k-th epoch. Selection uses the validation split only, never test.
SIGINT/SIGTERM finish the current step, checkpoint mid-epoch and stop; ``resume=True`` continues
exactly where the run stopped: data order, augmentation and RNG state are replayed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..config import Config, from_dict
from ..data import Loader, denormalize, index_and_targets, load_data, normalize, same_data
from ..errors import DistillscopeError, warn
from ..methods import Outputs, TrainingInfo, create_method
from ..methods.sfkd import softening_temperature, teacher_entropy_sums
from ..models import FeatureTaps, canonical_tap, create_model
from .cache import CacheSpaceError, TeacherCache, augmentation_space, default_cache_root, run_cache_key
from .checkpoint import fit_weights, load_checkpoint, load_weights, optimizer_state, optimizer_tensors, prefixed, read_weights, save_checkpoint, unprefixed
from .cuda_graph import GraphedStep
from .distributed import Distributed, ShardedLoader, sync_batchnorm
from .evaluate import classification_metrics, collect_logits, topk_correct
from .logging import RunLogger
from .precision import AMP_DTYPES, choose_precision, time_train_step
from .schedule import lr_at

RUN_ONLY_KEYS = {"progress", "log_every", "device", "threads", "keep_every", "teacher_cache", "teacher_cache_max_gib"}


class TrainingInterrupted(DistillscopeError):
    """Raised after a signal: the run was checkpointed and can be resumed."""


class NonFiniteLoss(DistillscopeError):
    """Raised when a loss term becomes NaN/inf; the last good checkpoint is kept."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DistillscopeError(f"run.device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillscopeError("run.device asks for cuda but this torch sees no GPU; use run.device=cpu")
    return device


def _first_difference(a: list | None, b: list) -> str:
    if a is None:
        return "the teacher recorded none"
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"class {i}: teacher '{a[i] if i < len(a) else '-'}', data '{b[i] if i < len(b) else '-'}'"


def describe_machine(device: torch.device) -> str:
    """A short description of the hardware that ran: GPU name, else the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores ({torch.backends.cpu.get_cpu_capability()})"


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def view_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of a method's extra view at ``step`` of ``epoch`` (independent streams per key)."""
    key = hashlib.sha256(f"extra-view/{seed}/{epoch}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def _training_config(cfg: dict) -> dict:
    return {**cfg, "run": {k: v for k, v in cfg["run"].items() if k not in RUN_ONLY_KEYS}}


class Trainer:
    """Train ``config.student`` with ``config.method`` into the run folder ``out_dir``."""

    def __init__(self, config: Config, out_dir: str | Path, resume: bool = False):
        self.cfg, self.out = config, Path(out_dir)
        self.dist = Distributed.from_env(pick_device(config.run.device))
        resume = self._check_run_folder(resume)
        seed_everything(config.seed, config.run.deterministic)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.device = self.dist.place(pick_device(config.run.device))
        self.memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format

        d = config.data
        self.data = load_data(d.spec, d.val_fraction, d.split_seed)
        loader_args = dict(mean=self.data.mean, std=self.data.std, device=self.device, channels_last=config.run.channels_last, num_workers=d.num_workers)
        shard = dict(rank=self.dist.rank, world=self.dist.world) if self.dist.enabled else {}
        self.train_loader = (ShardedLoader if shard else Loader)(self.data.train, d.batch_size, train=True, **shard, seed=config.seed, pad=d.pad, flip=d.flip, augment=d.augment, scale=d.crop_scale, ratio=d.crop_ratio, drop_last=len(self.data.train) > d.batch_size, **loader_args)
        self.eval_loaders = {split: Loader(ds, d.eval_batch_size, **loader_args) for split, ds in (("val", self.data.val), ("test", self.data.test)) if ds is not None}

        self.student = self._build_student()
        self.teacher = self._load_teacher(config.teacher)
        self.teachers = [self._load_teacher(t, f"teachers[{i}]") for i, t in enumerate(config.teachers)]  # multi-teacher methods
        chosen = self._saved_precision() if resume else choose_precision(config.run.precision, self.device, self._time_step, self._precision_key())
        self._set_precision(*self.dist.agree(chosen, self.device))  # auto times each rank: all take rank 0's choice
        params = {k: v for k, v in config.method.items() if k != "name"}
        self.method = create_method(config.method["name"], **params)
        student_taps, teacher_taps = self.method.taps(self.student, self.teacher)
        self.student_taps = FeatureTaps(self.student, student_taps)
        self.teacher_taps = FeatureTaps(self.teacher, teacher_taps) if self.teacher is not None else None
        self.teachers_taps = [FeatureTaps(t, self.method.taps(self.student, t)[1]) for t in self.teachers]
        self._build_method()
        self.model = self.method.deployable(self.student)  # what is evaluated and saved (the student, or e.g. SimKD's)
        logit_mask = self.method.mask is not None and self.method.mask.logits is not None
        self.entropy_T = softening_temperature(self.method) if logit_mask else None  # (T, note): the teacher entropy is recorded
        self.entropy_step = torch.zeros(2, device=self.device) if logit_mask else None  # written in place by each step (and graph replay)
        self._connect_method_hooks()

        trainable = list(self.student.parameters()) + [p for p in self.method.parameters() if p.requires_grad]
        self.trains_teacher = self.teacher is not None and not self.method.freeze_teacher
        if self.trains_teacher:
            self.teacher.train().requires_grad_(True)
            trainable += list(self.teacher.parameters())
        self.teacher_cache = self._open_teacher_cache(self.cfg.teacher, self.teacher, self.teacher_taps)
        caches = [self._open_teacher_cache(*t) for t in zip(self.cfg.teachers, self.teachers, self.teachers_taps)]
        self.teacher_caches = caches if caches and None not in caches else []  # one per teacher, or none
        self.student_taps.model = self.dist.wrap(self.student, self.device)  # DDP runs the forward; the taps' hooks still fire
        in_ddp = {id(p) for p in self.student.parameters()}
        self.unwrapped_params = [p for p in trainable if id(p) not in in_ddp]
        if config.run.compile:
            for model in (self.student, self.teacher, *self.teachers):
                if model is not None:
                    model.compile()  # in place: state-dict keys and the taps' hooks stay
        o, graphs = config.optim, config.run.cuda_graph
        lr = torch.tensor(o.lr, device=self.device) if graphs else o.lr  # a graph reads the rate from device memory
        self.optimizer = torch.optim.SGD(trainable, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay, fused=graphs or None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.run.precision == "fp16")
        self.graphed = self._graphed_step() if graphs else None
        self.trainable = trainable

        self.epoch = self.step = self.step_in_epoch = 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.sums: dict[str, float] = {}
        self.train_seconds = 0.0
        self.seconds: float | None = 0.0  # wall time of the finished epochs over all sittings (None: an older run did not count it)
        self._stop = threading.Event()
        if resume:
            self._restore()
        elif self.dist.is_main:
            self._start_run_folder()
        self.logger = RunLogger(self.out) if self.dist.is_main else None

    # ----------------------------------------------------------------- setup
    def _check_run_folder(self, resume: bool) -> bool:
        """Whether there is a checkpoint to resume; refuses to start over an existing run."""
        saved, config = self.out / "last.safetensors", self.out / "config.yaml"
        if not self.dist.is_main:  # rank 0 checks (and creates the folder); the others only read it
            return resume and saved.is_file()
        if resume and not saved.is_file() and not config.is_file():
            raise DistillscopeError(f"cannot resume: '{saved}' does not exist; start the run without --resume")
        if not resume and (saved.exists() or config.exists()):
            raise DistillscopeError(f"run folder '{self.out}' already holds a run; pass --resume to continue it or choose another --out")
        return resume and saved.is_file()

    def _start_run_folder(self) -> None:
        """Create the run folder and record the config, once everything was built without error."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def _build_student(self) -> torch.nn.Module:
        s = self.cfg.student
        model = create_model(s.name, num_classes=self.data.num_classes)
        if s.checkpoint:
            load_weights(model, s.checkpoint, s.skip_keys)
        if self.cfg.run.sync_bn and self.dist.enabled:
            model = sync_batchnorm(model, self.device)
        return model.to(self.device, memory_format=self.memory_format)

    def _load_teacher(self, t, role: str = "teacher") -> torch.nn.Module | None:
        if t is None or not t.checkpoint:
            return None
        if t.skip_keys:
            raise DistillscopeError(f"{role}.skip_keys: a teacher must load all its weights; remove skip_keys from the teacher")
        model = create_model(t.name, num_classes=self.data.num_classes)
        weights, state, file = read_weights(t.checkpoint)
        if state is not None and state["model"] != t.name:
            raise DistillscopeError(f"{role}.checkpoint holds a '{state['model']}', not a '{t.name}'; fix {role}.name")
        if state is not None and state["num_classes"] != self.data.num_classes:
            raise DistillscopeError(f"{role} has {state['num_classes']} classes but data '{self.cfg.data.spec}' has {self.data.num_classes}")
        fit_weights(model, weights, str(file))
        if state is not None and state.get("classes") != self.data.classes:
            warn(f"the teacher's class names differ from this run's ({_first_difference(state.get('classes'), self.data.classes)}); check that the class order matches")
        elif state is not None and not same_data(state.get("data", ""), self.cfg.data.spec):
            warn(f"the teacher was trained on '{state.get('data')}' but this run uses '{self.cfg.data.spec}'; distilling across datasets is rarely intended")
        model.eval().requires_grad_(False)
        return model.to(self.device, memory_format=self.memory_format)

    def _saved_precision(self) -> tuple[str, str]:
        """The precision the run being resumed started with (``auto`` may measure differently now)."""
        state = json.loads((self.out / "last.json").read_text())
        if "precision" not in state:  # a run saved before precisions were recorded
            return choose_precision(self.cfg.run.precision, self.device)
        return state["precision"], state.get("precision_reason", "restored")

    def _set_precision(self, name: str, reason: str) -> None:
        self.precision_name, self.precision_reason, self.amp_dtype = name, reason, AMP_DTYPES[name]

    def _precision_key(self) -> str:
        d = self.cfg.data
        models = "+".join(m.name for m in (self.cfg.student, self.cfg.teacher, *self.cfg.teachers) if m is not None)
        return f"{describe_machine(self.device)}|torch {torch.__version__}|{torch.get_num_threads()} threads|{models}|batch {d.batch_size}|{tuple(self._image_shape())}|cl {self.cfg.run.channels_last}"

    def _image_shape(self) -> torch.Size:
        train = self.data.train
        return train.images.shape[1:] if hasattr(train, "images") else train[0][0].shape

    def _time_step(self, amp_dtype: torch.dtype | None) -> float:
        """Seconds per forward/backward step of a copy of the student (plus the teacher's forward) at the run's batch shape."""
        student = copy.deepcopy(self.student).train()
        images = torch.randn(self.cfg.data.batch_size, *self._image_shape(), device=self.device).to(memory_format=self.memory_format)

        def step():
            with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                for teacher in [t for t in (self.teacher, *self.teachers) if t is not None]:
                    with torch.no_grad():
                        teacher(images)
                loss = student(images).float().logsumexp(1).mean()
            loss.backward()

        return time_train_step(step, self.device)

    def _build_method(self) -> None:
        """Show the method its features' shapes and the training data once, so it can create its state."""
        batch = next(Loader(self.data.train, 2, self.data.mean, self.data.std, device=self.device).epoch(0))
        with torch.no_grad():
            self.student.eval()
            student_shapes = {k: v.shape for k, v in self.student_taps(batch.images)[1].items()}
            self.student.train()
            teachers = self.teachers_taps or ([self.teacher_taps] if self.teacher_taps else [])
            shapes = [{k: v.shape for k, v in taps(batch.images)[1].items()} if taps.taps else {} for taps in teachers]
            teacher_shapes = shapes[0] if shapes else {}  # multi-teacher: the first one's (recorded with the run)
        index, targets = index_and_targets(self.data.train)
        info = TrainingInfo(self.data.num_classes, index, targets, self.cfg.epochs, len(self.train_loader))
        self.method.build(student_shapes, shapes if self.method.multi_teacher else teacher_shapes, info)  # multi-teacher: one mapping per teacher
        self.feature_shapes = {"student": {k: list(v) for k, v in student_shapes.items()}, "teacher": {k: list(v) for k, v in teacher_shapes.items()}}
        self.method.to(self.device)
        self._warn_where_the_mask_changes_nothing(teachers)

    def _warn_where_the_mask_changes_nothing(self, teachers: list[FeatureTaps]) -> None:
        """SFKD keeps the top K of a map's entries (or positions), so on a map after a ReLU with fewer nonzero
        entries than that it is the identity: say so, with the largest nonzero share seen on 64 training images."""
        mask = self.method.mask
        if mask is None or (mask.features is None and mask.attention is None):
            return
        images = next(Loader(self.data.train, 64, self.data.mean, self.data.std, device=self.device).epoch(0)).images
        shares, by_position = {}, mask.features is None  # an attention mask alone keeps positions, not entries
        for taps in teachers:
            with torch.no_grad():
                outputs = Outputs(*taps(images))
            masked = mask(outputs).features
            for name, feature in outputs.features.items():
                if torch.equal(masked[name], feature):
                    units = feature.pow(2).sum(1) if by_position and feature.dim() == 4 else feature
                    share = (units != 0).flatten(1).float().mean(1).max().item()
                    shares[taps.taps[name]] = max(share, shares.get(taps.taps[name], 0.0))
        unit = "positions" if by_position else "entries"
        self.method.run_warnings = (*self.method.run_warnings, *(
            f"the SFKD mask leaves teacher tap '{spec}' unchanged on 64 training images: at most {share:.0%} of its {unit} are nonzero "
            f"(a map after a ReLU is mostly zeros) and K keeps them all; choose K below {share:.2f} to mask it" for spec, share in sorted(shares.items())))

    def _connect_method_hooks(self) -> None:
        """Pairs for the train loader, the split whose predictions the method wants, its warnings."""
        m, name = self.method, self.cfg.method["name"]
        if m.needs_pairs:
            if self.teacher is not None:
                raise DistillscopeError(f"method '{name}' pairs samples and uses its own outputs on them as the teacher; remove the teacher section")
            self.train_loader.pair_rows = m.pair_rows
        if m.prediction_split is not None:
            splits = ["train", *self.eval_loaders]
            if m.prediction_split not in splits:
                raise DistillscopeError(f"method '{name}' wants predictions on '{m.prediction_split}', which this run lacks (splits: {', '.join(splits)}); set data.val_fraction > 0 or choose another split")
            if m.prediction_split == "train":
                d = self.cfg.data
                self.train_eval_loader = Loader(self.data.train, d.eval_batch_size, self.data.mean, self.data.std, device=self.device, channels_last=self.cfg.run.channels_last, num_workers=d.num_workers)
        for message in m.run_warnings:
            warn(f"method '{name}': {message}")

    def _open_teacher_cache(self, spec, teacher, taps) -> TeacherCache | None:
        """The teacher-output cache (``run.teacher_cache``) of one frozen teacher: its logits and, within
        ``run.teacher_cache_max_gib``, the features the method taps."""
        run, d = self.cfg.run, self.cfg.data
        if run.teacher_cache == "off" or teacher is None:
            return None
        space = augmentation_space(d.pad, d.flip, d.augment)
        recorded = self.train_loader.plan(0)[1].keys()
        key = reason = None
        if self.trains_teacher:
            reason = f"method '{self.cfg.method['name']}' trains the teacher, but the cache holds a frozen teacher's outputs"
        elif recorded != space.keys():
            reason = f"the loader records augmentation fields {sorted(recorded)}, not the cache's {list(space)}"
        else:
            key, gib = run_cache_key(spec.name, taps, self.data, space, self.precision_name, run.teacher_cache_topk, run.teacher_cache_max_gib)
            if gib is not None:
                reason = (f"method '{self.cfg.method['name']}' taps teacher features that would make a {gib:.1f} GiB cache, "
                          f"above run.teacher_cache_max_gib={run.teacher_cache_max_gib:g}; raise it to cache them")
        if reason:
            if run.teacher_cache == "auto":
                return None
            raise DistillscopeError(f"run.teacher_cache={run.teacher_cache}: {reason}, or set run.teacher_cache=off")
        root = default_cache_root() if run.teacher_cache == "auto" else Path(run.teacher_cache)
        names = {name: canonical_tap(teacher, tap) for name, tap in taps.taps.items()}
        try:
            return TeacherCache.open(root, key, self.device, index_and_targets(self.data.train)[0], names)
        except CacheSpaceError as err:
            if run.teacher_cache != "auto":
                raise
            warn(f"{err}; this run forwards the teacher every step instead")
            return None

    def _graphed_step(self) -> GraphedStep:
        why = (
            f"method '{self.cfg.method['name']}', which draws a new extra view on the host every step" if self.method.needs_extra_view
            else f"run.device={self.device}" if self.device.type != "cuda"
            else f"{self.dist.world} processes" if self.dist.enabled
            else "run.precision=fp16 (its gradient scaler reads the device every step)" if self.scaler.is_enabled()
            else None
        )
        if why:
            raise DistillscopeError(f"run.cuda_graph=true needs one CUDA process in fp32 or bf16, not {why}; set run.cuda_graph=false")
        caches = [c for c in (self.teacher_cache, *self.teacher_caches) if c is not None]
        return GraphedStep(lambda batch, epoch: self._train_step(batch, epoch), self.device, ready=lambda: all(c.complete for c in caches))

    # ----------------------------------------------------------------- training
    def _teacher_outputs(self, batch) -> Outputs | list[Outputs] | None:
        if self.teacher_caches:  # several frozen teachers, each read from its own cache
            return [Outputs(*cache.outputs(batch, self._frozen(taps))) for cache, taps in zip(self.teacher_caches, self.teachers_taps)]
        if self.teachers_taps:
            with torch.no_grad():
                return [Outputs(*taps(batch.images)) for taps in self.teachers_taps]
        if self.teacher_taps is None:
            if batch.pair is None:
                return None
            with torch.no_grad():  # self-teacher: the student's own view of each sample's partner (train mode)
                logits, features = self.student_taps(batch.pair.images)
            return Outputs(logits, features)
        if self.teacher_cache is not None:
            return Outputs(*self.teacher_cache.outputs(batch, self._frozen(self.teacher_taps)))
        with torch.set_grad_enabled(self.trains_teacher):
            logits, features = self.teacher_taps(batch.images)
        return Outputs(logits, features)

    def _extra_view(self, batch, epoch: int) -> torch.Tensor:
        """The method's extra view of the batch, normalised like the batch (made outside autocast)."""
        pixels = denormalize(batch.images, self.data.mean, self.data.std)
        view = self.method.extra_view(pixels, view_generator(self.cfg.seed, epoch, self.step_in_epoch, self.dist.rank))
        return normalize(view, self.data.mean, self.data.std, channels_last=self.cfg.run.channels_last)

    def _add_views(self, student: Outputs, teacher, images: torch.Tensor) -> None:
        """Run the student (with gradient) and the teacher(s) on ``images``; set their outputs' ``view``.
        The teacher cache holds crop+flip views only, so the teacher always runs here."""
        student.view = Outputs(*self.student_taps(images))
        if isinstance(teacher, list):
            with torch.no_grad():
                for outputs, taps in zip(teacher, self.teachers_taps):
                    outputs.view = Outputs(*taps(images))
        elif teacher is not None and self.teacher_taps is not None:
            with torch.set_grad_enabled(self.trains_teacher):
                teacher.view = Outputs(*self.teacher_taps(images))

    @staticmethod
    def _frozen(taps: FeatureTaps):
        """``taps`` run without gradient: how a teacher cache fills its missing entries."""
        def forward(images):
            with torch.no_grad():
                return taps(images)
        return forward

    def _train_step(self, batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view = self._extra_view(batch, epoch) if self.method.needs_extra_view else None
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None, cache_enabled=not self.cfg.run.cuda_graph):
            logits, features = self.student_taps(batch.images)
            student, teacher = Outputs(logits, features), self._teacher_outputs(batch)
            if view is not None:
                self._add_views(student, teacher, view)
            losses = self.method(student, teacher, batch, epoch)
        if self.entropy_T is not None:  # SFKD logit mask: softened teacher entropy before / after it
            self.entropy_step.copy_(teacher_entropy_sums(teacher, self.method.mask, self.entropy_T[0]))
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.dist.average_gradients(self.unwrapped_params)
        if self.cfg.optim.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return (logits if student.predictions is None else student.predictions).detach(), losses

    def train_epoch(self, epoch: int) -> None:
        """One pass over the training set (or the rest of it, after a mid-epoch resume)."""
        self.student.train()
        self.method.train()
        if self.step_in_epoch == 0:
            self.method.on_epoch_start(epoch)
            self.sums = {}
        loader, steps = self.train_loader, len(self.train_loader)
        start = self.sums if self.dist.is_main else dict.fromkeys(self.sums, 0.0)  # ranks' sums are added up at log points
        sums = {k: torch.tensor(v, device=self.device, dtype=torch.float64) for k, v in start.items()}
        show = self.cfg.run.progress and self.dist.is_main
        bar = tqdm(total=steps, initial=self.step_in_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", disable=None if show else True, leave=False)
        started = time.perf_counter()
        for batch in loader.epoch(epoch, self.step_in_epoch):
            lr = lr_at(self.cfg.optim, self.step, steps, self.cfg.epochs)
            for group in self.optimizer.param_groups:
                if torch.is_tensor(group["lr"]):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
            logits, losses = (self.graphed or self._train_step)(batch, epoch)
            self._accumulate(sums, batch, logits, losses)
            self.step += 1
            self.step_in_epoch += 1
            bar.update()
            stopping = self._stop.is_set() and not self.dist.enabled  # under DDP, ranks agree on stopping at log points
            if self.step_in_epoch % self.cfg.run.log_every == 0 or self.step_in_epoch == steps or stopping:
                self.sums = {k: v.item() for k, v in self.dist.sum(sums).items()}
                stopping = self.dist.any(self._stop.is_set(), self.device)
                self._check_finite(epoch)
                bar.set_postfix(loss=f"{self._mean_loss():.3f}", lr=f"{lr:.3g}")
            if stopping:
                self.train_seconds += time.perf_counter() - started
                bar.close()
                self._save_last()
                raise TrainingInterrupted(f"interrupted at epoch {epoch + 1} step {self.step_in_epoch}; checkpoint saved in '{self.out}'; continue with --resume")
        bar.close()
        self.train_seconds += time.perf_counter() - started
        self.method.on_epoch_end(epoch)

    def _accumulate(self, sums: dict, batch, logits: torch.Tensor, losses: dict) -> None:
        """Add one batch's size, top-k hits and size-weighted loss terms to the epoch sums, on the device."""
        n = len(batch)
        terms = {"count": n, "correct1": topk_correct(logits, batch.targets, 1), "correct5": topk_correct(logits, batch.targets, 5)}
        terms.update({f"loss/{k}": v.detach() * n for k, v in losses.items()})
        if self.entropy_T is not None:
            terms["teacher_entropy"], terms["teacher_entropy_masked"] = self.entropy_step.double().unbind()
        for key, value in terms.items():
            sums[key] = sums.get(key, torch.zeros((), device=self.device, dtype=torch.float64)) + value

    def _mean_loss(self) -> float:
        return sum(v for k, v in self.sums.items() if k.startswith("loss/")) / self.sums["count"]

    def _check_finite(self, epoch: int) -> None:
        bad = [k[5:] for k, v in self.sums.items() if k.startswith("loss/") and not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(f"loss term(s) {', '.join(bad)} became non-finite in epoch {epoch + 1}; last good checkpoint kept in '{self.out}'; lower optim.lr or set optim.clip_grad_norm")

    def _epoch_row(self, epoch: int) -> tuple[dict, dict[str, tuple]]:
        """The epoch's metrics row, and each evaluated split's ``(logits, targets, index)``."""
        s = self.sums
        row = {"epoch": epoch + 1, "lr": float(self.optimizer.param_groups[0]["lr"])}
        row.update({f"train/{k[5:]}": v / s["count"] for k, v in s.items() if k.startswith("loss/")})
        row["train/loss"] = self._mean_loss()
        row["train/top1"], row["train/top5"] = 100 * s["correct1"] / s["count"], 100 * s["correct5"] / s["count"]
        if "teacher_entropy" in s:  # mean over the epoch's samples (nats)
            row["train/teacher_entropy"] = s["teacher_entropy"] / s["count"]
            row["train/teacher_entropy_masked"] = s["teacher_entropy_masked"] / s["count"]
        outputs = {}
        for split, loader in self.eval_loaders.items() if self.dist.is_main else ():
            outputs[split] = collect_logits(self.model, loader, self.amp_dtype)
            metrics = classification_metrics(*outputs[split][:2])
            row.update({f"{split}/{k}": v for k, v in metrics.items() if k != "count"})
        row["img_per_s"] = s["count"] / max(self.train_seconds, 1e-9)
        return row, outputs

    def _feed_predictions(self, epoch: int, outputs: dict[str, tuple]) -> None:
        """Hand the method the predictions it asked for: the evaluation's own, or one pass over train."""
        split = self.method.prediction_split
        if split is None or not self.method.wants_predictions(epoch):
            return
        predictions = collect_logits(self.model, self.train_eval_loader, self.amp_dtype) if split == "train" else outputs[split]
        self.method.on_predictions(epoch, *predictions)

    def fit(self) -> dict:
        """Train to ``config.epochs`` (or from where a resumed run stopped); returns the summary."""
        with self._signals_checkpoint():
            while self.epoch < self.cfg.epochs:
                self.train_epoch(self.epoch)
                evaluating = time.perf_counter()
                row, outputs = self._epoch_row(self.epoch)
                self._feed_predictions(self.epoch, outputs)
                if self.seconds is not None:
                    self.seconds += self.train_seconds + time.perf_counter() - evaluating
                self.history.append(row)
                improved = "val/top1" in row and (self.best is None or row["val/top1"] > self.best["val/top1"])
                if improved:
                    self.best = row
                    self._save_model(self.out / "best.safetensors", row)
                if self.cfg.run.keep_every and row["epoch"] % self.cfg.run.keep_every == 0:
                    self._save_model(self.out / f"epoch_{row['epoch']}.safetensors", row)
                self.epoch, self.step_in_epoch, self.train_seconds = self.epoch + 1, 0, 0.0
                self._save_last()
                if self.dist.is_main:
                    self.logger.write(self.history)
                    tqdm.write(self._format_row(row, improved))
                if self.dist.any(self._stop.is_set(), self.device):
                    raise TrainingInterrupted(f"interrupted after epoch {self.epoch}; checkpoint saved in '{self.out}'; continue with --resume")
        if self.dist.is_main:
            self.logger.close()
        summary = self.write_summary()
        self.dist.close()
        return summary

    def _format_row(self, row: dict, improved: bool) -> str:
        parts = [f"epoch {row['epoch']:>3}/{self.cfg.epochs}", f"loss {row['train/loss']:.3f}", f"train {row['train/top1']:.1f}%"]
        parts += [f"{split} {row[f'{split}/top1']:.2f}%" for split in self.eval_loaders]
        if "train/teacher_entropy" in row:
            before, after = row["train/teacher_entropy"], row["train/teacher_entropy_masked"]
            effect = "raises" if after > before else "lowers" if after < before else "leaves" if after == before else "?"
            parts.append(f"teacher entropy @T={self.entropy_T[0]:g}: {before:.2f} → {after:.2f} nats (mask {effect} it)")
        parts += [f"{row['img_per_s']:.0f} img/s", "*" if improved else ""]
        return "  ".join(parts).rstrip()

    def write_summary(self) -> dict:
        last = self.history[-1] if self.history else None
        summary = {
            "name": self.cfg.name, "student": self.cfg.student.name, "method": self.cfg.method["name"], "epochs": self.epoch, "seed": self.cfg.seed,
            "best": self.best, "last": last, "best_selected_on": "val/top1" if self.best else None, "seconds": self.seconds,
            "warnings": list(self.method.run_warnings),
            "precision": self.precision_name, "precision_reason": self.precision_reason, "machine": describe_machine(self.device), "threads": torch.get_num_threads(),
            "config": self.cfg.to_dict(),
            "teacher_cache": [{"folder": str(c.folder), "features": list(c.storage.features), "filled": c.filled_fraction()}
                              for c in (self.teacher_cache, *self.teacher_caches) if c is not None],  # empty: the teacher(s) ran every step
        }
        if last is not None and "train/teacher_entropy" in last:  # SFKD logit mask: the last epoch's mean entropies (nats)
            mask, (T, note) = self.method.mask, self.entropy_T
            summary["teacher_entropy"] = {"T": T, "fill": "-inf" if mask.logits_fill == -math.inf else "0", "K": mask.logits,
                                          "teachers": max(1, len(self.teachers)), "unmasked": last["train/teacher_entropy"],
                                          "masked": last["train/teacher_entropy_masked"], **({"note": note} if note else {})}
        if self.teachers and "test" in self.eval_loaders and self.dist.is_main:
            summary["ensemble_test_top1"] = self._ensemble_top1(self.eval_loaders["test"])
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _ensemble_top1(self, loader) -> float:
        """Top-1 (%) of the teachers' ensemble, the argmax of their mean softmax (the paper's "Ensemble" column)."""
        outputs = [collect_logits(t, loader, self.amp_dtype) for t in self.teachers]
        probabilities = torch.stack([logits.float().softmax(1) for logits, _, _ in outputs]).mean(0)
        return 100 * (probabilities.argmax(1) == outputs[0][1]).float().mean().item()

    @contextmanager
    def _signals_checkpoint(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum, frame):
            if self._stop.is_set():  # a second signal stops at once
                signal.default_int_handler(signum, frame)
            self._stop.set()

        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ----------------------------------------------------------------- checkpoints
    def _model_meta(self) -> dict:
        meta = {"model": self.cfg.student.name, "precision": self.precision_name, "num_classes": self.data.num_classes, "classes": self.data.classes, "mean": list(self.data.mean), "std": list(self.data.std), "data": self.cfg.data.spec}
        if self.model is not self.student:  # load_model rebuilds the method's model from these shapes
            meta["deploy"] = self.feature_shapes
        return meta

    def _save_model(self, path: Path, row: dict) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(path, prefixed("model", self.model.state_dict()), {**self._model_meta(), "metrics": row, "config": self.cfg.to_dict()})

    def _save_last(self) -> None:
        if not self.dist.is_main:
            return
        optim_state = self.optimizer.state_dict()
        tensors = {**prefixed("model", self.model.state_dict()), **prefixed("method", self.method.state_dict()), "rng.torch": torch.get_rng_state()}
        if self.trains_teacher:
            tensors.update(prefixed("teacher", self.teacher.state_dict()))
        optim_tensors, scalars = optimizer_tensors(self.optimizer)
        tensors.update(optim_tensors)
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            **self._model_meta(), "config": self.cfg.to_dict(), "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "precision_reason": self.precision_reason, "sums": self.sums, "train_seconds": self.train_seconds, "seconds": self.seconds, "history": self.history, "best": self.best,
            "optim_groups": [{k: float(v) if torch.is_tensor(v) else v for k, v in g.items() if k != "params"} for g in optim_state["param_groups"]],
            "optim_scalars": scalars, "scaler": self.scaler.state_dict(),
        }
        save_checkpoint(self.out / "last.safetensors", tensors, state)

    def _restore(self) -> None:
        tensors, state = load_checkpoint(self.out / "last.safetensors", self.device)
        saved = from_dict(Config, state["config"]).to_dict()
        if _training_config(saved) != _training_config(self.cfg.to_dict()):
            diff = [k for k in saved if saved[k] != self.cfg.to_dict()[k]]
            raise DistillscopeError(f"cannot resume '{self.out}': config differs from the saved run in {', '.join(diff)}; resume with the saved config.yaml")
        self.model.load_state_dict(unprefixed("model", tensors))
        self.method.load_state_dict(unprefixed("method", tensors))
        if self.trains_teacher:
            self.teacher.load_state_dict(unprefixed("teacher", tensors))
        optim_state = self.optimizer.state_dict()
        for idx, group in enumerate(state["optim_groups"]):
            if torch.is_tensor(optim_state["param_groups"][idx]["lr"]):
                group = {**group, "lr": torch.tensor(group["lr"], device=self.device)}
            optim_state["param_groups"][idx].update(group)
        optim_state["state"] = optimizer_state(tensors, state["optim_scalars"])
        self.optimizer.load_state_dict(optim_state)
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(tensors["rng.torch"].cpu())
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"].cpu(), self.device)
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.sums, self.train_seconds, self.history, self.best = state["sums"], state["train_seconds"], state["history"], state["best"]
        self.seconds = state.get("seconds")
