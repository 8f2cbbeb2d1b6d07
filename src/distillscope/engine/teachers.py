"""The teacher side of a run: loading the teacher(s), their output caches, and what each step gets from them.

:func:`teacher_side` picks one strategy at setup, so the step calls ``outputs(batch)`` (and, for a method's
extra view, ``add_view``) without branching on the case:

- :class:`NoTeacher`: no teacher (``ce``); the method gets ``None``;
- :class:`SelfTeacher`: a pairing method; the student's own outputs on each sample's partner;
- :class:`LiveTeacher`: one teacher run every step (with gradient when the method trains it);
- :class:`CachedTeacher`: one frozen teacher read from its output cache, which runs it for missing entries;
- :class:`SeveralTeachers`: a multi-teacher method; one ``Outputs`` per teacher, each live or each cached.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..data import Loader, index_and_targets, same_data
from ..errors import DistillscopeError, warn
from ..methods import Outputs
from ..models import FeatureTaps, canonical_tap, create_model
from .cache import CacheSpaceError, TeacherCache, augmentation_space, default_cache_root, run_cache_key
from .checkpoint import fit_weights, read_weights
from .evaluate import collect_logits


def _first_difference(a: list | None, b: list, who: str = "teacher") -> str:
    if a is None:
        return f"the {who} recorded none"
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"class {i}: {who} '{a[i] if i < len(a) else '-'}', data '{b[i] if i < len(b) else '-'}'"


def warn_other_data(state: dict | None, data_spec: str, classes: list[str] | None, who: str = "teacher", use: str = "this run uses",
                    why: str = "distilling across datasets is rarely intended") -> None:
    """Warn when a checkpoint's recorded class names (``classes``, when given) or data spec differ from the data it is
    used on: ``train`` for its teacher(s), ``eval`` and ``explain`` for the models they evaluate."""
    if state is None:
        return
    if classes is not None and state.get("classes") != classes:
        here = "this run's" if who == "teacher" else "the data's"
        warn(f"the {who}'s class names differ from {here} ({_first_difference(state.get('classes'), classes, who)}); "
             "check that the class order matches")
    elif state.get("data") and not same_data(state["data"], data_spec):
        warn(f"the {who} was trained on '{state['data']}' but {use} '{data_spec}'; {why}")


def load_teacher(spec, data, data_spec: str, device: torch.device, memory_format: torch.memory_format,
                 role: str = "teacher") -> nn.Module | None:
    """The frozen, eval-mode teacher of ``spec`` (a ``ModelConfig``) for ``data``; ``None`` without a checkpoint."""
    if spec is None or not spec.checkpoint:
        return None
    if spec.skip_keys:
        raise DistillscopeError(f"{role}.skip_keys: a teacher must load all its weights; remove skip_keys from the teacher")
    model = create_model(spec.name, num_classes=data.num_classes)
    weights, state, file = read_weights(spec.checkpoint)
    if state is not None and state["model"] != spec.name:
        raise DistillscopeError(f"{role}.checkpoint holds a '{state['model']}', not a '{spec.name}'; fix {role}.name")
    if state is not None and state["num_classes"] != data.num_classes:
        raise DistillscopeError(f"{role} has {state['num_classes']} classes but data '{data_spec}' has {data.num_classes}")
    fit_weights(model, weights, str(file))
    warn_other_data(state, data_spec, data.classes)
    model.eval().requires_grad_(False)
    return model.to(device, memory_format=memory_format)


def open_teacher_cache(cfg: Config, spec, teacher: nn.Module | None, taps: FeatureTaps | None, data, train_loader: Loader,
                       precision: str, trains_teacher: bool, device: torch.device) -> TeacherCache | None:
    """The output cache (``run.teacher_cache``) of one frozen teacher: its logits and, within
    ``run.teacher_cache_max_gib``, the features the method taps; ``None`` where the teacher runs instead."""
    run, d, method = cfg.run, cfg.data, cfg.method["name"]
    if run.teacher_cache == "off" or teacher is None:
        return None
    space = augmentation_space(d.pad, d.flip, d.augment)
    recorded = train_loader.plan(0)[1].keys()
    key = reason = None
    if trains_teacher:
        reason = f"method '{method}' trains the teacher, but the cache holds a frozen teacher's outputs"
    elif recorded != space.keys():
        reason = f"the loader records augmentation fields {sorted(recorded)}, not the cache's {list(space)}"
    else:
        key, gib = run_cache_key(spec.name, taps, data, space, precision, run.teacher_cache_topk, run.teacher_cache_max_gib)
        if gib is not None:
            reason = (f"method '{method}' taps teacher features that would make a {gib:.1f} GiB cache, "
                      f"above run.teacher_cache_max_gib={run.teacher_cache_max_gib:g}; raise it to cache them")
    if reason:
        if run.teacher_cache == "auto":
            return None
        raise DistillscopeError(f"run.teacher_cache={run.teacher_cache}: {reason}, or set run.teacher_cache=off")
    root = default_cache_root() if run.teacher_cache == "auto" else Path(run.teacher_cache)
    names = {name: canonical_tap(teacher, tap) for name, tap in taps.taps.items()}
    try:
        return TeacherCache.open(root, key, device, index_and_targets(data.train)[0], names, budget=run.teacher_cache_budget_gib)
    except CacheSpaceError as err:
        if run.teacher_cache != "auto":
            raise
        warn(f"{err}; this run forwards the teacher every step instead")
        return None


class NoTeacher:
    """No teacher: the method gets ``None``."""

    caches: tuple[TeacherCache, ...] = ()

    def outputs(self, batch) -> Outputs | list[Outputs] | None:
        return None

    def add_view(self, outputs, images: torch.Tensor) -> None:
        """Set ``outputs.view`` to the teacher's outputs on ``images`` (the method's extra view)."""


class SelfTeacher(NoTeacher):
    """A pairing method: the student's own outputs, in train mode and without gradient, on each sample's partner."""

    def __init__(self, student_taps: FeatureTaps):
        self.student_taps = student_taps

    def outputs(self, batch) -> Outputs | None:
        if batch.pair is None:  # a batch without partners (a CUDA graph's static copy) gets no teacher
            return None
        with torch.no_grad():
            return Outputs(*self.student_taps(batch.pair.images))


class LiveTeacher(NoTeacher):
    """One teacher run on every batch, with gradient when ``trains`` (a method that trains its teacher)."""

    def __init__(self, taps: FeatureTaps, trains: bool = False):
        self.taps, self.trains = taps, trains

    def outputs(self, batch) -> Outputs:
        with torch.set_grad_enabled(self.trains):
            return Outputs(*self.taps(batch.images))

    def add_view(self, outputs: Outputs, images: torch.Tensor) -> None:
        with torch.set_grad_enabled(self.trains):  # the cache holds crop+flip views only: the teacher always runs here
            outputs.view = Outputs(*self.taps(images))


class CachedTeacher(LiveTeacher):
    """One frozen teacher read from its cache by ``(batch.index, view)``; the cache runs it on missing entries."""

    def __init__(self, taps: FeatureTaps, cache: TeacherCache):
        super().__init__(taps)
        self.cache, self.caches = cache, (cache,)

    def outputs(self, batch) -> Outputs:
        return Outputs(*self.cache.outputs(batch, self._frozen))

    def _frozen(self, images: torch.Tensor):
        """The teacher without gradient: how the cache fills its missing entries."""
        with torch.no_grad():
            return self.taps(images)


class SeveralTeachers(NoTeacher):
    """Several frozen teachers (a multi-teacher method): a list of their outputs."""

    def __init__(self, each: list[LiveTeacher]):
        self.each = each
        self.caches = tuple(c for t in each for c in t.caches)

    def outputs(self, batch) -> list[Outputs]:
        return [t.outputs(batch) for t in self.each]

    def add_view(self, outputs: list[Outputs], images: torch.Tensor) -> None:
        for out, teacher in zip(outputs, self.each):
            teacher.add_view(out, images)


def teacher_side(student_taps: FeatureTaps, teacher_taps: FeatureTaps | None, teachers_taps: list[FeatureTaps],
                 cache: TeacherCache | None, caches: list[TeacherCache], trains_teacher: bool, pairs: bool) -> NoTeacher:
    """The run's strategy: several teachers (all cached, or all live), a self-teacher for a pairing method,
    no teacher, or one teacher, cached when its cache opened."""
    if teachers_taps:
        return SeveralTeachers([CachedTeacher(t, c) for t, c in zip(teachers_taps, caches)] if caches
                               else [LiveTeacher(t) for t in teachers_taps])
    if teacher_taps is None:
        return SelfTeacher(student_taps) if pairs else NoTeacher()
    return CachedTeacher(teacher_taps, cache) if cache is not None else LiveTeacher(teacher_taps, trains_teacher)


def mask_warnings(mask, teachers: list[FeatureTaps], data, device: torch.device) -> tuple[str, ...]:
    """SFKD keeps the top K of a map's entries (or positions), so on a map after a ReLU with fewer nonzero
    entries than that it is the identity: a warning per such teacher tap, with the largest nonzero share seen
    on 64 training images."""
    if mask is None or (mask.features is None and mask.attention is None):
        return ()
    images = next(Loader(data.train, 64, data.mean, data.std, device=device).epoch(0)).images
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
    return tuple(
        f"the SFKD mask leaves teacher tap '{spec}' unchanged on 64 training images: at most {share:.0%} of its {unit} are nonzero "
        f"(a map after a ReLU is mostly zeros) and K keeps them all; choose K below {share:.2f} to mask it"
        for spec, share in sorted(shares.items()))


def ensemble_top1(teachers: list[nn.Module], loader: Loader, amp_dtype: torch.dtype | None) -> float:
    """Top-1 (%) of the teachers' ensemble, the argmax of their mean softmax (the paper's "Ensemble" column)."""
    outputs = [collect_logits(t, loader, amp_dtype) for t in teachers]
    probabilities = torch.stack([logits.float().softmax(1) for logits, _, _ in outputs]).mean(0)
    return 100 * (probabilities.argmax(1) == outputs[0][1]).float().mean().item()
