"""CIFAR-10 / CIFAR-100 readers for the official "python version" pickle layout.

The pickles are read with a restricted unpickler that only rebuilds numpy arrays,
so a tampered file cannot run code.
"""
from __future__ import annotations

import codecs
import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import DistillscopeError
from .base import ArrayDataset

try:
    from numpy._core import multiarray, numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray, numeric

# Per-channel mean and (population) std of the training images, on a 0..1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_IMAGE_BYTES = 3 * 32 * 32

# directory name -> (train files, test files, meta file, label-names key, labels key)
_LAYOUTS = {
    "cifar-10-batches-py": (
        [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "label_names", "labels"
    ),
    "cifar-100-python": (["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}

# name -> (archive URL, archive MD5, directory the archive unpacks to)
_DOWNLOADS = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
}

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
    ("_codecs", "encode"): codecs.encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DistillscopeError(f"CIFAR file {path} is missing; re-download or re-extract the dataset")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any failure here means the file is unusable
        raise DistillscopeError(
            f"CIFAR file {path} is corrupt or not a CIFAR pickle ({type(exc).__name__}: {exc}); re-download it"
        ) from None
    if not isinstance(obj, dict):
        raise DistillscopeError(f"CIFAR file {path} holds a {type(obj).__name__}, not a dict; re-download it")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find_layout(root: Path) -> tuple[Path, str]:
    """Return (dataset directory, layout name) for ``root`` or its known subdirectory."""
    if not root.is_dir():
        raise DistillscopeError(f"CIFAR root {root} is not a directory; pass the folder holding the extracted dataset")
    if (root / "batches.meta").exists():
        return root, "cifar-10-batches-py"
    if (root / "meta").exists():
        return root, "cifar-100-python"
    found = [name for name in _LAYOUTS if (root / name).is_dir()]
    if len(found) == 1:
        return _find_layout(root / found[0])
    if len(found) > 1:
        raise DistillscopeError(f"CIFAR root {root} holds both {' and '.join(found)}; pass one of them directly")
    raise DistillscopeError(
        f"CIFAR root {root} has no batches.meta (CIFAR-10) or meta (CIFAR-100), nor a "
        f"cifar-10-batches-py / cifar-100-python folder; point it at the extracted dataset"
    )


def _read_batch(path: Path, labels_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
    data, labels = batch.get("data"), batch.get(labels_key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise DistillscopeError(f"CIFAR file {path} lacks a 'data' array or '{labels_key}'; re-download it")
    if data.dtype != np.uint8 or data.size % _IMAGE_BYTES:
        raise DistillscopeError(
            f"CIFAR file {path} has a {data.dtype} array of {data.size} values, "
            f"expected uint8 with a multiple of {_IMAGE_BYTES}; re-download it"
        )
    images = data.reshape(-1, 3, 32, 32)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(images):
        raise DistillscopeError(f"CIFAR file {path} has {len(images)} images but {len(labels)} labels; re-download it")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DistillscopeError(
            f"CIFAR file {path} has labels in [{labels.min()}, {labels.max()}], expected 0..{num_classes - 1}"
        )
    return images, labels


def load_cifar(root: str | Path, train: bool) -> ArrayDataset:
    """Load the CIFAR-10 or CIFAR-100 (fine labels) train or test split found at ``root``."""
    folder, layout = _find_layout(Path(root))
    train_files, test_files, meta_file, names_key, labels_key = _LAYOUTS[layout]
    names = _read_pickle(folder / meta_file).get(names_key)
    if not isinstance(names, list) or not names:
        raise DistillscopeError(f"CIFAR file {folder / meta_file} lacks '{names_key}'; re-download it")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    parts = [_read_batch(folder / f, labels_key, len(classes)) for f in (train_files if train else test_files)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), classes)


def _safe_members(tar: tarfile.TarFile, top: str) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not parts or parts[0] != top:
            raise DistillscopeError(f"archive member {m.name!r} escapes {top}/; the download is not the official archive")
        if not (m.isfile() or m.isdir()):
            raise DistillscopeError(f"archive member {m.name!r} is a link or device; the download is not the official archive")
    return members


def download_cifar(name: str, dest: str | Path) -> Path:
    """Download and extract ``cifar10`` or ``cifar100`` into ``dest``; return the dataset directory.

    Checks the official MD5 and refuses to overwrite an existing dataset directory.
    """
    if name not in _DOWNLOADS:
        raise DistillscopeError(f"unknown CIFAR dataset '{name}'; choose one of: {', '.join(_DOWNLOADS)}")
    url, md5, top = _DOWNLOADS[name]
    dest = Path(dest)
    target = dest / top
    if target.exists():
        raise DistillscopeError(f"{target} already exists; delete it or use load_cifar on it instead of downloading")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as exc:
            raise DistillscopeError(f"could not download {url} ({exc}); fetch it by hand and extract it into {dest}") from None
        digest = hashlib.md5()
        with open(archive, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != md5:
            raise DistillscopeError(f"{url} has MD5 {digest.hexdigest()}, expected {md5}; retry the download")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(unpacked, members=_safe_members(tar, top), filter="data")
        (unpacked / top).rename(target)
    return target
