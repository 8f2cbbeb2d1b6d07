"""FeatureTaps: named forward hooks on any ``nn.Module`` by module path.

A tap spec is one of
  ``path``          the output of the module at ``path`` (as in ``named_modules()``),
  ``path@input``    the first positional input of that module (e.g. ``fc@input``: the pooled feature),
  ``stage:i``       the zoo model's i-th stage output (post-activation; ``stage:mid``/``stage:-1`` work),
  ``preact:i``      the same stage before its final activation,
  ``embedding``     the zoo model's penultimate (classifier input) feature.
Any of them may end in ``@tokens`` or ``@tokens:N`` (``blocks.5@tokens``, ``stage:1@tokens``): a transformer's
(batch, tokens, channels) tensor is then read as a (batch, channels, H, W) map (see :func:`tokens_to_map`); a
tensor of any other shape passes unchanged. The map stays on the autograd graph (the hook rebuilds the layer's
output from it), so gradients with respect to it (CAMs) and losses on it (feature methods) work.
The aliases read ``stage_taps``/``preact_taps``/``embedding_tap`` declared by zoo models; on any other
model (torchvision, timm, your own) use module paths. Models are never edited: taps only add hooks.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from ..errors import DistillscopeError

ALIASES = {"stage": "stage_taps", "preact": "preact_taps"}
Tokens = Union[None, str, int]  # None: tokens stay tokens; "auto": prefix count inferred; N: N prefix tokens


def tokens_to_map(x: torch.Tensor, prefix: "str | int" = "auto", spec: str = "") -> torch.Tensor:
    """(B, T, C) tokens -> (B, C, H, W) map: the first ``prefix`` tokens (class/distillation tokens) are dropped and
    the rest, laid out row-major, fill an H = W = sqrt(T - prefix) grid. ``"auto"`` drops 1 token when T - 1 is a
    square, else none when T is; any other count is one line of error naming ``spec``."""
    b, t, c = x.shape
    if prefix == "auto":
        prefix = 1 if t > 1 and math.isqrt(t - 1) ** 2 == t - 1 else 0
    side = math.isqrt(max(t - prefix, 0))
    if not 0 <= prefix < t or side * side != t - prefix:
        raise DistillscopeError(
            f"tap '{spec}': {t} tokens minus {prefix} prefix token(s) are not a square grid of patches; "
            f"name the prefix count, e.g. '{split_tokens(spec)[0]}@tokens:N', or tap another layer")
    return x[:, prefix:].transpose(1, 2).reshape(b, c, side, side)


def split_tokens(spec: str) -> tuple[str, str | None]:
    """``X@tokens`` -> (X, ''), ``X@tokens:N`` -> (X, 'N'), any other spec -> (spec, None)."""
    base, sep, tail = spec.rpartition("@")
    kind, _, count = tail.partition(":")
    return (base, count) if sep and kind == "tokens" else (spec, None)


def with_tokens(spec: str, tokens: Tokens) -> str:
    """``spec`` reading (B, T, C) tensors as maps: ``tokens`` "auto" appends ``@tokens``, N ``@tokens:N``, None
    nothing; a spec that already names its tokens is kept."""
    _check_tokens(tokens)
    if tokens is None or split_tokens(spec)[1] is not None:
        return spec
    return f"{spec}@tokens" if tokens == "auto" else f"{spec}@tokens:{tokens}"


def _check_tokens(tokens: Tokens) -> None:
    if not (tokens is None or tokens == "auto" or (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0)):
        raise DistillscopeError(f"tokens must be 'auto', a number of prefix tokens (0, 1, ...) or None, got {tokens!r}")


def _parse_tokens(count: str | None, spec: str) -> Tokens:
    if count is None or count == "":
        return None if count is None else "auto"
    if not count.isdigit():
        raise DistillscopeError(f"tap '{spec}': '@tokens:{count}' should give a number of prefix tokens, e.g. @tokens:1")
    return int(count)


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
    return resolve_tap_tokens(model, spec)[:2]


def resolve_tap_tokens(model: nn.Module, spec: str) -> tuple[str, str, Tokens]:
    """:func:`resolve_tap` plus how tokens are read: None (as they are), "auto" or N prefix tokens. A count the
    spec gives wins over the model's declared alias; "auto" takes the alias's count when it has one."""
    original = spec
    spec, count = split_tokens(spec)
    tokens = _parse_tokens(count, original)
    if spec == "embedding":
        spec = getattr(model, "embedding_tap", "") or _missing_alias(model, spec)
    kind, _, token = spec.partition(":")
    if token and kind in ALIASES:
        declared = getattr(model, ALIASES[kind], None) or _missing_alias(model, spec)
        spec = declared[_alias_index(token, len(declared), spec)]
    spec, declared = split_tokens(spec)
    if declared is not None and (tokens is None or (tokens == "auto" and declared)):
        tokens = _parse_tokens(declared, original)
    path, _, where = spec.partition("@")
    if where not in ("", "input"):
        raise DistillscopeError(f"tap '{spec}': only '@input' may follow a module path")
    modules = dict(model.named_modules())
    if path not in modules:
        near = [name for name in modules if name and (name.startswith(path) or path.startswith(name))][:8]
        hint = f"; nearby paths: {', '.join(near)}" if near else "; list them with dict(model.named_modules())"
        raise DistillscopeError(f"tap '{spec}': no module at path '{path}' in {type(model).__name__}{hint}")
    return path, "input" if where else "output", tokens


def canonical_tap(model: nn.Module, spec: str) -> str:
    """The module-path spelling of a tap (``embedding`` on a zoo model -> ``fc@input``): one name per feature."""
    path, where, tokens = resolve_tap_tokens(model, spec)
    name = f"{path}@input" if where == "input" else path
    return name if tokens is None else with_tokens(name, tokens)


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
            path, where, tokens = resolve_tap_tokens(model, spec)
            if tokens is not None:
                if where == "input":
                    hook = modules[path].register_forward_pre_hook(self._token_hook(name, spec, tokens, where))
                else:
                    hook = modules[path].register_forward_hook(self._token_hook(name, spec, tokens, where))
            elif where == "input":
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

    def _token_hook(self, name: str, spec: str, tokens: "str | int", where: str):
        """Stores a (B, T, C) tensor as its map and hands the layer's consumer a copy rebuilt from that map (same
        values), so the map is on the graph; other tensors are stored as they are."""

        def read(x):
            if not (isinstance(x, torch.Tensor) and x.ndim == 3):
                self.features[name] = x
                return None
            fmap = tokens_to_map(x, tokens, spec)
            self.features[name] = fmap
            prefix = x.shape[1] - fmap.shape[2] * fmap.shape[3]
            return torch.cat([x[:, :prefix], fmap.flatten(2).transpose(1, 2)], dim=1)

        def output_hook(module, args, output):
            return read(output)

        def input_hook(module, args):
            rebuilt = read(args[0])
            return None if rebuilt is None else (rebuilt, *args[1:])

        return input_hook if where == "input" else output_hook

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
