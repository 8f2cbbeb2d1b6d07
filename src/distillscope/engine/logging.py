"""Per-epoch metric logs: CSV and JSONL rewritten from the run's history, and the trackers of ``run.loggers``."""
from __future__ import annotations

import csv
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

from .trackers import open_trackers


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunLogger:
    """Writes ``metrics.csv`` and ``metrics.jsonl`` (one row per epoch) and hands each new row, then the summary,
    to the trackers of ``run.loggers`` (``engine/trackers.py``)."""

    def __init__(self, out_dir: Path, config: dict | None = None):
        self.out_dir = out_dir
        self.trackers = open_trackers(config["run"]["loggers"], out_dir, config) if config else []

    def write(self, history: list[dict]) -> None:
        columns = list(dict.fromkeys(key for row in history for key in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        _replace_text(self.out_dir / "metrics.csv", buf.getvalue())
        _replace_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
        for tracker in self.trackers if history else ():  # the new epoch only: a resumed run logs no step twice
            tracker.log(history[-1], history[-1]["epoch"])

    def close(self, summary: dict | None = None) -> None:
        """End the trackers' runs: with the run's ``summary``, or without one (``None``) when it stopped early."""
        for tracker in self.trackers:
            tracker.finish(summary)
        self.trackers = []

    @staticmethod
    @contextmanager
    def closing_on_error(logger: RunLogger | None):
        """Inside, an interruption or failure ends the trackers' runs without a summary (``logger`` None: rank > 0)."""
        try:
            yield
        except BaseException:
            if logger is not None:
                logger.close()
            raise


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
