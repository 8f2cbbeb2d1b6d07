"""Where distillscope keeps what it may recompute: ``$DISTILLSCOPE_CACHE``, else ``$XDG_CACHE_HOME/distillscope``,
else ``~/.cache/distillscope``. Teacher-output caches live in ``teacher/``, label embeddings in ``label-embeddings/``,
measured precision choices in ``precision.json``."""
from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """The root of every distillscope cache (see the module docstring)."""
    if os.environ.get("DISTILLSCOPE_CACHE"):
        return Path(os.environ["DISTILLSCOPE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distillscope"
