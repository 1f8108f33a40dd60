"""The RL experiment on SpriteWorld: SFT vs DPO vs GRPO (composite) vs GRPO (learned reward) vs NFT,
then the reward ablations; every arm evaluated on held-out casts by judge v2 and the audit judge.

    .venv/bin/python scripts/rl_experiment.py --generator assets/checkpoints/sprites-latent --out runs/rl-exp \\
        [--recipe sprites-latent] [--iterations 300] \\
        [--arms sft,dpo,grpo,grpo_cps,grpo_learned,grpo_bind,grpo_bind_mix,grpo_fixed4,grpo_lr5,grpo_early4,grpo_cfg,grpo_use,grpo_cfg_big,nft,nft_cps,nft_bind,no_fid,no_qual,no_nat,mean_face] \\
        [--run grpo=runs/rl-grpo ...] [--reward-model runs/rm-sprites/reward_model] [--eval-n 32] \\
        [--threads 1] [--set monitor.every=0 ...] [--no-train] [--eval-sampler cps [--eval-noise-level 0.8]]

Every arm is an `idcrafter train ...` run in `<out>/<arm>` (or the folder given by `--run ARM=DIR`)
started from `--generator` with the `--recipe` of its trainer (`sprites-latent`, or `sprites` for
the pixel-space generator: the recipe sets the reference size, which must be the generator's), the
same iterations and the `--set` overrides; a folder that already holds a run is resumed, one whose run is complete (its
`pipeline/` exported and `--iterations` logged) is not trained again, so the script can be stopped
and restarted. DPO gets the same data budget (`dpo.pair_iterations` = iterations). `grpo_learned`
needs a reward model (`--reward-model`; without one it trains `idcrafter train reward-model
--recipe sprites` into `<out>/reward_model_run`).

Evaluation: each arm's final pipeline (its EMA export `<run>/pipeline`; SFT = the generator) generates
the `--eval-n` held-out casts of `idcrafter eval heldout` (seed 1234, casts of 2 and 3, sample
seeds 0.., `--eval-steps` Euler steps, guidance `--cfg`), once: the clips are kept in
`<out>/eval/<arm>.npz`, and each scorer that can be built -- `sprites` (judge v2) and `sprites-audit`
(the audit judge) -- scores them into `<out>/eval/<arm>.json` (per case). A scorer missing now (the
audit judge before it ships) is added by a later run of the script without generating again.
`--eval-sampler flow|cps` samples the held-out clips with an RL rollout sampler instead (step noise
seeded per case) into `<out>/eval-<sampler><level>/` and `results-<sampler><level>.md`: with the
rollouts' own steps and guidance it measures what a policy learned under its training noise, beside
the ODE figures a user gets.
Reported (`<out>/results.md`, `results.json`): per arm the mean of each metric and, for the RL arms,
the paired difference to SFT on the same casts with its standard error. Curves (`<out>/curves.png`):
the training reward (running mean of 5 iterations) against cumulative iteration time (the sum of
logged `step_time`: pauses between resumed pieces are not counted), and the time the faster of
GRPO and NFT needs to reach the other's final reward.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

METRICS = ("face_sim_mean", "face_sim_min", "subject_sim", "leakage", "action_acc", "quality", "natural",
           "copy_paste", "total")
AUDIT = ("attr_acc_mean", "face_sim_mean", "face_sim_min", "quality", "natural")
SCORERS = {"sprites": ("judge", METRICS), "sprites-audit": ("audit", AUDIT)}

# arm: (trainer, overrides on top of its `--recipe`; `sprites-latent` GRPO is CPS already,
# so there `grpo_cps` = `grpo`)
ARMS: dict[str, tuple[str, list[str]]] = {
    "sft": ("none", []),
    "dpo": ("dpo", []),
    "grpo": ("grpo", []),
    "grpo_cps": ("grpo", ["rollout.sde_type=cps"]),  # coefficients-preserving rollouts (no SDE noise artefacts)
    "grpo_learned": ("grpo", ["reward.name=learned", 'reward.weights={"learned": 1.0}', "reward.options={}"]),
    "nft": ("nft", []),
    "no_fid": ("grpo", ['reward.options={"preset": "sprites", "composite_weights": {"fidelity": 0.0}}']),
    "no_qual": ("grpo", ['reward.options={"preset": "sprites", "composite_weights": {"quality": 0.0}}']),
    "no_nat": ("grpo", ['reward.options={"preset": "sprites", "composite_weights": {"natural_share": 0.0}}']),
    "mean_face": ("grpo", ['reward.options={"preset": "sprites", "composite_weights": {"gamma": 0.0}}']),
    # the composite + w_bind R_bind (rewards.composite: each subject doing what the caption asks;
    # 0.3 gives R_bind about the spread 0.6 R_fid has over SFT samples)
    "grpo_bind": ("grpo", ['reward.options={"preset": "sprites", "composite_weights": {"binding": 0.3}}']),
    "nft_bind": ("nft", ['reward.options={"preset": "sprites", "composite_weights": {"binding": 0.3}}']),
    # grpo_bind with a sliding SDE window (MixGRPO: 4 SDE steps of 10, ODE elsewhere) and less
    # noise, so rollouts stay near the ODE samples evaluation draws (docs/rl_sessions.md, session 6)
    "grpo_bind_mix": ("grpo", ['reward.options={"preset": "sprites", "composite_weights": {"binding": 0.3}}',
                               "rollout.window_size=4", "rollout.window_slide_every=10", "rollout.noise_level=0.5"]),
    # the optimiser check on the real reward: four training casts, cycled (each seen every other
    # iteration); scored on those casts with new noise by scripts/rl_train_casts.py --limit 4
    "grpo_fixed4": ("grpo", ["data.limit=4"]),
    # after grpo.min_std the ratio moves by ~5e-4 per iteration, never near the 0.01 clip: a 5x step
    "grpo_lr5": ("grpo", ["optim.lr=0.005"]),
    # SDE on the first 4 of 10 steps only, Euler after: the late steps, where CPS's noise leaves
    # artefacts GRPO learned to clean up (session 7), are sampled as users sample them
    "grpo_early4": ("grpo", ["rollout.window_size=4"]),
    # rollouts and the trained velocity guided at 2.5, the users' sampling guidance (session 8):
    # the session-7 policy learned at guidance 1 and lost its gain when sampled at 2.5
    "grpo_cfg": ("grpo", ["rollout.guidance=2.5"]),
    # NFT with GRPO's rollout sampler (CPS eta 0.8), so the two training-reward curves are drawn
    # the same way and the wall-clock comparison compares like with like (session 8)
    "nft_cps": ("nft", ["rollout.sde_type=cps"]),
    # rollouts as users sample, but for 4 early SDE steps: guidance 2.5 and Euler after the window
    "grpo_use": ("grpo", ["rollout.guidance=2.5", "rollout.window_size=4"]),
    # grpo_cfg with one optimizer step per iteration over 4 groups (32 rollouts) instead of four
    # steps of 4 rollouts each (flow_grpo steps on hundreds of samples; Adam scales a noisy
    # 4-sample gradient up to a full-size step). Measured in session 8: the training reward did
    # not rise in its 80 steps (slope -0.001 +- 0.019), so step count, not batch noise, binds here
    "grpo_cfg_big": ("grpo", ["rollout.guidance=2.5", "rollout.groups=4", "grpo.updates=1"]),
}


# NFT against GRPO on training-reward curves: `nft` rolls out with Euler, GRPO with CPS (its reward
# is lower from the start under that noise); `nft_cps` rolls out as GRPO does, like for like
SPEED_PAIRS = (("nft", "grpo"), ("nft_cps", "grpo"))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(cmd: list[str]) -> None:
    """Run a training command in the caller's folder (run folders are relative to it, as for
    this script), with this checkout's `src` first on the path."""
    import os

    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    subprocess.run(cmd, check=True, env=env)


# ------------------------------------------------------------------ training
def last_step(run_dir: Path) -> int:
    from idcrafter.train.logger import read_metrics

    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    return max((int(r["step"]) for r in rows if "step" in r), default=0)


def train_arm(arm: str, run_dir: Path, args, reward_model: Path | None) -> None:
    trainer, extra = ARMS[arm]
    if (run_dir / "pipeline" / "model_index.json").is_file() and last_step(run_dir) >= args.iterations:
        print(f"{arm}: complete in {run_dir}", flush=True)
        return
    if args.no_train:
        fail(f"{arm}: {run_dir} holds no complete run of {args.iterations} iterations (drop --no-train)")
    overrides = [f"model.init_pipeline={args.generator}", f"train.steps={args.iterations}",
                 f"train.threads={args.threads}", "log.progress=false", *extra, *args.set]
    if trainer == "dpo":
        overrides.append(f"dpo.pair_iterations={args.iterations}")
    if arm == "grpo_learned":
        overrides.append(f"reward.path={reward_model}")
    resume = ["--resume"] if (run_dir / "config.json").is_file() else []
    run([sys.executable, "-m", "idcrafter.train.cli", trainer, "--recipe", args.recipe, "--run-dir", str(run_dir),
         *resume, *overrides])


def check_recipe(name: str, generator: Path, trainers: set[str]) -> None:
    """Fail before any work (exit 2) when a trainer has no recipe `name` or the recipe's reference
    size is not the generator's (the policy would see references SFT never saw)."""
    from idcrafter.errors import InputError
    from idcrafter.rl.recipes import rl_recipe

    size = json.loads((generator / "model_index.json").read_text()).get("reference_size")
    for trainer in sorted(trainers):
        try:
            cfg = rl_recipe(trainer, name)
        except InputError as exc:
            fail(f"{exc} (--recipe)")
        if size is not None and cfg.model.reference_size != size:
            fail(f"--recipe {name} uses {cfg.model.reference_size} px references but {generator} was trained "
                 f"with {size}: pass the recipe made for that generator (sprites-latent or sprites)")


def ensure_reward_model(args) -> Path:
    if args.reward_model:
        return Path(args.reward_model)
    rm_dir = args.out / "reward_model_run"
    if not (rm_dir / "reward_model" / "config.json").is_file():
        resume = ["--resume"] if (rm_dir / "config.json").is_file() else []
        run([sys.executable, "-m", "idcrafter.train.cli", "reward-model", "--recipe", "sprites", "--run-dir",
             str(rm_dir), *resume, f"train.threads={args.threads}", "log.progress=false"])
    return rm_dir / "reward_model"


# ------------------------------------------------------------------ evaluation
def held_out(pipe, args) -> list:
    from idcrafter.heldout import HeldoutConfig, heldout_generation_cases

    return heldout_generation_cases(pipe, HeldoutConfig(n=args.eval_n, steps=args.eval_steps, guidance=args.cfg))


def generate(pipeline: Path, npz: Path, args, truth: bool = False):
    """The arm's held-out clips, generated once and kept in `npz` (uint8 (N, T, H, W, 3)); with
    `truth`, the ground-truth renders of the same casts (nothing generated)."""
    import numpy as np

    from idcrafter.generation import GenerationSettings, generate_and_score
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.utils.io import atomic_write_bytes

    pipe = IDCrafterPipeline.from_pretrained(str(pipeline))
    pipe.set_progress_bar_config(disable=True)
    cases = held_out(pipe, args)
    if truth:
        return cases, [c.ground_truth for c in cases]
    version = weights_version(pipeline)
    if npz.is_file():
        with np.load(npz) as z:
            if list(z["keys"]) == [c.key for c in cases] and int(z["steps"]) == args.eval_steps \
                    and float(z["cfg"]) == args.cfg and str(z["pipeline"]) == str(pipeline) \
                    and (str(z["sampler"]) if "sampler" in z.files else "ode") == sampler_name(args) \
                    and (str(z["weights"]) == version if "weights" in z.files
                         else not newer_than(pipeline, npz)):
                return cases, list(z["clips"])
    settings = GenerationSettings(steps=args.eval_steps, guidance=args.cfg, batch_size=args.eval_batch,
                                  sampler=args.eval_sampler, noise_level=args.eval_noise_level)
    clips = [res.frames for res in generate_and_score(pipe, cases, settings, None, progress=True, desc=npz.stem)]
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, clips=np.stack(clips), keys=np.array([c.key for c in cases]), steps=args.eval_steps,
                        cfg=args.cfg, pipeline=str(pipeline), sampler=sampler_name(args),
                        weights=version)
    atomic_write_bytes(npz, buf.getvalue())
    return cases, clips


def sampler_name(args) -> str:
    """The held-out sampler as a tag: "ode", or e.g. "cps0.8" (a rollout sampler with its level)."""
    from idcrafter.sampling import DEFAULT_NOISE_LEVEL

    if args.eval_sampler == "ode":
        return "ode"
    level = DEFAULT_NOISE_LEVEL[args.eval_sampler] if args.eval_noise_level is None else args.eval_noise_level
    return f"{args.eval_sampler}{level:g}"


def sampler_tag(args) -> str:
    """"" for the ODE evaluation, "-<sampler><level>" for a stochastic one: the suffix of its eval
    folder and report, so both are kept side by side."""
    return "" if args.eval_sampler == "ode" else f"-{sampler_name(args)}"


def eval_folder_name(args) -> str:
    return f"eval{sampler_tag(args)}"


def weights_version(pipeline: Path) -> str:
    """A hash of the pipeline's transformer weights: a run extended or retrained in the same folder
    exports new weights, and its kept clips and figures must not be reused."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((pipeline / "transformer").glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def newer_than(pipeline: Path, path: Path) -> bool:
    """Whether the pipeline's weights were written after `path` (legacy figures without a weights key)."""
    files = list((pipeline / "transformer").glob("*.safetensors"))
    return not path.is_file() or any(f.stat().st_mtime > path.stat().st_mtime for f in files)


def scorer_version(name: str) -> str:
    """A hash of what a scorer's figures depend on: its part files and the judge's code (judge v2 and
    the audit judge were being retrained while this experiment ran; a changed judge re-scores the
    kept clips instead of mixing figures of two judges in one table)."""
    import hashlib

    from idcrafter.judge.parts import judge_dir

    folder = judge_dir() / ("audit" if name == "sprites-audit" else "")
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) + sorted((ROOT / "src" / "idcrafter" / "judge").rglob("*.py"))
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def evaluate_arm(arm: str, pipeline: Path, args, truth: bool = False) -> dict[str, dict]:
    """{scorer: {"cases": [per-case metrics], "mean": {...}}} of the arm, cached per scorer
    (`truth`: of the ground-truth renders, the ceiling of each scorer)."""
    import numpy as np

    from idcrafter.errors import InputError
    from idcrafter.scorers import build_scorer
    from idcrafter.utils.io import atomic_write_json, ensure_dir

    folder = ensure_dir(args.out / eval_folder_name(args))
    path = folder / f"{arm}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    key = {"n": args.eval_n, "steps": args.eval_steps, "cfg": args.cfg, "pipeline": str(pipeline)}
    if args.eval_sampler != "ode":  # ODE evaluations written before the option keep their key
        key["sampler"] = sampler_name(args)
    key["weights"] = "truth" if truth else weights_version(pipeline)
    legacy = {k: v for k, v in key.items() if k != "weights"}  # figures written before weights were keyed
    if done.get("settings") != key and not (done.get("settings") == legacy and not newer_than(pipeline, path)):
        done = {"settings": key}
    done["settings"] = key
    todo = [s for s in SCORERS if s not in done or done[s].get("version") != scorer_version(s)]
    if not todo:
        return done
    scorers = {}
    for name in todo:
        try:
            scorers[name] = build_scorer(name)
        except InputError as exc:  # the audit judge before it ships: added by a later run
            print(f"  {arm}: {name} not available ({exc}); run the script again when it is", flush=True)
    if not scorers:
        return done
    cases, clips = generate(pipeline, folder / f"{arm}.npz", args, truth)
    for name, scorer in scorers.items():
        rows = []
        for case, clip in zip(cases, clips):
            m = scorer.score(clip, case.references, case.prompt).metrics
            rows.append({k: (float(v) if isinstance(v, (int, float)) else None) for k, v in m.items()})
        keys = SCORERS[name][1]
        mean = {}
        for k in keys:
            vals = [r[k] for r in rows if r.get(k) is not None and math.isfinite(r[k])]
            mean[k] = float(np.mean(vals)) if vals else float("nan")
        done[name] = {"cases": rows, "mean": mean, "version": scorer_version(name)}
    atomic_write_json(path, done)
    return done


def add_composite(evaluation: dict) -> dict:
    """The training reward (the `sprites` composite, default weights) of each held-out clip, from
    the judge figures it is built from, as `composite` in the judge's cases and mean. Computed on
    load, so evaluations cached before this column existed get it too. The clip's `copy_paste` is
    the judge's clip figure where the reward takes the worst subject's (they agree on every clip
    without a paste)."""
    import numpy as np

    from idcrafter.rewards.composite import composite_reward

    judge = evaluation.get("sprites")
    if not judge:
        return evaluation
    # the reward's inputs and the judge figures they are (as `rewards.face.JudgeReward` reads them)
    inputs = dict(face_mean="face_sim_mean", face_min="face_sim_min", subject="subject_sim", aesthetic="quality",
                  natural="natural")
    for row in judge["cases"]:
        ok = all(row.get(k) is not None and math.isfinite(row[k]) for k in inputs.values())
        row["composite"] = float(composite_reward(**{arg: row[k] for arg, k in inputs.items()},
                                                  copy_paste=row.get("copy_paste") or 0.0)["composite"]) if ok else None
    vals = [r["composite"] for r in judge["cases"] if r["composite"] is not None]
    judge["mean"]["composite"] = float(np.mean(vals)) if vals else float("nan")
    return evaluation


def paired(arm_eval: dict, base_eval: dict, scorer: str, metric: str) -> tuple[float, float, int]:
    """Mean paired difference arm - base over the cases both define, its standard error, count."""
    import numpy as np

    a = arm_eval.get(scorer, {}).get("cases", [])
    b = base_eval.get(scorer, {}).get("cases", [])
    d = [x[metric] - y[metric] for x, y in zip(a, b)
         if x.get(metric) is not None and y.get(metric) is not None and math.isfinite(x[metric] - y[metric])]
    if len(d) < 2:
        return float("nan"), float("nan"), len(d)
    return float(np.mean(d)), float(np.std(d, ddof=1) / math.sqrt(len(d))), len(d)


# ------------------------------------------------------------------ curves
def curve(run_dir: Path, clock: str = "wall", samples: Path | None = None) -> list[tuple[float, float]]:
    """(cumulative seconds, reward) of a run's metrics.jsonl, one point per logged step. `clock`
    "wall": the iterations' `step_time`; "cpu": their `cpu_s` (the process's CPU time), or, for a
    run logged without it, the CPU time of `samples` (lines "unix_time cpu_ticks ticks_per_s" of
    the training process, `runs/rl-cpu-sampler.sh`) interpolated at each logged `time`."""
    import numpy as np

    from idcrafter.train.logger import read_metrics

    rows = sorted((r for r in read_metrics(run_dir / "metrics.jsonl") if "reward" in r and "step_time" in r),
                  key=lambda r: r["step"])
    if clock == "cpu" and rows and "cpu_s" not in rows[0]:
        if samples is None or not samples.is_file():
            return []
        t, ticks, hz = np.loadtxt(samples, ndmin=2)[np.argsort(np.loadtxt(samples, ndmin=2)[:, 0])].T
        cpu = np.interp([r["time"] for r in rows], t, ticks / hz)
        start = np.interp(rows[0]["time"] - rows[0]["step_time"], t, ticks / hz)
        return [(float(c - start), float(r["reward"])) for c, r in zip(cpu, rows)]
    out, total = [], 0.0
    for r in rows:
        total += float(r["cpu_s" if clock == "cpu" else "step_time"])
        out.append((total, float(r["reward"])))
    return out


def smooth(points: list[tuple[float, float]], k: int = 5) -> list[tuple[float, float]]:
    return [(points[i][0], sum(r for _, r in points[max(0, i - k + 1): i + 1]) / len(points[max(0, i - k + 1): i + 1]))
            for i in range(len(points))]


def time_to_reach(points: list[tuple[float, float]], target: float, k: int = 5) -> float | None:
    """First time at which the running mean (over `k` iterations) reaches target."""
    for t, r in smooth(points, k):
        if r >= target:
            return t
    return None


# ------------------------------------------------------------------ report
def write_report(out: Path, evals: dict, curves: dict, cpu_curves: dict, summary: dict, tag: str = "") -> None:
    """`results<tag>.md` / `.json` and `curves.png` in `out` (`tag`: the held-out sampler's, if not ODE)."""
    from idcrafter.utils.io import atomic_write_json, atomic_write_text

    lines = []
    for scorer, (prefix, keys) in SCORERS.items():
        keys = ("composite", *keys) if scorer == "sprites" else keys  # add_composite
        arms = [a for a in evals if scorer in evals[a]]
        if not arms:
            lines += [f"{scorer}: not available yet", ""]
            continue
        lines += [f"### {scorer} ({prefix}), mean over {len(evals[arms[0]][scorer]['cases'])} held-out casts", "",
                  "| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for arm in arms:
            lines.append(f"| {arm} | " + " | ".join(f"{evals[arm][scorer]['mean'][k]:.3f}" for k in keys) + " |")
        if "sft" in evals and scorer in evals["sft"]:
            lines += ["", f"Paired difference to SFT (same casts and seeds), mean +- standard error:", "",
                      "| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for arm in arms:
                if arm in ("sft", "ground_truth"):
                    continue
                cells = []
                for k in keys:
                    m, se, _ = paired(evals[arm], evals["sft"], scorer, k)
                    cells.append(f"{m:+.3f} +- {se:.3f}")
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    for arm, pts in curves.items():
        if pts:
            first, last = smooth(pts)[min(4, len(pts) - 1)][1], smooth(pts)[-1][1]
            cpu = cpu_curves.get(arm) or []
            cpu_text = f" ({cpu[-1][0]:.0f} CPU-s)" if cpu else ""
            lines.append(f"- {arm}: {len(pts)} iterations in {pts[-1][0]:.0f} s of iteration wall time{cpu_text}; "
                         f"training reward (running mean of 5) {first:.3f} at iteration {min(5, len(pts))} -> "
                         f"{last:.3f}")
    lines += [f"- {k}: {v:.3f}" for k, v in summary.items()]
    atomic_write_text(out / f"results{tag}.md", "\n".join(lines) + "\n")
    atomic_write_json(out / f"results{tag}.json", {"results": {a: {s: e[s]["mean"] for s in SCORERS if s in e}
                                                         for a, e in evals.items()},
                                             "curves": curves, "cpu_curves": cpu_curves, "summary": summary})
    print((out / f"results{tag}.md").read_text())
    if any(curves.values()):
        plot_curves(out / "curves.png", curves, cpu_curves)


def plot_curves(path: Path, curves: dict, cpu_curves: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    panels = [(curves, "wall-clock of the iterations (min, shared machine)")]
    if any(cpu_curves.values()):
        panels.append((cpu_curves, "CPU time of the training process (min, 1 thread)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4), squeeze=False)
    for ax, (cs, xlabel) in zip(axes[0], panels):
        for arm, pts in cs.items():
            if pts:
                line, = ax.plot([t / 60 for t, _ in pts], [r for _, r in pts], alpha=0.25)
                ax.plot([t / 60 for t, _ in smooth(pts)], [r for _, r in smooth(pts)], color=line.get_color(),
                        label=f"{arm} (running mean of 5)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training reward (composite)")
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", type=Path, required=True, help="the SFT generator pipeline folder")
    ap.add_argument("--out", type=Path, default=Path("runs/rl-exp"))
    ap.add_argument("--recipe", default="sprites-latent", help="the trainers' recipe (sprites-latent or sprites)")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--run", action="append", default=[], metavar="ARM=DIR", help="an arm's run folder")
    ap.add_argument("--cpu-samples", action="append", default=[], metavar="ARM=FILE",
                    help="CPU-time samples of an arm's training process logged without cpu_s")
    ap.add_argument("--reward-model", default=None)
    ap.add_argument("--eval-n", type=int, default=32)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--eval-batch", type=int, default=8, help="held-out cases sampled together")
    ap.add_argument("--eval-sampler", default="ode", choices=("ode", "flow", "cps"),
                    help="held-out sampler: ode (Euler), or an RL rollout sampler, to measure what a policy "
                         "learned under its rollouts' noise")
    ap.add_argument("--eval-noise-level", type=float, default=None, help="the stochastic sampler's level")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-train", action="store_true", help="only evaluate complete runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every arm (e.g. monitor.every=0 until the audit judge ships)")
    args = ap.parse_args()
    if not (args.generator / "model_index.json").is_file():
        fail(f"{args.generator} is not a pipeline folder (no model_index.json): pass --generator DIR")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        fail(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    if args.eval_n < 2 or args.iterations < 1:
        fail("--eval-n must be >= 2 and --iterations >= 1")
    from idcrafter.errors import InputError
    from idcrafter.sampling import sampler_kwargs

    try:
        sampler_kwargs(args.eval_sampler, args.eval_noise_level, None)
    except InputError as exc:
        fail(f"--eval-noise-level: {exc}")
    check_recipe(args.recipe, args.generator, {ARMS[a][0] for a in arms} - {"none"})
    dirs = {arm: args.out / arm for arm in arms}
    for item in args.run:
        arm, _, folder = item.partition("=")
        if arm not in ARMS or not folder:
            fail(f"--run takes ARM=DIR with ARM one of {', '.join(ARMS)}, got {item!r}")
        dirs[arm] = Path(folder)
    samples = {}
    for item in args.cpu_samples:
        arm, _, file = item.partition("=")
        if arm not in ARMS or not file:
            fail(f"--cpu-samples takes ARM=FILE with ARM one of {', '.join(ARMS)}, got {item!r}")
        samples[arm] = Path(file)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    reward_model = ensure_reward_model(args) if "grpo_learned" in arms and not args.no_train else None
    evals, curves, cpu_curves = {}, {}, {}
    for arm in arms:
        if ARMS[arm][0] == "none":
            pipeline = args.generator
        else:
            train_arm(arm, dirs[arm], args, reward_model)
            pipeline = dirs[arm] / "pipeline"
            curves[arm] = curve(dirs[arm])
            cpu_curves[arm] = curve(dirs[arm], "cpu", samples.get(arm))
        evals[arm] = add_composite(evaluate_arm(arm, pipeline, args))
    evals["ground_truth"] = add_composite(evaluate_arm("ground_truth", args.generator, args, truth=True))
    summary = {}
    for clock, cs in (("wall", curves), ("cpu", cpu_curves)):
        for pair in SPEED_PAIRS:
            if not all(cs.get(k) for k in pair):
                continue
            finals = {k: smooth(cs[k])[-1][1] for k in pair}
            for fast, slow in (pair, pair[::-1]):
                t = time_to_reach(cs[fast], finals[slow])
                if t is not None:
                    summary[f"{fast}_reaches_{slow}_final_at_fraction_of_{slow}_{clock}_time"] = t / cs[slow][-1][0]
    write_report(args.out, evals, curves, cpu_curves, summary, sampler_tag(args))


if __name__ == "__main__":
    main()
