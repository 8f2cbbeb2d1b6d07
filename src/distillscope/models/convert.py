"""Checkpoints of other code bases, loaded into zoo models as they are.

The KD literature shares its CIFAR-100 teachers as RepDistiller/mdistiller ``.pth`` files
(``resnet32x4_vanilla/ckpt_epoch_240.pth``, ...), and ImageNet work starts from torchvision's weights. Their
parameter names differ from the zoo's, so :func:`translate` renames a file's keys to the zoo's when they are
in one of the layouts below (a key too many or too few is then reported in the zoo's names); nothing is renamed
in the zoo's own modules (checkpoints written by distillscope keep their names). ``engine.checkpoint.fit_weights``
calls it only when the names do not fit as they are, and still loads strictly.

Each zoo architecture computes the same function as its counterpart for the same weights (stride on the
same conv, projection shortcuts where the shape changes, BN before every ReLU at the same places, global
average pooling of the same map into the classifier); ``tests/test_foreign_checkpoints.py`` checks every
one against a functional forward written from the public definitions. Only the names differ:

==================================  ======================================  ===================================
zoo model                           their definition                        their names for ours
==================================  ======================================  ===================================
resnet8..110, resnet8x4/32x4        RepDistiller/mdistiller models/resnet   ``downsample`` = ``shortcut``
resnet18/34/50/101 (3×3 stem)       RepDistiller/mdistiller models/resnetv2 ``linear`` = ``fc``
resnet18/34/50/101_imagenet         torchvision resnet (ImageNet)           ``downsample`` = ``shortcut``
wrn_16_1/16_2/40_1/40_2             RepDistiller/mdistiller models/wrn      ``blockI.layer.J`` = ``blockI.J``,
                                                                            ``convShortcut`` = ``shortcut``,
                                                                            final ``bn1`` = ``bn``
vgg8/11/13/16/19 (with BN)          RepDistiller/mdistiller models/vgg      ``classifier`` = ``fc``
mobilenetv2                         ``mobile_half`` (models/mobilenetv2)    ``classifier.0`` = ``fc``
shufflenetv1                        ``ShuffleV1`` (models/ShuffleNetv1)     stem ``conv1``/``bn1``, ``linear``
shufflenetv2                        ``ShuffleV2`` (models/ShuffleNetv2)     stem/head ``conv``/``bn``, block
                                                                            convs ``conv1..5``, ``linear``
==================================  ======================================  ===================================

Equal up to where a ReLU sits: ShuffleNetV2's zoo blocks apply one ReLU after the concat and shuffle where
theirs applies it inside each branch; ReLU commutes with a channel permutation and the pass-through half is
already non-negative, so the outputs are identical. torchvision's ``mobilenet_v2`` (ImageNet: width 1.0, ReLU6,
no expansion conv in its first block, ImageNet strides) is another network than the zoo's CIFAR ``mobilenetv2``:
its files load into ``torchvision:mobilenet_v2`` (same names) and are refused by ``mobilenetv2`` with the reason.
BatchNorm ``num_batches_tracked`` counters, absent from files saved by old torch versions, are filled with 0
(they do not enter an eval-mode forward).
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from .mobilenetv2 import MobileNetV2
from .resnet import ResNet
from .shufflenet import ShuffleNet, ShuffleV2Block
from .vgg import VGG
from .wrn import WideResNet

Rename = Callable[[str], str]  # a zoo key -> the same tensor's key in the other code base

REPDISTILLER = "RepDistiller/mdistiller"


def _sub(*rules: tuple[str, str]) -> Rename:
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]

    def rename(key: str) -> str:
        for pattern, repl in compiled:
            key = pattern.sub(repl, key)
        return key

    return rename


# ShuffleNetV2 blocks: (branch, index in our Sequential) -> their conv/bn name
_SHUFFLE_V2_DOWN = {("left", 0): "conv1", ("left", 1): "bn1", ("left", 2): "conv2", ("left", 3): "bn2",
                    ("right", 0): "conv3", ("right", 1): "bn3", ("right", 3): "conv4", ("right", 4): "bn4",
                    ("right", 5): "conv5", ("right", 6): "bn5"}
_SHUFFLE_V2_BASIC = {("right", 0): "conv1", ("right", 1): "bn1", ("right", 3): "conv2", ("right", 4): "bn2",
                     ("right", 5): "conv3", ("right", 6): "bn3"}
_SHUFFLE_V2_BLOCK = re.compile(r"^(layer\d+\.\d+)\.(left|right)\.(\d+)\.(.+)$")


def _shufflenet_v2(model: nn.Module) -> Rename:
    stem_head = _sub((r"^conv1\.0\.", "conv1."), (r"^conv1\.1\.", "bn1."), (r"^conv2\.0\.", "conv2."),
                     (r"^conv2\.1\.", "bn2."), (r"^fc\.", "linear."))

    def rename(key: str) -> str:
        found = _SHUFFLE_V2_BLOCK.match(key)
        if not found:
            return stem_head(key)
        block, branch, index, rest = found.groups()
        table = _SHUFFLE_V2_DOWN if model.get_submodule(block).stride == 2 else _SHUFFLE_V2_BASIC
        return f"{block}.{table[(branch, int(index))]}.{rest}"

    return rename


def layouts(model: nn.Module) -> list[tuple[str, Rename]]:
    """The other code bases' names for ``model``'s tensors: ``[(source, rename)]`` (empty for non-zoo models)."""
    if isinstance(model, ResNet):
        if model.num_stages == 3:
            return [(f"{REPDISTILLER} models/resnet.py", _sub((r"\.shortcut\.", ".downsample.")))]
        if isinstance(model.maxpool, nn.MaxPool2d):  # the 7×7 ImageNet stem
            return [("torchvision resnet", _sub((r"\.shortcut\.", ".downsample.")))]
        return [(f"{REPDISTILLER} models/resnetv2.py", _sub((r"^fc\.", "linear.")))]
    if isinstance(model, WideResNet):
        return [(f"{REPDISTILLER} models/wrn.py", _sub((r"^(block\d+)\.(\d+)\.", r"\1.layer.\2."),
                                                       (r"\.shortcut\.", ".convShortcut."), (r"^bn\.", "bn1.")))]
    if isinstance(model, VGG):
        return [(f"{REPDISTILLER} models/vgg.py", _sub((r"^fc\.", "classifier.")))]
    if isinstance(model, MobileNetV2):
        return [(f"{REPDISTILLER} mobile_half", _sub((r"^fc\.", "classifier.0.")))]
    if isinstance(model, ShuffleNet):
        if isinstance(model.layer1[0], ShuffleV2Block):
            return [(f"{REPDISTILLER} ShuffleV2", _shufflenet_v2(model))]
        return [(f"{REPDISTILLER} ShuffleV1", _sub((r"^conv1\.0\.", "conv1."), (r"^conv1\.1\.", "bn1."), (r"^fc\.", "linear.")))]
    return []


def _counter_owner(key: str) -> str | None:
    return key[: -len("num_batches_tracked")] if key.endswith(".num_batches_tracked") or key == "num_batches_tracked" else None


def translate(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str] | None:
    """``weights`` renamed to ``model``'s own names from the layout that names most of them, and that layout.

    The layouts are the names as they are and those of :func:`layouts`; the one under which most keys of the
    file are tensors of the model wins (the names as they are on a tie). Keys it does not name stay as they
    are, so ``fit_weights`` lists what is really missing or left over, in the model's names. ``None`` when
    that layout names fewer than half of the model's tensors (the file is another network). BN
    ``num_batches_tracked`` counters the file lacks are filled with 0. Shapes are not checked here.
    """
    own = model.state_dict()
    best: tuple[int, str, dict[str, str]] | None = None
    for source, rename in [("its own names", lambda key: key), *layouts(model)]:
        theirs = {rename(key): key for key in own}
        hits = sum(key in theirs for key in weights)
        if len(theirs) == len(own) and (best is None or hits > best[0]):
            best = (hits, source, theirs)
    hits, source, theirs = best
    if 2 * hits < len(own):
        return None
    out = {theirs.get(key, key): value for key, value in weights.items()}
    if len(out) != len(weights):  # a key the layout does not name collides with a renamed one
        return None
    for key in own.keys() - out.keys():
        owner = _counter_owner(key)
        if owner is not None and f"{owner}running_mean" in out:
            out[key] = torch.zeros_like(own[key])
    return out, source


def foreign_hint(model: nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    """Why a file that fits no layout of ``model`` is another network, where that is recognisable."""
    name = getattr(model, "name", type(model).__name__)
    if isinstance(model, MobileNetV2) and any(key.startswith("features.") for key in weights):
        return (f"these are torchvision's ImageNet MobileNetV2 names, another network than the zoo's '{name}' (RepDistiller's "
                "CIFAR mobile_half: width 0.5, ReLU not ReLU6, an expansion conv in every block, CIFAR strides), so they "
                "cannot compute its function; load them into model torchvision:mobilenet_v2")
    stem = weights.get("conv1.weight")
    if isinstance(model, ResNet) and model.num_stages == 4 and torch.is_tensor(stem) and stem.dim() == 4:
        has_imagenet_stem = isinstance(model.maxpool, nn.MaxPool2d)
        if stem.shape[-1] == 7 and not has_imagenet_stem:
            return f"the file's stem conv is 7×7 (an ImageNet ResNet, e.g. torchvision's): load it into '{name}_imagenet'"
        if stem.shape[-1] == 3 and has_imagenet_stem:
            return f"the file's stem conv is 3×3 (a CIFAR-style ResNet): load it into '{name.removesuffix('_imagenet')}'"
    return None


# ----------------------------------------------------------------- python -m distillscope.models.convert
def _stored_accuracy(file) -> str:
    """The accuracy a RepDistiller/mdistiller checkpoint records about itself, as text ('' if none)."""
    from ..engine.checkpoint import load_torch_file

    obj = load_torch_file(file)
    for key in ("accuracy", "best_acc", "acc"):
        value = obj.get(key) if isinstance(obj, dict) else None
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)):
            return f"; the file records {key} {value:.2f}"
    return ""


def main(argv: list[str] | None = None) -> int:
    """Write a foreign checkpoint as a distillscope ``.safetensors`` that ``distillscope eval`` reads."""
    import argparse
    from pathlib import Path

    from ..config import Config, ModelConfig
    from ..data import load_data
    from ..engine.checkpoint import fit_weights, model_meta, read_weights, save_model
    from ..errors import DistillscopeError
    from .registry import create_model

    parser = argparse.ArgumentParser(prog="python -m distillscope.models.convert", description=main.__doc__)
    parser.add_argument("model", help="zoo or torchvision: name, e.g. resnet32x4")
    parser.add_argument("checkpoint", help="the .pth file (RepDistiller/mdistiller ckpt_epoch_240.pth, a torchvision state_dict, ...)")
    parser.add_argument("--data", required=True, help="data spec the model was trained for, e.g. cifar100:data/cifar-100-python")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        out = Path(args.out)
        if out.exists():
            raise DistillscopeError(f"'{out}' exists; choose another --out")
        data = load_data(args.data)
        model = create_model(args.model, num_classes=data.num_classes)
        weights, state, file = read_weights(args.checkpoint)
        if state is not None:
            raise DistillscopeError(f"'{file}' is already a distillscope checkpoint; give it to distillscope eval directly")
        source = fit_weights(model, weights, str(file))
        config = Config(name=f"converted-{args.model}", epochs=0, student=ModelConfig(args.model, str(file)))
        config.data.spec, config.data.val_fraction, config.run.precision = args.data, 0.0, "fp32"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_model(out, model, model_meta(args.model, "fp32", data, args.data), {"source": str(file)}, config.to_dict())
    except DistillscopeError as err:
        print(f"error: {err}")
        return 1
    print(f"{args.model} from '{file}' ({source}) -> {out}{_stored_accuracy(file)}")
    print(f"check it: distillscope eval {out} --data {args.data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
