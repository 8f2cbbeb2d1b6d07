"""Distance correlation speed: ``distillscope.analysis.dcor.dcor2`` vs the ``dcor`` package, side by side.

Statistic: the biased squared distance correlation of two float64 batches ``x, y`` of shape (n, d)
(``dcor2(x, y)`` vs ``dcor.distance_correlation_sqr(x, y)``); y = relu(x + noise) so dCor² is far
from 0, and the two values are compared. Each (n, d) case runs in a fresh worker process with
``--threads`` torch/BLAS threads (default 1: ``dcor``'s numpy code is single-threaded): it makes the data,
warms both sides up, then runs interleaved rounds (ours f64, ours f32, dcor, ...; ``--rounds`` for ours,
``--dcor-rounds`` for dcor) and reports the median CPU time (process_time: on a shared machine it is far
less disturbed by other jobs than wall time, which is shown too) and wall time. Peak memory is the largest rise of the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs) over its resident set before a call, so it
counts torch and numpy alike. Our peak comes from a second worker that runs one call per dtype with glibc's
mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=65536``): otherwise freed blocks are reused from the heap and
a call's peak can read 0 (dcor's (n, n, d) arrays are always mapped); the fixed threshold costs page
faults on every call, so the timing worker runs with glibc's defaults. Workers set
``NUMBA_THREADING_LAYER=workqueue``: ``dcor`` imports numba, whose default OpenMP layer loads the system
libgomp next to torch's own, and that made torch's OpenMP kernels (reductions, ``eye``) 10-40x slower in
the same process on the measuring machine.
``dcor`` 0.7 builds an (n, n, d) float64 difference array; a case whose array would exceed
``--dcor-max-gb`` or half the available memory is not run for ``dcor`` and is marked so.
Target: ours >= 50x faster than ``dcor`` at n = 512, d = 4096; n = 1024, d = 4096 runs.

    python bench/dcor_speed.py [--sizes 256,512,1024] [--dims 512,4096] [--rounds 3] [--dcor-rounds 1]
                               [--dcor-max-gb 10] [--threads 1] [--out docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

START, END = "<!-- dcor_speed:start -->", "<!-- dcor_speed:end -->"
write_section = functools.partial(common.write_section, start=START, end=END)  # write_section(path, text)


def _measure(fn) -> tuple[object, float, float, float]:
    """Run fn once: its value, CPU seconds, wall seconds, and the rise of peak RSS (MiB) over the RSS before."""
    Path("/proc/self/clear_refs").write_text("5")
    before = common.status_kib("VmRSS")
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return value, cpu, wall, (common.status_kib("VmHWM") - before) / 1024


def worker(n: int, d: int, rounds: int, dcor_rounds: int, run_dcor: bool, threads: int, memory_only: bool) -> dict:
    import torch

    from distillscope.analysis.dcor import dcor2

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.relu(x + torch.randn(n, d, generator=g, dtype=torch.float64))
    x32, y32 = x.float(), y.float()
    sides = {"ours": lambda: dcor2(x, y).item(), "ours32": lambda: dcor2(x32, y32).item()}
    if memory_only:  # warm up first: torch's first call loads libraries and workspaces
        return {side: (fn(), _measure(fn)[3])[1] for side, fn in sides.items()}
    if run_dcor:
        import dcor

        xn, yn = x.numpy(), y.numpy()
        sides["dcor"] = lambda: float(dcor.distance_correlation_sqr(xn, yn))
        dcor.distance_correlation_sqr(xn[:16], yn[:16])  # compile / warm up
    sides["ours"](), sides["ours32"]()  # warm up
    runs = {side: [] for side in sides}
    for r in range(max(rounds, dcor_rounds)):
        for side, fn in sides.items():
            if r < (dcor_rounds if side == "dcor" else rounds):
                runs[side].append(_measure(fn))
    result = {"n": n, "d": d, "threads": threads, "torch": torch.__version__, "dcor_version": dcor.__version__ if run_dcor else None}
    for side, measured in runs.items():
        result[side] = measured[0][0]
        result[f"t_{side}"] = statistics.median(m[1] for m in measured)
        result[f"wall_{side}"] = statistics.median(m[2] for m in measured)
        result[f"{side}_mb"] = max(m[3] for m in measured)
    return result


def render(results: list[dict], command: str) -> str:
    r0 = results[0]
    versions = (f"torch {r0['torch']} ({r0['threads']} thread(s) per side), "
                f"dcor {next((r['dcor_version'] for r in results if r['dcor_version']), 'not run')}")
    lines = [
        "## Distance correlation: analysis.dcor vs the dcor package",
        "",
        f"- machine: {common.cores()}, {common.meminfo_gib('MemTotal', float('nan')):.0f} GiB RAM; {versions}; CPU, float64",
        f"- date: {common.now()}; command: `{command}`",
        "- statistic: biased dCor²(x, y), x, y of shape (n, d); ours = `dcor2(x, y)` (Gram form), dcor = `dcor.distance_correlation_sqr`",
        "- s = median CPU seconds of one call (process time), wall = median wall seconds; peak = rise of the process's peak resident",
        "  memory during one call; speed-up = dcor CPU s / ours f64 CPU s; |Δ| = |ours − dcor| on the same inputs",
        "- target: ours >= 50x faster than dcor at n = 512, d = 4096; n = 1024, d = 4096 runs",
        "",
        "| n | d | ours f64 s | ours f64 wall | ours f32 s | ours peak MiB | dcor s | dcor wall | dcor peak MiB | speed-up | \\|Δ\\| |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "t_dcor" not in r:
            gb = r["n"] ** 2 * r["d"] * 8 / 2**30
            dcor_cols = f"not run: needs a {gb:.1f} GiB (n, n, d) array (limit {r['limit_gb']:.1f} GiB) | – | – | – | –"
        else:
            dcor_cols = (f"{r['t_dcor']:.3f} | {r['wall_dcor']:.3f} | {r['dcor_mb']:.0f} | {r['t_dcor'] / r['t_ours']:.0f}x | "
                         f"{abs(r['ours'] - r['dcor']):.1e}")
        lines.append(f"| {r['n']} | {r['d']} | {r['t_ours']:.4f} | {r['wall_ours']:.4f} | {r['t_ours32']:.4f} | "
                     f"{r['ours_mb']:.0f} | {dcor_cols} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = common.parser(__doc__)
    p.add_argument("--sizes", default="256,512,1024", help="comma-separated n")
    p.add_argument("--dims", default="512,4096", help="comma-separated d")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of ours (median reported)")
    p.add_argument("--dcor-rounds", type=int, default=1, help="timed rounds of dcor, interleaved with ours")
    p.add_argument("--dcor-max-gb", type=float, default=10.0, help="skip dcor when its (n, n, d) array would exceed this")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads for both sides")
    common.add_out_arg(p, "dcor_speed")
    p.add_argument("--worker", nargs=7, type=int, metavar=("N", "D", "ROUNDS", "DCOR_ROUNDS", "RUN_DCOR", "THREADS", "MEMORY_ONLY"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker[:4], bool(args.worker[4]), args.worker[5], bool(args.worker[6]))))
        return ""
    results = []
    for n in map(int, args.sizes.split(",")):
        for d in map(int, args.dims.split(",")):
            limit = min(args.dcor_max_gb, common.meminfo_gib("MemAvailable", float("inf")) / 2)
            run_dcor = n * n * d * 8 / 2**30 <= limit
            cmd = [sys.executable, __file__, "--worker", str(n), str(d), str(args.rounds), str(args.dcor_rounds), str(int(run_dcor)),
                   str(args.threads)]
            env = {**os.environ, **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
                   "NUMBA_THREADING_LAYER": "workqueue"}
            timed = subprocess.run([*cmd, "0"], check=True, capture_output=True, text=True, env=env).stdout
            peaks = subprocess.run([*cmd, "1"], check=True, capture_output=True, text=True,
                                   env={**env, "MALLOC_MMAP_THRESHOLD_": "65536"}).stdout
            results.append({**json.loads(timed.splitlines()[-1]), **{f"{k}_mb": v for k, v in json.loads(peaks.splitlines()[-1]).items()},
                            "limit_gb": limit})
            r = results[-1]
            print(f"# n={n} d={d}: ours {r['t_ours']:.4f}s, dcor {r.get('t_dcor')}", file=sys.stderr)
    text = render(results, common.command("dcor_speed.py", argv))
    return common.publish(text, args.out, START, END)


if __name__ == "__main__":
    main()
