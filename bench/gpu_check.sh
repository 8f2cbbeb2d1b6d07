#!/usr/bin/env bash
# What only a GPU can tell, in one command of at most 10 minutes on one GPU:
#   1. bench/speed.py: CE, KD uncached / cold cache / warm cache and the reference KD loop, with run.compile and
#      run.cuda_graph off and on (--compile; the graph modes run by themselves on CUDA);
#   2. a concurrent sweep of batch-64 resnet8 runs, --workers 1, 4 and 8 --gpus 0: each run's img/s and the
#      aggregate against a batch-512 bare loop (the GPU's ceiling for this model), and whether every seed gives the
#      metrics it gave one-by-one (run.deterministic=true: sharing the GPU must not change a result);
#   3. one DDP run over the GPUs present (torchrun --nproc-per-node=N).
# Then it writes a section of docs/benchmarks.md named after the device (replaced when run again on the same
# device). Without a GPU it runs the same parts at tiny sizes on the CPU (tests/test_bench_scripts.py does so).
# The project need not be installed: it runs as PYTHONPATH=src python3 -m distillscope.cli.
#
#   bash bench/gpu_check.sh            # environment: PYTHON (python3), OUT (docs/benchmarks.md), WORK (a new temp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-docs/benchmarks.md}
WORK=${WORK:-$(mktemp -d)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$WORK"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 0 ]; then
  DEVICE=cuda SPEC="shapes?n=2048&size=32&n_test=512" EPOCHS=30 SEEDS=0-7 ONE_BY_ONE=0-3 WORKERS="1 4 8" ON_GPU="--gpus 0"
  SPEED=(--device cuda --pairs resnet32x4:resnet8x4 --steps 20 --rounds 3 --compile) CEILING_STEPS=50 NPROC=$GPUS
else
  DEVICE=cpu SPEC="shapes?n=192&size=16&n_test=64" EPOCHS=2 SEEDS=0-1 ONE_BY_ONE=0-1 WORKERS="1 2" ON_GPU=""
  SPEED=(--device cpu --pairs resnet8:resnet8 --quick --threads 1 --data "shapes?n=256&size=16") CEILING_STEPS=2 NPROC=2
fi
echo "# gpu_check: device $DEVICE ($GPUS GPU(s)), work in $WORK" >&2

# 1. speed.py, compile and CUDA graphs off and on
"$PYTHON" bench/speed.py "${SPEED[@]}" > "$WORK/speed.md"

# 2. batch-64 resnet8 runs sharing one GPU
cat > "$WORK/r8.yaml" <<EOF
name: r8-b64
epochs: $EPOCHS
data: {spec: "$SPEC", val_fraction: 0.1, batch_size: 64, num_workers: 0}
student: {name: resnet8}
method: {name: ce}
optim: {lr: 0.05, schedule: cosine}
run: {device: $DEVICE, precision: fp32, deterministic: true}
EOF
for w in $WORKERS; do
  seeds=$SEEDS
  if [ "$w" = 1 ]; then seeds=$ONE_BY_ONE; fi
  start=$(date +%s%N)
  "$PYTHON" -m distillscope.cli sweep "$WORK/r8.yaml" --seeds "$seeds" --workers "$w" --threads 1 $ON_GPU --out "$WORK/w$w" > "$WORK/w$w.txt"
  echo $(( ($(date +%s%N) - start) / 1000000 )) > "$WORK/w$w.ms"
done

# 3. one DDP run over the GPUs present (CPU: two gloo processes)
start=$(date +%s%N)
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node="$NPROC" -m distillscope.cli train "$WORK/r8.yaml" \
  --set run.threads=1 --set run.progress=false --out "$WORK/ddp" > "$WORK/ddp.txt" 2>&1
echo $(( ($(date +%s%N) - start) / 1000000 )) > "$WORK/ddp.ms"

"$PYTHON" - "$WORK" "$OUT" "$CEILING_STEPS" "$NPROC" "$ONE_BY_ONE" $WORKERS <<'PY'
"""The batch-512 ceiling, then the section: speed.py's tables, the concurrent sweeps, the DDP run."""
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, "bench")
import common  # noqa: E402

from distillscope.engine.device import describe_machine  # noqa: E402
from distillscope.models import create_model  # noqa: E402
from distillscope.sweep import parse_seeds  # noqa: E402

work, out, steps, nproc, one_by_one, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
recipe = (work / "r8.yaml").read_text()
spec = recipe.split('spec: "')[1].split('"')[0]

# the bare ceiling: resnet8 forward, cross-entropy, backward, SGD at batch 512, fp32, images already on the device
size = int((re.findall(r"size=(\d+)", spec) or [32])[0])
model = create_model("resnet8", num_classes=10).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y = torch.randn(512, 3, size, size, device=device), torch.randint(0, 10, (512,), device=device)


def bare(n):
    for _ in range(n):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


bare(max(2, steps // 5))
ceiling = 512 * steps / common.timed(lambda: bare(steps), device)


def runs(folder):
    return {json.loads((run / "summary.json").read_text())["seed"]: run for run in sorted(folder.glob("r8-s*"))}


def last(run):
    return {k: v for k, v in json.loads((run / "summary.json").read_text())["last"].items() if k != "img_per_s"}


def median_img_s(run):
    return statistics.median(json.loads(line)["img_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines())


alone = runs(work / "w1")
rows = []
for w in workers:
    found = runs(work / f"w{w}")
    per_run = statistics.mean(median_img_s(run) for run in found.values())
    same = [seed for seed in parse_seeds(one_by_one) if last(found[seed]) == last(alone[seed])]
    equal = "yes" if len(same) == len(alone) else f"NO: only seeds {same or 'none'} of {sorted(alone)}"
    wall = int((work / f"w{w}.ms").read_text()) / 1000
    rows.append(f"| {w} | {len(found)} | {wall:.0f} | {per_run:,.0f} | {per_run * int(w):,.0f} | {per_run * int(w) / ceiling:.2f} | {equal} |")

ddp = json.loads((work / "ddp" / "summary.json").read_text())
name = common.device_name(device) if device.type == "cuda" else f"CPU only ({common.cores()})"
speed = (work / "speed.md").read_text()
speed = speed[speed.index("## Speed"):].replace("## Speed", "### Speed")  # without its progress lines
text = "\n".join([
    f"## GPU check: {name}",
    "",
    f"- `bash bench/gpu_check.sh`, {common.now()}; machine: {describe_machine(device)}; {common.torch_threads()}"
    + ("" if device.type == "cuda" else "; no GPU here: the CPU parts only, at tiny sizes"),
    "",
    speed.rstrip(),
    "",
    "### Batch-64 resnet8 runs sharing the device (`sweep --workers W" + (" --gpus 0`)" if device.type == "cuda" else "`)"),
    "",
    f"Recipe: resnet8, CE, batch 64, fp32, run.deterministic=true, `{spec}`, {recipe.split('epochs: ')[1].split()[0]} epochs. "
    f"Per run: the mean over runs of each run's median epoch img/s (training only); aggregate: W × per run. Ceiling: a bare "
    f"resnet8 loop at batch 512 on the same device, {ceiling:,.0f} img/s. Same metrics: the last-epoch metrics of seeds "
    f"{one_by_one} equal those of the one-by-one runs (W = 1).",
    "",
    "| workers W | runs | sweep wall s | img/s per run | aggregate img/s | aggregate / ceiling | same metrics as one-by-one |",
    "|---:|---:|---:|---:|---:|---:|---|",
    *rows,
    "",
    f"### DDP: `torchrun --standalone --nproc-per-node={nproc}`, the same recipe",
    "",
    f"{ddp['epochs']} epochs in {int((work / 'ddp.ms').read_text()) / 1000:.0f} s wall; last epoch {ddp['last']['img_per_s']:,.0f} img/s, "
    f"test top-1 {ddp['last']['test/top1']:.2f}%; precision {ddp['precision']}.",
    "",
])
slug = "".join(c if c.isalnum() else "-" for c in name.split(" (")[-1].rstrip(")").lower()) if device.type == "cuda" else "cpu"
common.publish(text, out, f"<!-- gpu_check:{slug}:start -->", f"<!-- gpu_check:{slug}:end -->")
PY
