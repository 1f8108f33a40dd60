"""The hacking monitor: an independent judge watches the policy while RL raises its reward.

Every `monitor.every` iterations (main process), the policy (EMA weights when EMA is on) generates
`monitor.n` fixed held-out cases (the same prompts, references and seeds each time) through the
one generate-then-score loop (`idcrafter.generation.generate_and_score`), and `monitor.scorer`
(the audit judge `sprites-audit` by default: a scorer, *never* the reward) scores them. Logged:
`audit/<metric>` (the mean over cases of each watched metric), `audit/reward` (the mean training
reward since the previous evaluation) and `monitor/hacking` (1 when flagged).

Flag (`hacking_flags`): over the last `window` evaluations the reward rose while a watched audit
metric fell by more than `tolerance` (first vs last of the window). A flag is logged as a warning,
recorded in `<run>/report.json` (every evaluation, every flag) and, with `monitor.stop`, ends the
run after the current iteration. Each evaluation's per-case scores go to `<run>/audit/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from idcrafter.rl.config import MonitorConfig

log = logging.getLogger(__name__)


def hacking_flags(rewards: Sequence[float], audits: Sequence[dict[str, float]], metrics: Sequence[str],
                  window: int, tolerance: float) -> list[str]:
    """Watched metrics that fell by more than `tolerance` over the last `window` evaluations while
    the reward rose (strictly) over them; [] with fewer than `window` (>= 2) evaluations."""
    w = max(int(window), 2)
    if len(rewards) < w or len(audits) < w:
        return []
    r0, r1 = rewards[-w], rewards[-1]
    if not (math.isfinite(r0) and math.isfinite(r1)) or r1 <= r0:
        return []
    out = []
    for m in metrics:
        a0, a1 = audits[-w].get(m), audits[-1].get(m)
        if a0 is None or a1 is None or not (math.isfinite(a0) and math.isfinite(a1)):
            continue
        if a0 - a1 > tolerance:
            out.append(m)
    return out


class HackingMonitor:
    """State and evaluation of the monitor (module docstring)."""

    def __init__(self, mcfg: "MonitorConfig", cfg: Any, run_dir: Path, is_main: bool, scorer: Any = None):
        self.mcfg, self.run_dir, self.is_main = mcfg, Path(run_dir), is_main
        self._scorer = scorer
        self._cfg = cfg
        self.cases: list | None = None
        self.pending: list[float] = []  # training rewards since the last evaluation
        self.rewards: list[float] = []
        self.audits: list[dict[str, float]] = []
        self.steps: list[int] = []
        self.flags: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ inputs
    @property
    def scorer(self):
        if self._scorer is None:
            from idcrafter.scorers import build_scorer

            self._scorer = build_scorer(self.mcfg.scorer, self.mcfg.scorer_path)
        return self._scorer

    def check_scorer(self) -> None:
        """Build the scorer now; a missing one is an `InputError` saying what to set instead."""
        from idcrafter.errors import InputError

        try:
            self.scorer
        except InputError as exc:
            raise type(exc)(f"hacking monitor: {exc} (or set monitor.scorer to another scorer, or "
                            f"monitor.every=0 to run without the monitor)") from exc

    def _cases(self) -> list:
        """The fixed held-out cases: positions 0 .. n-1 of (monitor.split, monitor.seed)."""
        if self.cases is None:
            from idcrafter.generation import Case

            data = dataclasses.replace(self._cfg.data, split=self.mcfg.split, seed=self.mcfg.seed, limit=None)
            source = data.build()
            rc = self._cfg.rollout
            self.cases = []
            for i in range(self.mcfg.n):
                s = source.get(i)
                self.cases.append(Case(key=f"audit_{i}", prompt=s.caption, references=list(s.refs), seed=i,
                                       size=(rc.frames, rc.height, rc.width)))
        return self.cases

    def observe_reward(self, step: int, reward: float) -> None:
        if math.isfinite(reward):
            self.pending.append(float(reward))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, pipe, step: int) -> dict[str, float]:
        """Generate and score the held-out cases; update the history and the flags; return the
        metrics to log."""
        from idcrafter.generation import GenerationSettings, generate_and_score

        settings = GenerationSettings(steps=self.mcfg.steps, guidance=self.mcfg.guidance)
        rows = []
        for res in generate_and_score(pipe, self._cases(), settings, self.scorer, catch_errors=True):
            rows.append({"key": res.case.key, "error": res.error,
                         **({} if res.report is None else {k: v for k, v in res.report.metrics.items()
                                                            if isinstance(v, (int, float)) and v is not None})})
        audit = {}
        for m in self.mcfg.metrics:
            vals = [r[m] for r in rows if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
            audit[m] = float(np.mean(vals)) if vals else float("nan")
        reward = float(np.mean(self.pending)) if self.pending else float("nan")
        self.pending = []
        self.rewards.append(reward)
        self.audits.append(audit)
        self.steps.append(int(step))
        falling = hacking_flags(self.rewards, self.audits, self.mcfg.metrics, self.mcfg.window, self.mcfg.tolerance)
        if falling:
            self.flags.append({"step": int(step), "falling": falling, "reward": reward})
            log.warning("hacking monitor at iteration %d: reward rose over the last %d evaluations while %s fell",
                        step, self.mcfg.window, ", ".join(falling))
        self._write(step, rows)
        out = {f"audit/{k}": v for k, v in audit.items()}
        out.update({"audit/reward": reward, "monitor/hacking": int(bool(falling)),
                    "audit/errors": sum(1 for r in rows if r["error"])})
        return out

    def should_stop(self) -> bool:
        return bool(self.mcfg.stop and self.flags and self.steps and self.flags[-1]["step"] == self.steps[-1])

    def _write(self, step: int, rows: list[dict]) -> None:
        if not self.is_main:
            return
        from idcrafter.utils.io import atomic_write_json, ensure_dir

        ensure_dir(self.run_dir / "audit")
        atomic_write_json(self.run_dir / "audit" / f"step_{step:08d}.json", {"step": step, "cases": rows})
        atomic_write_json(self.run_dir / "report.json", self.report())

    def report(self) -> dict[str, Any]:
        return {"scorer": self.mcfg.scorer, "metrics": list(self.mcfg.metrics), "window": self.mcfg.window,
                "tolerance": self.mcfg.tolerance,
                "evaluations": [{"step": s, "reward": r, **a} for s, r, a in zip(self.steps, self.rewards, self.audits)],
                "flags": self.flags, "hacking_detected": bool(self.flags)}

    # ------------------------------------------------------------------ resume
    def state(self) -> dict[str, Any]:
        return json.loads(json.dumps({"pending": self.pending, "rewards": self.rewards, "audits": self.audits,
                                      "steps": self.steps, "flags": self.flags}))

    def load_state(self, state: dict[str, Any]) -> None:
        self.pending = list(state["pending"])
        self.rewards, self.audits = list(state["rewards"]), list(state["audits"])
        self.steps, self.flags = list(state["steps"]), list(state["flags"])
