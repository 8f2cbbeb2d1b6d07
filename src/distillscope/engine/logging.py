"""Per-epoch metric logs: CSV and JSONL rewritten from the run's history, TensorBoard when installed."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunLogger:
    """Writes ``metrics.csv`` and ``metrics.jsonl`` (one row per epoch) and TensorBoard scalars."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            self._tb = None

    def write(self, history: list[dict]) -> None:
        columns = list(dict.fromkeys(key for row in history for key in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        _replace_text(self.out_dir / "metrics.csv", buf.getvalue())
        _replace_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
        if self._tb is not None and history:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["epoch"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def format_row(row: dict, epochs: int, splits, entropy_T: tuple | None, improved: bool) -> str:
    """The console line of an epoch's metrics ``row``: loss, top-1 per split, the SFKD mask's effect on the
    teacher's entropy at ``entropy_T = (T, note)`` when recorded, speed, and ``*`` when validation improved."""
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"loss {row['train/loss']:.3f}", f"train {row['train/top1']:.1f}%"]
    parts += [f"{split} {row[f'{split}/top1']:.2f}%" for split in splits]
    if "train/teacher_entropy" in row:
        before, after = row["train/teacher_entropy"], row["train/teacher_entropy_masked"]
        effect = "raises" if after > before else "lowers" if after < before else "leaves" if after == before else "?"
        parts.append(f"teacher entropy @T={entropy_T[0]:g}: {before:.2f} → {after:.2f} nats (mask {effect} it)")
    parts += [f"{row['img_per_s']:.0f} img/s", "*" if improved else ""]
    return "  ".join(parts).rstrip()
