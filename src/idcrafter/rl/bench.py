"""`idcrafter bench rl [--json]`: where an RL iteration's time goes, and what the speed options buy.

Variants, each a trainer set up once and stepped in turn (round-robin, `repeats` rounds, the first
round discarded as warm-up), so that the machine's load affects all of them alike:

- `grpo_full`: GRPO with the SDE on every step and every step trained (timestep_fraction 1);
- `grpo_window`: the SDE on a window of `window` steps only (ODE elsewhere), all of them trained;
- `grpo_fraction`: every step stochastic, half of them trained (timestep_fraction 0.5);
- `nft`: DiffusionNFT (ODE rollouts, `nft.timesteps` noised draws per sample).

Reported per variant: median `rollout_s`, `reward_s`, `update_s`, `iteration_s`; and the ratios
`window_speedup` = grpo_full / grpo_window and `fraction_speedup` = grpo_full / grpo_fraction
(iteration time), `nft_speedup` = grpo_full / nft (iteration time), plus the same for the update
alone (`*_update_speedup`). Ratios only: no absolute claim survives another machine.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any, List, Optional

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "grpo_full": ("grpo", ["rollout.window_size=0", "grpo.timestep_fraction=1.0"]),
    "grpo_window": ("grpo", ["grpo.timestep_fraction=1.0"]),  # rollout.window_size set from --window
    "grpo_fraction": ("grpo", ["rollout.window_size=0", "grpo.timestep_fraction=0.5"]),
    "nft": ("nft", []),
}


def _trainer(algo: str, recipe: str, overrides: list[str], run_dir: Path):
    from idcrafter.config import apply_overrides
    from idcrafter.rl.grpo import GRPOTrainer
    from idcrafter.rl.nft import NFTTrainer
    from idcrafter.rl.recipes import rl_recipe

    cfg = apply_overrides(rl_recipe(algo, recipe), ["checkpoint.every=0", "train.steps=1000", "log.progress=false",
                                                    "monitor.every=0", *overrides])
    tr = (GRPOTrainer if algo == "grpo" else NFTTrainer)(cfg, run_dir)
    tr.setup()
    return tr


def bench_rl(recipe: str = "debug", repeats: int = 4, steps: int = 8, window: int = 2,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """The measurements of the module docstring (seconds, medians over rounds 2..repeats)."""
    from idcrafter.errors import InputError

    if repeats < 2:
        raise InputError("--repeats must be >= 2 (the first round is a warm-up)")
    if not 1 <= window < steps - 1:
        raise InputError(f"--window must be in 1..{steps - 2} for {steps} sampling steps")
    extra = [f"rollout.steps={steps}", *(overrides or [])]
    times: dict[str, dict[str, list[float]]] = {v: {"rollout_s": [], "reward_s": [], "update_s": [],
                                                    "iteration_s": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
        trainers = {}
        for name, (algo, ov) in VARIANTS.items():
            ov = ov + ([f"rollout.window_size={window}"] if name == "grpo_window" else [])
            trainers[name] = _trainer(algo, recipe, extra + ov, Path(tmp) / name)
        try:
            for rnd in range(repeats):
                for name, tr in trainers.items():
                    m = tr.run_step()
                    tr.step += 1
                    if rnd == 0:
                        continue
                    for k in ("rollout_s", "reward_s", "update_s"):
                        times[name][k].append(float(m[k]))
                    times[name]["iteration_s"].append(float(m["rollout_s"] + m["reward_s"] + m["update_s"]))
        finally:
            for tr in trainers.values():
                tr.close()
    med = {v: {k: statistics.median(x) for k, x in t.items()} for v, t in times.items()}
    out: dict[str, Any] = {"recipe": recipe, "steps": steps, "window": window, "rounds": repeats - 1}
    for v, t in med.items():
        out.update({f"{v}/{k}": round(x, 4) for k, x in t.items()})
    full = med["grpo_full"]
    for name, key in (("window", "grpo_window"), ("fraction", "grpo_fraction"), ("nft", "nft")):
        out[f"{name}_speedup"] = round(full["iteration_s"] / med[key]["iteration_s"], 3)
        out[f"{name}_update_speedup"] = round(full["update_s"] / med[key]["update_s"], 3)
    return out


def register_bench(bench_app) -> None:
    """Add `idcrafter bench rl` to the bench group."""
    import typer

    @bench_app.command("rl")
    def bench_rl_cmd(
        overrides: Optional[List[str]] = typer.Argument(None, help="config overrides for every variant"),
        recipe: str = typer.Option("debug", help="GRPO/NFT recipe to measure (debug: the tiny model)"),
        repeats: int = typer.Option(4, help="rounds (the first is a warm-up)"),
        steps: int = typer.Option(8, help="sampling steps per rollout"),
        window: int = typer.Option(2, help="SDE window of the grpo_window variant"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Per-iteration rollout / reward / update time of GRPO (full, SDE window, timestep fraction)
        and NFT, and their speed-ups as ratios measured side by side."""
        import json

        res = bench_rl(recipe, repeats, steps, window, list(overrides or []))
        if as_json:
            typer.echo(json.dumps(res, indent=2))
            return
        for k, v in res.items():
            typer.echo(f"{k:32s} {v}")
