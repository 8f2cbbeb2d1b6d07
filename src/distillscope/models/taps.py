"""FeatureTaps: named forward hooks on any ``nn.Module`` by module path.

A tap spec is one of
  ``path``          the output of the module at ``path`` (as in ``named_modules()``),
  ``path@input``    the first positional input of that module (e.g. ``fc@input``: the pooled feature),
  ``stage:i``       the zoo model's i-th stage output (post-activation; ``stage:mid``/``stage:-1`` work),
  ``preact:i``      the same stage before its final activation,
  ``embedding``     the zoo model's penultimate (classifier input) feature.
The aliases read ``stage_taps``/``preact_taps``/``embedding_tap`` declared by zoo models; on any other
model (torchvision, timm, your own) use module paths. Models are never edited: taps only add hooks.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import DistillscopeError

ALIASES = {"stage": "stage_taps", "preact": "preact_taps"}


def _alias_index(token: str, count: int, spec: str) -> int:
    if token == "mid":
        return count // 2
    try:
        i = int(token)
    except ValueError:
        raise DistillscopeError(f"tap '{spec}': index must be an integer or 'mid'") from None
    if not -count <= i < count:
        raise DistillscopeError(f"tap '{spec}': this model has {count} stages (valid indices 0..{count - 1} or negative)")
    return i


def resolve_tap(model: nn.Module, spec: str) -> tuple[str, str]:
    """Turn a tap spec into ``(module_path, 'output' | 'input')``, checking the module exists."""
    if spec == "embedding":
        spec = getattr(model, "embedding_tap", "") or _missing_alias(model, spec)
    kind, _, token = spec.partition(":")
    if token and kind in ALIASES:
        declared = getattr(model, ALIASES[kind], None) or _missing_alias(model, spec)
        spec = declared[_alias_index(token, len(declared), spec)]
    path, _, where = spec.partition("@")
    if where not in ("", "input"):
        raise DistillscopeError(f"tap '{spec}': only '@input' may follow a module path")
    modules = dict(model.named_modules())
    if path not in modules:
        near = [name for name in modules if name and (name.startswith(path) or path.startswith(name))][:8]
        hint = f"; nearby paths: {', '.join(near)}" if near else "; list them with dict(model.named_modules())"
        raise DistillscopeError(f"tap '{spec}': no module at path '{path}' in {type(model).__name__}{hint}")
    return path, "input" if where else "output"


def canonical_tap(model: nn.Module, spec: str) -> str:
    """The module-path spelling of a tap (``embedding`` on a zoo model -> ``fc@input``): one name per feature."""
    path, where = resolve_tap(model, spec)
    return f"{path}@input" if where == "input" else path


def _missing_alias(model: nn.Module, spec: str):
    raise DistillscopeError(
        f"tap '{spec}': {type(model).__name__} declares no stage/embedding taps; name a module path instead"
    )


class FeatureTaps:
    """Runs a model and returns ``(logits, {tap_name: feature})``.

    ``taps`` maps names to specs (a list of specs uses each spec as its own name). Features keep
    their autograd graph, so losses on them train the model. Call :meth:`remove` (or use ``with``)
    to take the hooks off again.
    """

    def __init__(self, model: nn.Module, taps: Mapping[str, str] | Sequence[str] = ()):
        self.model = model
        self.taps = dict(taps) if isinstance(taps, Mapping) else {spec: spec for spec in taps}
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for name, spec in self.taps.items():
            path, where = resolve_tap(model, spec)
            if where == "input":
                hook = modules[path].register_forward_pre_hook(self._store_input(name))
            else:
                hook = modules[path].register_forward_hook(self._store_output(name))
            self._handles.append(hook)

    def _store_input(self, name: str):
        def hook(module, args):
            self.features[name] = args[0]

        return hook

    def _store_output(self, name: str):
        def hook(module, args, output):
            self.features[name] = output

        return hook

    def __call__(self, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.features = {}
        logits = self.model(*args, **kwargs)
        missing = self.taps.keys() - self.features.keys()
        if missing:
            raise DistillscopeError(f"taps {sorted(missing)} did not fire: those modules are not used in forward()")
        return logits, self.features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
