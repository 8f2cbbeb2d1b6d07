"""One run over two "machines": two torchrun launchers (one process each) meeting at a c10d rendezvous on
localhost train the same run as one launcher with two processes (gloo, CPU)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_with_a_rendezvous_train_the_run_of_one_two_process_launcher(tmp_path, tiny_overrides):
    overrides = tiny_overrides + ["run.sync_bn=true", "run.log_every=2"]
    train = ["-m", "distillscope", "train", *(a for o in overrides for a in ("--set", o))]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run"]

    one = subprocess.run([*torchrun, "--standalone", "--nproc-per-node=2", *train, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    node = [*torchrun, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            "--rdzv-id=test", "--rdzv-conf=timeout=120", *train, "--out", str(tmp_path / "two")]
    launchers = [subprocess.Popen(node, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in launchers]
    finally:
        for p in launchers:
            p.kill()
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert sum("->" in o for o in outputs) == 1  # one rank 0 printed the result, for both launchers

    single, multi = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two"))
    assert multi["epochs"] == single["epochs"] == 2
    for key, value in single["last"].items():
        if key != "img_per_s":
            assert math.isclose(multi["last"][key], value, rel_tol=1e-5, abs_tol=1e-6), (key, multi["last"][key], value)
