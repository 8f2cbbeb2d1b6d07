"""SFKD's logit mask and the entropy of the softened teacher: mean H(softmax(mask(z)/T)) over training images, K × fill.

Paper 003's Proposition 1 says that masking the teacher's logits to the top K concentrates its distribution. With
``logits_fill: 0`` (the default, Eq. 5 as written) the masked logits, mostly negative, are raised to 0 and the
entropy goes up; with ``-inf`` the masked classes leave the softmax and it goes down. This script measures both on
a teacher's logits for N training images (first N rows of the training split, un-augmented, the teacher in eval
mode and fp32), with the functions the trainer records ``train/teacher_entropy[_masked]`` with
(``distillscope.methods.sfkd``)::

    python bench/sfkd_entropy.py --threads 1 --out bench/records/sfkd_entropy.md
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

KS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
FILLS = ("0", "-inf")
START, END = "<!-- sfkd-entropy:start -->", "<!-- sfkd-entropy:end -->"


def teacher_logits(teacher: Path, spec: str, n: int, val_fraction: float, split_seed: int, device, augment: bool):
    """float32 logits (n, C) of the teacher (eval mode, fp32) on the first ``n`` training rows."""
    import torch

    from distillscope.data import Loader, load_data
    from distillscope.engine import collect_logits, load_model

    model, state = load_model(teacher, device)
    data = load_data(spec, val_fraction, split_seed)
    if data.num_classes != state["num_classes"]:
        raise SystemExit(f"the teacher has {state['num_classes']} classes but '{spec}' has {data.num_classes}")
    if n > len(data.train):
        raise SystemExit(f"--n {n}: the training split has only {len(data.train)} images")
    rows = data.train.subset(torch.arange(n))
    mean, std = tuple(state["mean"]), tuple(state["std"])
    # with --augment, a training loader's epoch-0 crops and flips (pad_crop, pad 4, flip), as a run's first epoch sees them
    loader = Loader(rows, 500, mean, std, device=device, **(dict(train=True, seed=0, augment="pad_crop") if augment else {}))
    with torch.no_grad():
        return collect_logits(model, loader)[0]


def entropy_table(logits, temperatures: list[float]) -> list[list[str]]:
    """Rows ``[K, kept classes, share of masked logits below 0, (fill 0, fill -inf) at each T]`` of mean entropies (nats)."""
    from distillscope.methods.sfkd import kept_count, parse_mask, softened_entropy, top_k_mask

    rows = []
    for k in KS:
        dropped = ~top_k_mask(logits, k)
        negative = f"{(logits[dropped] < 0).double().mean().item():.1%}" if dropped.any() else "-"
        row = [f"{k:g}" + (" (unmasked)" if k == 1.0 else ""), str(kept_count(k, logits.shape[1])), negative]
        for T in temperatures:
            for fill in FILLS:
                mask = parse_mask({"logits": k, "logits_fill": 0 if fill == "0" else fill})
                row.append(f"{softened_entropy(mask.mask_logits(logits), T).double().mean().item():.3f}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    p = common.parser(__doc__)
    p.add_argument("--teacher", type=Path, default=common.ROOT / "bench/teachers/c10k-wrn_40_2-s0", help="teacher run folder or checkpoint")
    p.add_argument("--data", default=f"cifar10:{common.CIFAR}", help="data spec (default: the cifar10-5k subset)")
    p.add_argument("--n", type=int, default=2000, help="training images (the first N rows of the training split)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="carve a validation split first (default 0: the whole training set)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--augment", action="store_true", help="the training loader's epoch-0 pad_crop + flip views instead of the plain images")
    p.add_argument("--temperatures", default="4,1", help="comma-separated T (default 4,1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    common.add_out_arg(p, "sfkd-entropy")
    args = p.parse_args(argv)

    import torch

    from distillscope.engine.device import describe_machine, pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    started = time.perf_counter()
    logits = teacher_logits(args.teacher, args.data, args.n, args.val_fraction, args.split_seed, device, args.augment)
    rows = entropy_table(logits, temperatures)
    seconds = time.perf_counter() - started

    header = ["K", "kept classes", "masked logits < 0"] + [f"T={T:g}, fill {fill}" for T in temperatures for fill in FILLS]
    teacher = Path(args.teacher).resolve()
    shown_teacher = teacher.relative_to(common.ROOT) if teacher.is_relative_to(common.ROOT) else teacher
    split = f"val_fraction {args.val_fraction:g} (split seed {args.split_seed})" if args.val_fraction else "no validation split"
    lines = [
        f"Mean entropy (nats) of the softened teacher softmax(mask(z)/T) over the first {len(logits)} training images of "
        f"`{common.shown_spec(args.data)}` ({split}; {'epoch-0 pad_crop + flip views' if args.augment else 'un-augmented'}), "
        f"teacher `{shown_teacher}` in eval mode, fp32; mask: top-K logits by value (`method.mask.logits: K`), the rest set to "
        "`logits_fill`. K = 1 keeps every class (the unmasked teacher). The maximum is ln 10 = 2.303.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"Machine: {describe_machine(device)}; {common.torch_threads()}; {seconds:.1f} s; {common.now()}.",
        f"Command: `{common.command('sfkd_entropy.py', argv)}`",
        "",
    ]
    return common.publish("\n".join(lines), args.out, START, END)


if __name__ == "__main__":
    main()
