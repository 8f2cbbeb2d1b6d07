"""The Trainer: one student, an optional frozen teacher, one method, exact checkpoints.

Every epoch it trains (progress bar), evaluates on validation and test, logs, and atomically writes
``last.safetensors`` (everything needed to resume) and, when validation top-1 improves,
``best.safetensors`` (the student alone); with ``run.keep_every=k`` also ``epoch_{e}.safetensors`` (the student
alone) after every k-th epoch. Selection uses the validation split only, never test.
SIGINT/SIGTERM finish the current step, checkpoint mid-epoch and stop; ``resume=True`` continues
exactly where the run stopped: data order, augmentation and RNG state are replayed.
"""
from __future__ import annotations

import functools
import json
import math
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data import Loader, denormalize, index_and_targets, load_data, normalize
from ..errors import DistillscopeError, warn
from ..methods import Outputs, TrainingInfo, create_method
from ..methods.sfkd import softening_temperature, teacher_entropy_sums
from ..models import FeatureTaps, create_model
from .checkpoint import load_weights, model_meta, restore_last, resumable, save_last, save_model, start_run_folder
from .cuda_graph import GraphedStep, refuse_graph
from .device import describe_machine, pick_device, seed_everything, stop_on_signals, view_generator
from .distributed import Distributed, ShardedLoader, sync_batchnorm
from .evaluate import classification_metrics, collect_logits, topk_correct
from .logging import RunLogger, format_row
from .precision import AMP_DTYPES, run_precision
from .schedule import lr_at
from .teachers import ensemble_top1, load_teacher, mask_warnings, open_teacher_cache, teacher_side
from .trackers import require as require_trackers


class TrainingInterrupted(DistillscopeError):
    """Raised after a signal: the run was checkpointed and can be resumed."""


class NonFiniteLoss(DistillscopeError):
    """Raised when a loss term becomes NaN/inf; the last good checkpoint is kept."""


class Trainer:
    """Train ``config.student`` with ``config.method`` into run folder ``out_dir``; ``build`` replaces data/student/teacher factories."""

    def __init__(self, config: Config, out_dir: str | Path, resume: bool = False, build: dict | None = None):
        self.cfg, self.out = config, Path(out_dir)
        require_trackers(config.run.loggers)  # a missing tracker package fails here, before the run folder exists
        self.dist = Distributed.from_env(pick_device(config.run.device))
        resume = resumable(self.out, resume, self.dist.is_main)
        seed_everything(config.seed, config.run.deterministic)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        self.device = self.dist.place(pick_device(config.run.device))
        self.memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format

        d, self.build = config.data, dict(data=load_data, student=create_model, teacher=load_teacher) | (build or {})
        self.data = self.build["data"](d.spec, d.val_fraction, d.split_seed)
        loader_args = dict(mean=self.data.mean, std=self.data.std, device=self.device, channels_last=config.run.channels_last,
                           num_workers=d.num_workers)
        shard = dict(rank=self.dist.rank, world=self.dist.world) if self.dist.enabled else {}
        self.train_loader = (ShardedLoader if shard else Loader)(
            self.data.train, d.batch_size, train=True, **shard, seed=config.seed, pad=d.pad, flip=d.flip, augment=d.augment,
            scale=d.crop_scale, ratio=d.crop_ratio, drop_last=len(self.data.train) > d.batch_size, **loader_args)
        self.eval_loaders = {split: Loader(ds, d.eval_batch_size, **loader_args)
                             for split, ds in (("val", self.data.val), ("test", self.data.test)) if ds is not None}

        self.student = self._build_student()
        placed = (self.data, d.spec, self.device, self.memory_format)
        self.teacher = self.build["teacher"](config.teacher, *placed)
        self.teachers = [load_teacher(t, *placed, f"teachers[{i}]") for i, t in enumerate(config.teachers)]  # multi-teacher methods
        teachers = [t for t in (self.teacher, *self.teachers) if t is not None]
        chosen = run_precision(config, self.out, resume, self.device, self.student, teachers, self.data.train, self.memory_format)
        self.precision_name, self.precision_reason = self.dist.agree(chosen, self.device)  # auto times each rank: all take rank 0's
        self.amp_dtype = AMP_DTYPES[self.precision_name]
        params = {k: v for k, v in config.method.items() if k != "name"}
        self.method = create_method(config.method["name"], **params)
        student_taps, teacher_taps = self.method.taps(self.student, self.teacher)
        self.student_taps = FeatureTaps(self.student, student_taps)
        self.teacher_taps = FeatureTaps(self.teacher, teacher_taps) if self.teacher is not None else None
        self.teachers_taps = [FeatureTaps(t, self.method.taps(self.student, t)[1]) for t in self.teachers]
        self._build_method()
        self.model = self.method.deployable(self.student)  # what is evaluated and saved (the student, or e.g. SimKD's)
        self.model_meta = model_meta(config.student.name, self.precision_name, self.data, d.spec,
                                     self.feature_shapes if self.model is not self.student else None)
        logit_mask = self.method.mask is not None and self.method.mask.logits is not None
        self.entropy_T = softening_temperature(self.method) if logit_mask else None  # (T, note): the teacher entropy is recorded
        self.entropy_step = torch.zeros(2, device=self.device) if logit_mask else None  # written in place by each step (and graph replay)
        self._connect_method_hooks()

        trainable = list(self.student.parameters()) + [p for p in self.method.parameters() if p.requires_grad]
        self.trains_teacher = self.teacher is not None and not self.method.freeze_teacher
        if self.trains_teacher:
            self.teacher.train().requires_grad_(True)
            trainable += list(self.teacher.parameters())
        open_cache = functools.partial(open_teacher_cache, config, data=self.data, train_loader=self.train_loader,
                                       precision=self.precision_name, trains_teacher=self.trains_teacher, device=self.device)
        self.teacher_cache = open_cache(config.teacher, self.teacher, self.teacher_taps)
        caches = [open_cache(*t) for t in zip(config.teachers, self.teachers, self.teachers_taps)]
        self.teacher_caches = caches if caches and None not in caches else []  # one per teacher, or none
        self.teacher_side = teacher_side(self.student_taps, self.teacher_taps, self.teachers_taps, self.teacher_cache, self.teacher_caches,
                                         self.trains_teacher, self.method.needs_pairs)  # what each step asks for the teacher outputs
        self.student_taps.model = self.dist.wrap(self.student, self.device)  # DDP runs the forward; the taps' hooks still fire
        in_ddp = {id(p) for p in self.student.parameters()}
        self.unwrapped_params = [p for p in trainable if id(p) not in in_ddp]
        if config.run.compile:
            for model in (self.student, self.teacher, *self.teachers):
                if model is not None:
                    model.compile()  # in place: state-dict keys and the taps' hooks stay
        o, graphs = config.optim, config.run.cuda_graph
        lr = torch.tensor(o.lr, device=self.device) if graphs else o.lr  # a graph reads the rate from device memory
        self.optimizer = torch.optim.SGD(trainable, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay,
                                         fused=graphs or None)
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
            state = restore_last(self.out, config.to_dict(), self.model, self.method, self.teacher if self.trains_teacher else None,
                                 self.optimizer, self.scaler, self.device)
            self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
            self.sums, self.train_seconds, self.history, self.best = state["sums"], state["train_seconds"], state["history"], state["best"]
            self.seconds = state.get("seconds")
        elif self.dist.is_main:
            start_run_folder(self.out, config.to_dict())  # once everything was built without error
        self.logger = RunLogger(self.out, config.to_dict()) if self.dist.is_main else None  # rank 0 logs (and tracks)

    # ----------------------------------------------------------------- setup
    def _build_student(self) -> torch.nn.Module:
        s = self.cfg.student
        model = self.build["student"](s.name, num_classes=self.data.num_classes)
        if s.checkpoint:
            load_weights(model, s.checkpoint, s.skip_keys)
        if self.cfg.run.sync_bn and self.dist.enabled:
            model = sync_batchnorm(model, self.device)
        return model.to(self.device, memory_format=self.memory_format)

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
        self.method.build(student_shapes, shapes if self.method.multi_teacher else teacher_shapes, info)  # multi-teacher: one per teacher
        self.feature_shapes = {role: {k: list(v) for k, v in found.items()}
                               for role, found in (("student", student_shapes), ("teacher", teacher_shapes))}
        self.method.to(self.device)
        self.method.run_warnings = (*self.method.run_warnings, *mask_warnings(self.method.mask, teachers, self.data, self.device))

    def _connect_method_hooks(self) -> None:
        """Pairs for the train loader, the split whose predictions the method wants, its warnings."""
        m, name = self.method, self.cfg.method["name"]
        if m.needs_pairs:
            if self.teacher is not None:
                raise DistillscopeError(f"method '{name}' pairs samples and uses its own outputs on them as the teacher; "
                                        "remove the teacher section")
            self.train_loader.pair_rows = m.pair_rows
        if m.prediction_split is not None:
            splits = ["train", *self.eval_loaders]
            if m.prediction_split not in splits:
                raise DistillscopeError(f"method '{name}' wants predictions on '{m.prediction_split}', which this run lacks "
                                        f"(splits: {', '.join(splits)}); set data.val_fraction > 0 or choose another split")
            if m.prediction_split == "train":
                d = self.cfg.data
                self.train_eval_loader = Loader(self.data.train, d.eval_batch_size, self.data.mean, self.data.std, device=self.device,
                                                channels_last=self.cfg.run.channels_last, num_workers=d.num_workers)
        for message in m.run_warnings:
            warn(f"method '{name}': {message}")

    def _graphed_step(self) -> GraphedStep:
        processes = self.dist.world if self.dist.enabled else 1
        refuse_graph(self.cfg.method["name"], self.method, self.device, processes, self.scaler.is_enabled())
        caches = self.teacher_side.caches
        return GraphedStep(lambda batch, epoch: self._train_step(batch, epoch), self.device, ready=lambda: all(c.complete for c in caches))

    # ----------------------------------------------------------------- training
    def _extra_view(self, batch, epoch: int) -> torch.Tensor:
        """The method's extra view of the batch, normalised like the batch (made outside autocast)."""
        pixels = denormalize(batch.images, self.data.mean, self.data.std)
        view = self.method.extra_view(pixels, view_generator(self.cfg.seed, epoch, self.step_in_epoch, self.dist.rank))
        return normalize(view, self.data.mean, self.data.std, channels_last=self.cfg.run.channels_last)

    def _train_step(self, batch, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view = self._extra_view(batch, epoch) if self.method.needs_extra_view else None
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=not self.cfg.run.cuda_graph):
            logits, features = self.student_taps(batch.images)
            student, teacher = Outputs(logits, features), self.teacher_side.outputs(batch)
            if view is not None:  # the student (with gradient) and the teacher(s) on the method's extra view too
                student.view = Outputs(*self.student_taps(view))
                self.teacher_side.add_view(teacher, view)
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
        bar = tqdm(total=steps, initial=self.step_in_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", disable=None if show else True,
                   leave=False)
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
                self._checkpoint()
                raise TrainingInterrupted(f"interrupted at epoch {epoch + 1} step {self.step_in_epoch}; checkpoint saved in '{self.out}'; "
                                          "continue with --resume")
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
            raise NonFiniteLoss(f"loss term(s) {', '.join(bad)} became non-finite in epoch {epoch + 1}; last good checkpoint kept in "
                                f"'{self.out}'; lower optim.lr or set optim.clip_grad_norm")

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
        with stop_on_signals(self._stop), RunLogger.closing_on_error(self.logger):
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
                    self._save_model("best.safetensors", row)
                if self.cfg.run.keep_every and row["epoch"] % self.cfg.run.keep_every == 0:
                    self._save_model(f"epoch_{row['epoch']}.safetensors", row)
                self.epoch, self.step_in_epoch, self.train_seconds = self.epoch + 1, 0, 0.0
                self._checkpoint()
                if self.dist.is_main:
                    self.logger.write(self.history)
                    tqdm.write(format_row(row, self.cfg.epochs, self.eval_loaders, self.entropy_T, improved))
                if self.dist.any(self._stop.is_set(), self.device):
                    raise TrainingInterrupted(f"interrupted after epoch {self.epoch}; checkpoint saved in '{self.out}'; "
                                              "continue with --resume")
        summary = self.write_summary()
        if self.dist.is_main:
            self.logger.close(summary)
        self.dist.close()
        return summary

    def write_summary(self) -> dict:
        last = self.history[-1] if self.history else None
        summary = {
            "name": self.cfg.name, "student": self.cfg.student.name, "method": self.cfg.method["name"], "epochs": self.epoch,
            "seed": self.cfg.seed,
            "best": self.best, "last": last, "best_selected_on": "val/top1" if self.best else None, "seconds": self.seconds,
            "warnings": list(self.method.run_warnings),
            "precision": self.precision_name, "precision_reason": self.precision_reason, "machine": describe_machine(self.device),
            "threads": torch.get_num_threads(),
            "config": self.cfg.to_dict(),
            "teacher_cache": [{"folder": str(c.folder), "features": list(c.storage.features), "filled": c.filled_fraction()}
                              for c in self.teacher_side.caches],  # empty: the teacher(s) ran every step
        }
        if last is not None and "train/teacher_entropy" in last:  # SFKD logit mask: the last epoch's mean entropies (nats)
            mask, (T, note) = self.method.mask, self.entropy_T
            summary["teacher_entropy"] = {"T": T, "fill": "-inf" if mask.logits_fill == -math.inf else "0", "K": mask.logits,
                                          "teachers": max(1, len(self.teachers)), "unmasked": last["train/teacher_entropy"],
                                          "masked": last["train/teacher_entropy_masked"], **({"note": note} if note else {})}
        if self.teachers and "test" in self.eval_loaders and self.dist.is_main:
            summary["ensemble_test_top1"] = ensemble_top1(self.teachers, self.eval_loaders["test"], self.amp_dtype)
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    # ----------------------------------------------------------------- checkpoints
    def _save_model(self, name: str, row: dict) -> None:
        if self.dist.is_main:
            save_model(self.out / name, self.model, self.model_meta, row, self.cfg.to_dict())

    def _checkpoint(self) -> None:
        """Write ``last.safetensors``: everything a resume needs (rank 0)."""
        if not self.dist.is_main:
            return
        progress = {"epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch, "precision_reason": self.precision_reason,
                    "sums": self.sums, "train_seconds": self.train_seconds, "seconds": self.seconds, "history": self.history,
                    "best": self.best}
        save_last(self.out, self.model, self.method, self.teacher if self.trains_teacher else None, self.optimizer, self.scaler,
                  self.device, {**self.model_meta, "config": self.cfg.to_dict(), **progress})
