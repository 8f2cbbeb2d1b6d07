"""Datasets, data specs and the batch loader."""
from .augment import apply_augmentation, denormalize, draw_augmentation, normalize
from .base import ArrayDataset
from .loader import Batch, Loader
from .randaugment import draw_strong, strong_augment
from .spec import DataBundle, carve_val, index_and_targets, list_datasets, load_data, parse_spec, same_data, split_rows
from .user import as_bundle, register_dataset

__all__ = [
    "ArrayDataset", "Batch", "DataBundle", "Loader", "apply_augmentation", "as_bundle", "carve_val", "denormalize", "draw_augmentation",
    "draw_strong", "index_and_targets", "list_datasets", "load_data", "normalize", "parse_spec", "register_dataset", "same_data",
    "split_rows", "strong_augment",
]
