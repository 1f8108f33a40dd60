"""Metrics sinks of a run: `metrics.jsonl`, TensorBoard, and wandb when installed and asked for."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from idcrafter.utils.io import append_line

log = logging.getLogger(__name__)


class MetricsLogger:
    """Writes scalar metrics (main process only; on other ranks every call is a no-op).

    `metrics.jsonl`: one object per call, {"step", "time", **metrics}, appended and fsynced
    (`utils.io.append_line`); the file is never rewritten, so a kill can at worst cut its last
    line. On resume a marker line {"resumed_at": step, "time"} is appended; `read_metrics` drops
    the lines the interrupted run wrote after that step (and any cut line), so the file reads
    as one uninterrupted run while keeping every byte ever written.
    """

    def __init__(self, run_dir: Path, cfg, enabled: bool, config: dict[str, Any] | None = None,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        if resume_step is not None:
            append_line(self.path, json.dumps({"resumed_at": int(resume_step), "time": round(time.time(), 3)}))
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                log.warning("log.wandb is set but wandb is not installed: logging to JSONL/TensorBoard only")
            else:
                self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=config,
                                        name=Path(run_dir).name, resume="allow")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _num(v) for k, v in metrics.items() if _num(v) is not None or v is None}
        append_line(self.path, json.dumps({"step": step, "time": round(time.time(), 3), **clean}))
        for k, v in clean.items():
            if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                if self.tb is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _num(v: Any) -> float | int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        return float(v.item())
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` as one uninterrupted run: a `resumed_at` marker drops the
    records after its step written before it (by the run that was interrupted); lines a kill cut
    short are skipped."""
    from idcrafter.utils.io import read_lines_json

    out: list[dict[str, Any]] = []
    for row in read_lines_json(path):
        if not isinstance(row, dict):
            continue
        if "resumed_at" in row and "step" not in row:
            out = [r for r in out if r.get("step", 0) <= row["resumed_at"]]
            continue
        out.append(row)
    return out
