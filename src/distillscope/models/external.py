"""Models from torchvision and timm by name: ``torchvision:resnet18``, ``timm:resnet50``.

Built untrained with the run's ``num_classes`` (``torchvision.models.get_model(name, weights=None,
num_classes=n)``, ``timm.create_model(name, pretrained=False, num_classes=n)``); pretrained weights come
from a local file (``checkpoint``), never from the network. Taps on them use module paths.
"""
from __future__ import annotations

import difflib
import importlib

from torch import nn

from ..errors import DistillscopeError

SOURCES = {"torchvision": "torchvision.models", "timm": "timm"}


def _package(source: str, name: str):
    if source not in SOURCES:
        raise DistillscopeError(f"model '{name}': unknown source '{source}'; use torchvision:NAME or timm:NAME, or a registered name")
    try:
        return importlib.import_module(SOURCES[source])
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError/OSError, not ImportError
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise DistillscopeError(f"model '{name}' needs {source}, which does not import here ({type(exc).__name__}: {reason}); "
                                "pip install distillscope[vision]") from None


def check_external(name: str) -> None:
    """Fail with one line unless ``source:arch`` names a model that its package can build."""
    source, _, arch = name.partition(":")
    available = _package(source, name).list_models()
    if arch not in available:
        near = difflib.get_close_matches(arch, available, n=5)
        hint = f"; close: {', '.join(near)}" if near else f"; list them with {SOURCES[source]}.list_models()"
        raise DistillscopeError(f"unknown model '{name}': {source} has no '{arch}'{hint}")


def create_external(name: str, num_classes: int, **kwargs) -> nn.Module:
    check_external(name)
    source, _, arch = name.partition(":")
    package = _package(source, name)
    if source == "torchvision":
        return package.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    return package.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
