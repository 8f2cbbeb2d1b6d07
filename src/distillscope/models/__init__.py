"""Model zoo: importing this package registers every architecture."""
from . import mobilenetv2, resnet, resnet_cifar, shufflenet, vgg, vit, wrn  # noqa: F401  (registration)
from .registry import check_model_name, create_model, list_models, register_model
from .taps import FeatureTaps, canonical_tap, resolve_tap

__all__ = ["check_model_name", "create_model", "list_models", "register_model", "FeatureTaps", "canonical_tap", "resolve_tap"]
