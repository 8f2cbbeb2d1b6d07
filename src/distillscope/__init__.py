"""distillscope: distil a teacher into a student, then show what the student learned."""
from .api import train
from .config import Config, load_config
from .data import DataBundle, load_data, register_dataset
from .engine import Trainer, load_model
from .methods import create_method, list_methods
from .models import FeatureTaps, create_model, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "Config", "DataBundle", "FeatureTaps", "Trainer", "create_method", "create_model", "list_methods", "list_models", "load_config",
    "load_data", "load_model", "register_dataset", "register_model", "train", "__version__",
]
