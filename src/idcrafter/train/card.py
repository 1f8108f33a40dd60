"""What a shipped run contains besides its weights: the held-out evaluation that fits its data,
and the card (`README.md`) that states the run's own model, data, command and hardware.

Evaluation by the run's data (`evaluate_export`):
- SpriteWorld (`data.source` procedural or folder): held-out casts judged by the SpriteWorld
  judge beside the ground truth (`idcrafter.heldout`);
- real clips (`data.source=manifest`): the held-out manifest `eval.path` (as in training),
  generated and scored with real-face metrics beside the real clips (`idcrafter.heldout_real`);
- skipped, with the reason written into the card, when there is nothing it can be measured on
  (`eval.source=none`, no held-out manifest) or when asked (`train export --no-eval`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def evaluation_plan(cfg: Any, evaluate: bool = True) -> tuple[str, str]:
    """("sprites" | "manifest" | "skipped", what / why)."""
    if not evaluate:
        return "skipped", "skipped on request (`train export --no-eval`)"
    if cfg.data.source in ("procedural", "folder"):
        return "sprites", "SpriteWorld held-out casts, SpriteWorld judge"
    if cfg.eval.source == "none":
        return "skipped", "the run has no held-out data (`eval.source=none`), so nothing fits its data"
    path = cfg.eval.path
    if not path or not Path(path).is_file():
        return "skipped", (f"the held-out manifest `eval.path={path}` is not there; pass the run's held-out "
                           "manifest (`eval.path`) and export again to measure it")
    return "manifest", f"held-out manifest `{path}`, real-face metrics (dlib)"


def evaluate_export(pipe: Any, cfg: Any, out_dir: Path, n: int, steps: int, seed: int, guidance: float,
                    progress: bool = True, evaluate: bool = True) -> dict[str, Any]:
    """The held-out evaluation that fits the run's data (module docstring)."""
    kind, why = evaluation_plan(cfg, evaluate)
    if kind == "sprites":
        from idcrafter.heldout import HeldoutConfig, evaluate_heldout

        res = evaluate_heldout(pipe, HeldoutConfig(n=n, steps=steps, seed=seed, guidance=guidance),
                               out_dir=out_dir, progress=progress)
        for sheet in sorted(Path(out_dir).glob("case_*.png"))[1:]:
            sheet.unlink()  # keep one contact sheet in the shipped folder (small files in git)
        return {"kind": "sprites", **res}
    if kind == "manifest":
        from idcrafter.heldout_real import evaluate_manifest

        data = dataclasses.replace(cfg.data, path=cfg.eval.path)
        return evaluate_manifest(pipe, data, n=n, steps=steps, guidance=guidance, seed=seed, out_dir=out_dir,
                                 progress=progress)
    from idcrafter.utils.io import atomic_write_json, ensure_dir

    res = {"kind": "skipped", "reason": why, "generated": {}, "ground_truth": {}}
    atomic_write_json(ensure_dir(out_dir) / "heldout.json", res, indent=2)
    return res


def describe_model(cfg: Any) -> str:
    m = cfg.model
    codec = f"pixel codec patch {m.codec_patch}" if m.codec == "pixel" else "Wan VAE"
    world = "The SpriteWorld generator of idcrafter" if cfg.data.source in ("procedural", "folder") \
        else "An idcrafter multi-subject video generator"
    return (f"{world}: recipe `{cfg.recipe}` (preset `{m.preset}`, {codec}, {m.frames} x {m.height} x {m.width} "
            f"clips, {m.reference_size} px references)")


def describe_origin(cfg: Any, marker: dict[str, Any]) -> str:
    """How the weights came to be, and on what (the checkpoint's record of devices)."""
    where = ""
    if marker.get("device"):
        n, kind = int(marker.get("world_size", 1)), str(marker["device"]).split(":")[0]
        name = {"cpu": "the CPU", "cuda": "CUDA GPU", "mps": "Apple MPS"}.get(kind, kind)
        where = f" on {name}" if n == 1 else (f" on the CPU ({n} processes)" if kind == "cpu" else f" on {n} x {name}")
    mode = {"lora": f"LoRA r{cfg.train.lora_rank} on the base (merged) + the new subject modules",
            "adapters": "the new subject modules only", "full": "every weight"}.get(cfg.train.mode, cfg.train.mode)
    if cfg.model.init_pipeline:
        return f"trained{where}, continuing from the pipeline in `{cfg.model.init_pipeline}` (below)"
    if cfg.model.wan_path:
        return f"fine-tuned{where} from the Wan2.1 weights in `{cfg.model.wan_path}` ({mode} trained)"
    return f"trained from scratch{where}"


def describe_data(cfg: Any) -> str:
    d = cfg.data
    if d.source == "procedural":
        return f"SpriteWorld rendered on the fly, split `{d.split}`, seed {d.seed}"
    if d.source == "folder":
        return f"the SpriteWorld dataset folder `{d.path}` (`idcrafter world make`), shuffled with seed {d.seed}"
    stride = f", every {d.frame_stride} frame(s)" if d.frame_stride != 1 else ""
    return (f"real clips of the manifest `{d.path}` ({d.frames} x {d.height} x {d.width}{stride}, "
            f"{d.ref_size} px references), shuffled with seed {d.seed}")


def linked_section(folder: Path) -> str:
    """The card's list of frozen components linked rather than copied (idcrafter.linking)."""
    from idcrafter.linking import LINKS_FILE

    path = folder / LINKS_FILE
    if not path.is_file():
        return ""
    links = json.loads(path.read_text())
    rows = "\n".join(f"- `{name}` -> `{entry['target']}`" for name, entry in links.items())
    return (f"\n## Linked components\n\nNot copied into this folder: these frozen components are links to the "
            f"folders they were loaded from, resolved when the pipeline is loaded (`idcrafter.linking`; "
            f"`cp -rL` makes a self-contained copy):\n\n{rows}\n")


def evaluation_section(result: dict[str, Any]) -> str:
    kind = result.get("kind", "sprites")
    if kind == "skipped":
        return f"## Held-out evaluation\n\nSkipped: {result['reason']}.\n"
    if kind == "manifest":
        from idcrafter.heldout_real import real_metrics_table

        c = result["config"]
        errors = sorted({r["error"] for r in result["cases"] if r.get("error")})
        unscored = f" Not scored: {c['n'] - c['scored']} ({'; '.join(errors)[:300]})." if errors else ""
        return (f"## Held-out evaluation on real clips\n\n{c['n']} items of `{c['manifest']}` ({' x '.join(map(str, c['size']))}), "
                f"{c['steps']} Euler steps, guidance {c['guidance']}, seed {c['seed']}; face metrics by `{c['scorer']}` "
                f"(`idcrafter.heldout_real`), the real clips' own figures beside the generated ones; "
                f"{c['scored']} of {c['n']} scored.{unscored}\n\n{real_metrics_table(result)}\n")
    from idcrafter.heldout import metrics_table

    hc = result["config"]
    return (f"## Held-out judge metrics\n\n{hc['n']} held-out casts of {'/'.join(map(str, hc['subjects']))} subjects "
            f"(seed {hc['seed']}), {hc['steps']} Euler steps,\nguidance {hc['guidance']}; the ground truth's own "
            f"figures are the ceiling of this judge.\nCommand: `idcrafter eval heldout --model <this folder> --n "
            f"{hc['n']} --seed {hc['seed']} --steps {hc['steps']} --cfg {hc['guidance']}`.\n\n{metrics_table(result)}\n")


def card_text(folder: Path, cfg: Any, step: int, record: dict[str, Any], result: dict[str, Any], name: str,
              marker: dict[str, Any]) -> str:
    """The card (module docstring) as markdown."""
    from idcrafter.train.export import provenance, reproduce_command

    h = record["train_seconds"] / 3600
    gap = "\n".join(f"| {k} | {v:.4f} |" for k, v in record["reference_gap"].items()) or "| (none logged) | |"
    seen = step * int(marker.get("global_batch") or cfg.data.batch_size)
    weights = "EMA weights" if cfg.train.ema_decay > 0 else "the trained weights (no EMA)"
    return f"""# {name}

{describe_model(cfg)}, {describe_origin(cfg, marker)}. {weights}, `IDCrafterPipeline.from_pretrained` format.
{provenance(cfg)}
- Command: `{reproduce_command(cfg)}` (resumed with `--resume` between sessions)
- Data: {describe_data(cfg)}; batch {cfg.data.batch_size} per process
- Steps: {step} of {cfg.train.steps} ({seen:,} clips seen)
- Training wall time: {h:.2f} h of logged step time
{linked_section(folder)}
## Reference gap (held-out batch, step {record['eval_step']})

Error of the x0 prediction with shuffled references minus with the true ones, on subject cells
(`rel` = as a fraction of the error with the true references). Positive = references are used.

| figure | value |
|---|---|
{gap}

{evaluation_section(result)}"""


def write_card(folder: Path, cfg: Any, step: int, record: dict[str, Any], result: dict[str, Any], name: str,
               marker: dict[str, Any] | None = None) -> Path:
    from idcrafter.utils.io import atomic_write_text

    path = Path(folder) / "README.md"
    atomic_write_text(path, card_text(Path(folder), cfg, step, record, result, name, marker or {}))
    return path
