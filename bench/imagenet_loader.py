"""ImageNet-style loading vs the model step: streamed JPEG img/s per loader-worker count, and resnet18 training img/s.

Writes ``--images`` JPEGs of ``--width`` × ``--height`` (smooth random colour fields plus pixel noise, quality 90)
across 10 class folders into a fresh temporary folder (``DIR/train/<class>/``, and a tenth as many in
``DIR/val/<class>/``), then, in one process with ``--threads`` torch threads:

- loader: ``folder:DIR?size=S&crop=0.875&memory=0`` (streamed) with random resized crop + flip to S px, batch
  ``--batch``, the first ``--batches`` batches of an epoch read with 0, 1 and 2 loader workers (the workers' start-up
  inside the timed span) and no model: images decoded, cropped, resized, flipped and normalised per second;
- model: ``resnet18_imagenet`` (1000 classes) at S px, batch ``--batch``, forward + backward + SGD step on random
  inputs, ``--steps`` timed steps after one warm-up, in fp32 and, where the CPU runs bf16 natively, bf16 autocast +
  channels_last: images per second.

Each case runs ``--rounds`` times, interleaved; medians. A run is bound by loading when the loader's img/s at its
worker count is below the model's (loader workers and the model share the same cores on a CPU).

    python bench/imagenet_loader.py [--images 512] [--size 224] [--batch 32] [--batches 8] [--steps 3] [--rounds 2]
                                    [--threads 2] [--out FILE ...] [--quick]
"""
from __future__ import annotations

import itertools
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distillscope.data import Loader, load_data  # noqa: E402
from distillscope.engine.precision import native_bf16  # noqa: E402
from distillscope.models import create_model  # noqa: E402

START, END = "<!-- imagenet_loader:start -->", "<!-- imagenet_loader:end -->"
WORKERS = (0, 1, 2)
CLASSES = 10


def write_jpegs(root: Path, n: int, width: int, height: int, seed: int = 0) -> float:
    """``n`` training JPEGs over ``CLASSES`` folders (and n/10 in val/); returns their mean size in KB."""
    rng = np.random.default_rng(seed)
    sizes = []
    for split, count in (("train", n), ("val", max(n // 10, CLASSES))):
        for i in range(count):
            folder = root / split / f"n{i % CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
            field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
            pixels = np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
            path = folder / f"{i:06d}.JPEG"
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
            if split == "train":
                sizes.append(path.stat().st_size)
    return statistics.mean(sizes) / 1000


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (loader workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def read_batches(loader: Loader, epoch: int, batches: int) -> tuple[float, float]:
    """Wall and CPU seconds (workers included) to produce the first ``batches`` batches of an epoch, the loader's
    workers started and joined inside."""
    start, cpu = time.perf_counter(), cpu_seconds()
    epoch_batches = loader.epoch(epoch)
    for _ in itertools.islice(epoch_batches, batches):
        pass
    epoch_batches.close()  # ends the DataLoader: its workers are joined, so their CPU time is counted
    return time.perf_counter() - start, cpu_seconds() - cpu


def model_steps(size: int, batch: int, steps: int, bf16: bool) -> tuple[float, float]:
    """Wall and CPU seconds per resnet18 training step (forward, backward, SGD) on a random batch."""
    model = create_model("resnet18_imagenet", num_classes=1000)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    targets = torch.randint(0, 1000, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, (cpu_seconds() - cpu) / steps


def measure(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="imagenet_loader-", dir="/tmp") as tmp:
        root = Path(tmp)
        kb = write_jpegs(root, args.images, args.width, args.height)
        data = load_data(f"folder:{root}?size={args.size}&crop=0.875&memory=0")
        loaders = {w: Loader(data.train, args.batch, data.mean, data.std, train=True, seed=0, augment="random_resized_crop", drop_last=True,
                             num_workers=w) for w in WORKERS}
        batches = min(args.batches, len(loaders[0]))
        read_batches(loaders[0], 0, 1)  # warm the page cache
        seconds = {w: [] for w in WORKERS}
        for r in range(args.rounds):
            for w, loader in loaders.items():
                seconds[w].append(read_batches(loader, r + 1, batches))
    images = batches * args.batch
    precisions = ["fp32"] + (["bf16 autocast + channels_last"] if native_bf16(torch.device("cpu")) else [])
    step = {p: [] for p in precisions}
    for _ in range(args.rounds):
        for p in precisions:
            step[p].append(model_steps(args.size, args.batch, args.steps, p != "fp32"))
    return {"kb": kb, "images": images, "loader": {w: _rates(s, images) for w, s in seconds.items()},
            "model": {p: _rates(s, args.batch) for p, s in step.items()}}


def _rates(times: list[tuple[float, float]], images: int) -> tuple[float, float]:
    """(img/s of the median wall time, CPU ms per image of the median CPU time)."""
    return images / statistics.median(t[0] for t in times), 1000 * statistics.median(t[1] for t in times) / images


def render(result: dict, args, command: str) -> str:
    lines = [
        "## ImageNet-style folders: streamed loading vs the model step",
        "",
        f"- machine: {common.cores()}; {common.torch_threads('thread(s)')}; device cpu",
        f"- date: {common.now()}; {args.images} generated {args.width}×{args.height} JPEGs ({result['kb']:.0f} KB mean, quality 90) "
        f"in {CLASSES} class folders, `folder:DIR?size={args.size}&crop=0.875&memory=0`, random resized crop + flip to {args.size} px, "
        f"batch {args.batch}; loader: {result['images']} images per timed epoch start; model: {args.steps} steps; "
        f"median of {args.rounds} rounds",
        f"- command: `{command}`",
        "",
        "| what | img/s (wall) | CPU ms per image |",
        "|---|---:|---:|",
    ]
    lines += [f"| loader, {w} worker{'s' if w != 1 else ''} (decode, crop, resize, flip, normalise) | {rate:.0f} | {ms:.1f} |"
              for w, (rate, ms) in result["loader"].items()]
    lines += [f"| resnet18 training step at {args.size} px, {p} | {rate:.1f} | {ms:.0f} |" for p, (rate, ms) in result["model"].items()]
    fastest = max(rate for rate, _ in result["model"].values())
    bound = [w for w, (rate, _) in result["loader"].items() if rate < fastest]
    verdict = (f"loading bounds the run with {', '.join(map(str, bound))} worker(s)" if bound
               else "the model step bounds the run at every worker count")
    cost = result["loader"][max(WORKERS)][1]  # with workers: start-up and passing batches between processes included
    lines += ["", f"Here {verdict} (fastest model step {fastest:.1f} img/s). "
                  f"Loading costs {cost:.1f} CPU ms per image with {max(WORKERS)} workers, "
                  f"the model step {min(ms for _, ms in result['model'].values()):.0f}: a machine with C free cores loads up to about "
                  f"C × {1000 / cost:.0f} img/s with C workers."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = common.parser(__doc__)
    p.add_argument("--images", type=int, default=512, help="training JPEGs written (val: a tenth)")
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--height", type=int, default=300)
    p.add_argument("--size", type=int, default=224, help="training crop size (px)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=8, help="batches read per timed loader run")
    p.add_argument("--steps", type=int, default=3, help="timed model steps per round")
    p.add_argument("--rounds", type=int, default=2, help="timed runs per case (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, action="append", default=[], help="Markdown file whose section is replaced (repeatable)")
    p.add_argument("--quick", action="store_true", help="smoke test: 40 images of 60×80 at 32 px, batch 4, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.width, args.height, args.size, args.batch, args.batches, args.steps, args.rounds = 40, 80, 60, 32, 4, 3, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    text = render(measure(args), args, common.command("imagenet_loader.py", argv))
    print(text)
    for out in args.out:
        common.write_section(out, text, START, END)
    return text


if __name__ == "__main__":
    main()
