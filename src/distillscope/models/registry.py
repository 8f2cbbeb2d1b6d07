"""Model registry: ``create_model(name, num_classes)`` and ``list_models()``."""
from __future__ import annotations

from torch import nn

from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build a registered model; its ``name`` attribute records the registry name."""
    model = MODELS.get(name)(num_classes=num_classes, **kwargs)
    model.name = name
    return model


def list_models() -> list[str]:
    return MODELS.names()
