"""Numbers as people write them: YAML 1.1 reads ``1e-3`` or ``5E-4`` as strings, so convert those here."""
from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"[+-]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][+-]?\d+)?")


def as_number(value, kind: type):
    """``value`` as ``kind`` (float or int) if it is a number or a string writing one; else ``None``.

    Accepts ``1e-3``, ``5E-4``, ``.5``, ``1_000``, ``3`` (for a float) and ``1e3`` (for an int, when whole).
    Booleans and non-finite values are not numbers here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.fullmatch(text) or "__" in text:
            return None
        value = (float(text.replace("_", "")) if kind is float or not text.lstrip("+-").replace("_", "").isdigit()
                 else int(text.replace("_", "")))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    return None
