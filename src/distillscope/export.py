"""``distillscope export``: a run's deployable model alone, in eval mode, with a model card.

The model is what the run evaluated and saved (``DistillMethod.deployable``: the student, or for SimKD the
student + projector + the teacher's classifier), rebuilt by ``load_model`` from ``best.safetensors`` (or
``last``). Formats: ``safetensors`` (the state_dict, plain keys; ``create_model(name, num_classes)`` loads it
for a zoo student), ``onnx`` (dynamic batch axis; checked with onnxruntime against PyTorch) and
``torchscript`` (``torch.jit.trace``, checked on a second batch size). Beside it: ``README.md`` (the model card,
from ``summary.json``) and the run's ``config.yaml``. An existing output folder is never touched.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import warnings
from pathlib import Path

import torch

from .errors import DistillscopeError

FORMATS = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}
ONNX_OPSET = 20  # the newest opset torch's TorchScript-based ONNX exporter writes


def export_run(run: str | Path, out: str | Path, fmt: str = "safetensors", checkpoint: str = "best", input_size: int | None = None) -> Path:
    """Write ``run``'s deployable model as ``fmt`` into the new folder ``out``, with ``README.md`` and ``config.yaml``;
    returns the model file."""
    from .engine import load_model

    run, out = Path(run), Path(out)
    if fmt not in FORMATS:
        raise DistillscopeError(f"export format '{fmt}': choose one of {', '.join(FORMATS)}")
    if out.exists():
        raise DistillscopeError(f"export: '{out}' already exists; export never overwrites, choose a new --out")
    if not (run / "summary.json").is_file():
        raise DistillscopeError(f"export: '{run}' has no summary.json; give a run folder whose training finished")
    file = run / f"{checkpoint}.safetensors"
    if not file.is_file():
        hint = "; the run had no validation split, use --checkpoint last" if checkpoint == "best" else ""
        raise DistillscopeError(f"export: '{file}' does not exist{hint}")
    if fmt == "onnx":
        _require("onnx", "onnxruntime")
    summary = json.loads((run / "summary.json").read_text())
    model, state = load_model(file)
    model.eval()
    size = input_size or int(_spec_options(state["data"]).get("size", 32))
    example = torch.randn(2, len(state["mean"]), size, size, generator=torch.Generator().manual_seed(0))

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        WRITERS[fmt](model, state, example, tmp / FORMATS[fmt])
        shutil.copy(run / "config.yaml", tmp / "config.yaml")
        (tmp / "README.md").write_text(model_card(run, summary, state, fmt, checkpoint, size))
        if out.exists():
            raise DistillscopeError(f"export: '{out}' appeared while exporting; nothing written there")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / FORMATS[fmt]


def _require(*modules: str) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise DistillscopeError(f"export --format onnx needs {name}; install it with pip install 'distillscope[export]'") from None


def _spec_options(spec: str) -> dict[str, str]:
    from .data.spec import parse_spec

    return parse_spec(spec)[2]


def _write_safetensors(model, state, example, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(state[k]) for k in ("model", "num_classes", "classes", "mean", "std", "data")}
    save_file(tensors, str(path), metadata=meta)


def _write_onnx(model, state, example, path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is deprecated (torch's new one needs onnxscript)
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"], opset_version=ONNX_OPSET,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    onnx.checker.check_model(str(path))
    check = torch.cat([example, -example[:1]])  # another batch size than the traced one
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": check.numpy()})[0]
    _check(model, check, torch.from_numpy(np.asarray(got)), "ONNX Runtime")


def _write_torchscript(model, state, example, path: Path) -> None:
    check = torch.cat([example, -example[:1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; TorchScript files still load everywhere
        traced = torch.jit.trace(model, example, check_inputs=[(check,)])
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        _check(model, check, loaded(check), "the TorchScript module")


def _check(model, images: torch.Tensor, got: torch.Tensor, what: str, tol: float = 1e-4) -> None:
    with torch.no_grad():
        want = model(images)
    diff = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    if not diff <= tol:
        raise DistillscopeError(f"export: {what} gives other logits than PyTorch (max difference {diff:.3g}, shape {tuple(got.shape)}); "
                                "model not exported")


WRITERS = {"safetensors": _write_safetensors, "onnx": _write_onnx, "torchscript": _write_torchscript}


# ----------------------------------------------------------------- model card
def seed_runs(run: Path, name: str) -> list[Path]:
    """``run`` and its finished sibling seed runs: ``PREFIX-s<k>`` folders beside it with the same config name."""
    match = re.fullmatch(r"(.*)-s\d+", run.name)
    if not match:
        return [run]
    pattern = re.escape(match.group(1)) + r"-s\d+"
    siblings = [f for f in sorted(run.parent.iterdir()) if re.fullmatch(pattern, f.name) and (f / "summary.json").is_file()]
    return [f for f in siblings if json.loads((f / "summary.json").read_text()).get("name") == name]


def _accuracy(summary: dict, which: str, key: str, seeds: list[dict]) -> str:
    row = summary.get(which)
    if not row or key not in row:
        return "—"
    text = f"{row[key]:.2f}% (epoch {row['epoch']})"
    values = [s[which][key] for s in seeds if s.get(which) and key in s[which]]
    if len(values) > 1:
        seed_list = ", ".join(str(s["seed"]) for s in seeds if s.get(which) and key in s[which])
        text += f"; over seeds {seed_list}: {statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}%"
    return text


def model_card(run: Path, summary: dict, state: dict, fmt: str, checkpoint: str, size: int) -> str:
    cfg = summary["config"]
    method = dict(cfg["method"])
    method_name = method.pop("name")
    settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in method.items()) or "defaults"
    teachers = [cfg["teacher"]] if cfg.get("teacher") else cfg.get("teachers") or []
    teacher = "; ".join(f"{t['name']} (`{t['checkpoint']}`)" for t in teachers) or "none"
    seeds = [json.loads((folder / "summary.json").read_text()) for folder in seed_runs(run, summary["name"])]
    deploy = (f" The model is the run's deployable one: the student with the parts `{method_name}` adds (SimKD: its projector and the "
              "teacher's classifier)." if state.get("deploy") else "")
    channels, epoch = len(state["mean"]), state.get("metrics", state)["epoch"]  # best: the row saved with it; last: the epochs done
    lines = [
        f"# {summary['name']}: {state['model']} student ({method_name})",
        "",
        f"Exported by `distillscope export` from `{run}` (`{checkpoint}.safetensors`, epoch {epoch}) as {fmt}: `{FORMATS[fmt]}`, "
        f"in eval mode.{deploy}",
        "",
        "| | |",
        "|---|---|",
        f"| data | `{state['data']}`: {state['num_classes']} classes "
        f"({', '.join(map(str, state['classes'][:10]))}{', …' if state['num_classes'] > 10 else ''}) |",
        f"| input | float32 images (batch, {channels}, {size}, {size}), normalised with mean {_floats(state['mean'])} "
        f"and std {_floats(state['std'])} |",
        f"| output | logits (batch, {state['num_classes']}) |",
        f"| student | {state['model']} |",
        f"| teacher | {teacher} |",
        f"| method | {method_name}: {settings} |",
        f"| test top-1 at the best-val epoch | {_accuracy(summary, 'best', 'test/top1', seeds)} |",
        f"| val top-1 at the best-val epoch | {_accuracy(summary, 'best', 'val/top1', seeds)} |",
        f"| test top-1 at the last epoch | {_accuracy(summary, 'last', 'test/top1', seeds)} |",
        f"| epochs, seed | {summary['epochs']}, {summary['seed']} |",
        f"| precision | {summary.get('precision')} ({summary.get('precision_reason')}) |",
        f"| machine | {summary.get('machine')} |",
        "",
        "## Reproduce",
        "",
        "With the run's config (`config.yaml`, beside this file; the teacher checkpoint and data paths in it must exist):",
        "",
        "```bash",
        f"distillscope train config.yaml --out runs/{run.name}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
