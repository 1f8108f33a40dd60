"""Metrics sinks of a run: `metrics.jsonl`, TensorBoard, and wandb when installed and asked for."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLogger:
    """Writes scalar metrics (main process only; on other ranks every call is a no-op).

    `metrics.jsonl`: one object per call, {"step", "time", **metrics}. On resume, lines with a
    step beyond the checkpoint's (written by the interrupted run after its last checkpoint) are
    dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, cfg, enabled: bool, config: dict[str, Any] | None = None,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        if resume_step is not None:
            truncate_after(self.path, resume_step)
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
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
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


def truncate_after(path: Path, step: int) -> None:
    """Drop lines of a metrics file whose step is > `step`."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    path.write_text("".join(k + "\n" for k in keep))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
