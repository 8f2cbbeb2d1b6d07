"""Method registry with parameter validation from each method's constructor signature."""
from __future__ import annotations

import inspect

from ..errors import DistillscopeError
from ..registry import Registry
from ..values import as_number
from .base import DistillMethod

METHODS: Registry[DistillMethod] = Registry("method")
FAMILIES = ("baseline", "logit", "feature", "relation", "self", "multi-teacher")  # the table's order
_INFO: dict[str, dict] = {}  # name -> {family, paper, year}


def register_method(name: str, *, family: str, paper: str | None = None, year: int | None = None):
    """Class decorator: register a method under ``name`` with what the methods table shows about it.

    ``family``: one of :data:`FAMILIES`; ``paper``: a short citation, ``year``: its year (both left out only
    by a baseline). What the method taps is read from the class (:func:`method_taps`).
    """
    if family not in FAMILIES:
        raise DistillscopeError(f"register_method('{name}'): unknown family '{family}'; valid: {', '.join(FAMILIES)}")
    if family != "baseline" and not (paper and isinstance(year, int)):
        raise DistillscopeError(f"register_method('{name}'): give paper='Author et al., Title' and year=YYYY")

    def decorator(cls):
        METHODS.register(name)(cls)
        _INFO[name] = {"family": family, "paper": paper, "year": year}
        return cls

    return decorator


def list_methods() -> list[str]:
    return METHODS.names()


def method_taps(cls) -> str:
    """What a method class reads besides the labels: its ``taps_description`` (set by every method that
    overrides :meth:`DistillMethod.taps`), else the teacher's logits, or its own predictions without a teacher."""
    if getattr(cls, "taps_description", None):
        return cls.taps_description
    if cls.multi_teacher:
        return "each teacher's logits"
    return "teacher logits" if cls.needs_teacher else "own predictions"


def method_table() -> list[dict]:
    """One row per registered method (name, family, paper, year, taps), by family then name."""
    rows = [{"name": name, **_INFO[name], "taps": method_taps(METHODS.get(name))} for name in list_methods()]
    return sorted(rows, key=lambda row: (FAMILIES.index(row["family"]), row["name"]))


def methods_markdown() -> str:
    """The methods table in Markdown (``distillscope list methods`` prints it; docs/design.md holds a copy)."""
    lines = ["| method | family | paper | year | taps |", "|---|---|---|---|---|"]
    for row in method_table():
        lines.append(f"| {row['name']} | {row['family']} | {row['paper'] or '—'} | {row['year'] or '—'} | {row['taps']} |")
    return "\n".join(lines)


def method_parameters(name: str) -> dict[str, inspect.Parameter]:
    """A method's keyword parameters (its own and the base class's), by name."""
    params = {}
    for cls in reversed(METHODS.get(name).__mro__):
        if issubclass(cls, DistillMethod):
            params.update((p.name, p) for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self")
    return params


_TYPES = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "None": (type(None),)}


def _checked(method: str, key: str, value, annotation):
    """``value`` checked against a simple annotation (numbers written as strings, e.g. '1e-3', converted)."""
    names = [name.strip() for name in str(annotation).split("|")]
    if not all(name in _TYPES for name in names):
        return value
    for kind in (float, int):
        if kind.__name__ in names and not isinstance(value, (bool, type(None))) and (number := as_number(value, kind)) is not None:
            return number
    allowed = tuple(t for name in names for t in _TYPES[name])
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise DistillscopeError(f"method {method}: parameter {key}={value!r} should be {annotation}")
    return value


def create_method(name: str, **params) -> DistillMethod:
    """Build a registered method; unknown or mistyped parameters give one clear line."""
    valid = method_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise DistillscopeError(f"method {name}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    params = {key: _checked(name, key, value, valid[key].annotation) for key, value in params.items()}
    mask = params.pop("mask", None)  # the base class's SFKD modifier; method constructors never see it
    method = METHODS.get(name)(**params)
    method.set_mask(mask)
    return method

