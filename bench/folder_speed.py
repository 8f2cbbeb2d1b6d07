"""Image-folder speed: resnet8 training from an in-memory folder vs a streamed one, and the decode cost.

Writes the CIFAR-10 training images (up to ``--images``) and a fifth as many test images as 32×32 PNGs
into a fresh temporary folder (``DIR/train/<class>/``, ``DIR/test/<class>/``), then, in one process with
``--threads`` torch threads:

- decode: ``load_data('folder:DIR')`` decoding every train and test PNG into memory (``workers=0``):
  the one-off cost the in-memory path pays before its first epoch;
- train img/s: the first ``--steps`` batches of an epoch of resnet8 (batch 64, SGD, fp32, pad_crop + flip,
  CPU) from in-memory CIFAR (reference), the in-memory folder, and the streamed folder (``memory=0``) with
  0 loader workers (PNGs decoded in the training thread) and 1 worker (decoding overlapped in a second
  process; its start-up is inside the timed span). Cases run interleaved for ``--rounds`` rounds after 3
  untimed warm-up batches; medians. The same batches are also timed without the model ("loader only":
  what the data path alone delivers, the ceiling on a fast GPU).

    python bench/folder_speed.py [--images 5000] [--steps 40] [--rounds 2] [--threads 1] [--out docs/benchmarks.md] [--quick]
"""
from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from distillscope.data import Loader, load_data  # noqa: E402
from distillscope.models import create_model  # noqa: E402

BATCH = 64
START, END = "<!-- folder_speed:start -->", "<!-- folder_speed:end -->"


def write_pngs(cifar, root: Path, n_train: int) -> None:
    """CIFAR images as PNGs in class folders; file names keep the CIFAR row order within a class."""
    for split, ds, n in (("train", cifar.train, n_train), ("test", cifar.test, max(n_train // 5, 10))):
        for row in range(min(n, len(ds))):
            folder = root / split / cifar.classes[int(ds.targets[row])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[row].permute(1, 2, 0).numpy()).save(folder / f"{row:05d}.png")


def train_epoch(loader: Loader, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, steps: int | None = None) -> float:
    """Seconds for one training epoch over ``loader`` (or its first ``steps`` batches)."""
    model.train()
    start = time.perf_counter()
    for batch in itertools.islice(loader.epoch(epoch), steps):
        loss = F.cross_entropy(model(batch.images), batch.targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def read_epoch(loader: Loader, epoch: int, steps: int) -> float:
    """Seconds to produce the first ``steps`` batches of an epoch, no model."""
    start = time.perf_counter()
    for _ in itertools.islice(loader.epoch(epoch), steps):
        pass
    return time.perf_counter() - start


def measure(images: int, steps: int, rounds: int, cifar_spec: str) -> dict:
    cifar = load_data(cifar_spec)
    n_train = min(images, len(cifar.train))
    cifar.train = cifar.train.subset(torch.arange(n_train))
    with tempfile.TemporaryDirectory(prefix="folder_speed-", dir="/tmp") as tmp:
        root = Path(tmp)
        write_pngs(cifar, root, n_train)
        start = time.perf_counter()
        in_memory = load_data(f"folder:{root}?workers=0")
        decode_s = time.perf_counter() - start
        streamed = load_data(f"folder:{root}?memory=0")
        n_decoded = len(in_memory.train) + len(in_memory.test)
        cases = {
            "CIFAR-10 in memory (reference)": (cifar.train, 0),
            "folder, in memory": (in_memory.train, 0),
            "folder, streamed, 0 workers": (streamed.train, 0),
            "folder, streamed, 1 worker": (streamed.train, 1),
        }
        runs = {}
        for name, (dataset, workers) in cases.items():
            loader = Loader(dataset, BATCH, cifar.mean, cifar.std, train=True, seed=0, drop_last=True, num_workers=workers)
            model = create_model("resnet8", num_classes=10)
            runs[name] = (loader, model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
            train_epoch(*runs[name], epoch=0, steps=3)  # warm-up
        seconds = {name: [] for name in cases}
        for r in range(rounds):
            for name, run in runs.items():
                seconds[name].append(train_epoch(*run, epoch=r + 1, steps=steps))
        reading = {name: [read_epoch(run[0], r + 1, steps) for r in range(rounds)] for name, run in runs.items()}
        imgs = min(steps, len(runs["folder, in memory"][0])) * BATCH
    rates = {name: imgs / statistics.median(s) for name, s in seconds.items()}
    loader_rates = {name: imgs / statistics.median(s) for name, s in reading.items()}
    return {"n_train": n_train, "n_decoded": n_decoded, "decode_s": decode_s, "epoch_images": imgs, "rates": rates,
            "loader_rates": loader_rates}


def render(result: dict, command: str) -> str:
    rates, decode_s = result["rates"], result["decode_s"]
    epoch_images = result["n_train"] // BATCH * BATCH
    memory_epoch = epoch_images / rates["folder, in memory"]
    lines = [
        "## Image folders: in memory vs streamed",
        "",
        f"- machine: {common.cores()}; {common.torch_threads('thread(s)')}; device cpu",
        f"- date: {common.now()}; {result['n_train']} train + {result['n_decoded'] - result['n_train']} test "
        f"CIFAR-10 images (cifar10-5k) written as 32×32 PNGs; resnet8, batch {BATCH}, fp32, pad_crop + flip; "
        f"median over rounds of {result['epoch_images']} images each",
        f"- command: `{command}`",
        "",
        "| data path | train img/s | vs CIFAR in memory | loader only img/s |",
        "|---|---:|---:|---:|",
    ]
    ref = rates["CIFAR-10 in memory (reference)"]
    lines += [f"| {name} | {rate:.0f} | {rate / ref:.2f} | {result['loader_rates'][name]:.0f} |" for name, rate in rates.items()]
    lines += [
        "",
        f"Decoding the folder into memory (train + test, 1 process): {decode_s:.1f} s = {result['n_decoded'] / decode_s:.0f} img/s. "
        f"The in-memory folder's first epoch therefore runs at {epoch_images / (decode_s + memory_epoch):.0f} img/s "
        f"(decode + one epoch), every later epoch at the in-memory rate; a streamed folder decodes every epoch again.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = common.parser(__doc__)
    p.add_argument("--images", type=int, default=5000, help="training images written as PNGs (test: a fifth as many)")
    p.add_argument("--steps", type=int, default=40, help="batches per timed run")
    p.add_argument("--rounds", type=int, default=2, help="timed runs per case (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--data", default=f"cifar10:{common.CIFAR}", help="CIFAR-10 spec the PNGs are written from")
    common.add_out_arg(p, "folder_speed")
    p.add_argument("--quick", action="store_true", help="smoke test: 256 images, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.rounds = 256, 4, 1
    torch.set_num_threads(args.threads)
    text = render(measure(args.images, args.steps, args.rounds, args.data), common.command("folder_speed.py", argv))
    print(text)
    if args.out:
        common.write_section(args.out, text, START, END)
    return text


if __name__ == "__main__":
    main()
