"""`make demo`: the main job on the embedded default.

Takes a held-out SpriteWorld cast (2-3 identities never seen in training: their references and
caption), generates the clip with the shipped generator (`assets/checkpoints/sprites-sft`), and
writes into `outputs/demo/`: `generated.mp4`, `ground_truth.mp4`, a contact sheet
(`sheet.png`: references | generated | ground truth), the judge's metrics of both clips
(`metrics.json`) and a short report (`report.md`).

Beside it, when it ships, the RL post-trained generator (`assets/checkpoints/sprites-grpo`) samples
the same cast from the same seed (`generated_grpo.mp4`, a "GRPO" row in the sheet, a column in the
report, `grpo` in `metrics.json`); without that folder the demo says so and shows SFT alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from idcrafter.errors import MissingWeightsError
from idcrafter.heldout import METRICS

def default_model() -> Path:
    """The shipped generator: `<assets>/checkpoints/sprites-sft` (`$IDCRAFTER_ASSETS` or the repo's)."""
    from idcrafter.judge.parts import assets_dir

    return assets_dir() / "checkpoints" / "sprites-sft"


def default_rl_model() -> Path:
    """The shipped RL post-trained generator shown beside SFT: `<assets>/checkpoints/sprites-grpo`."""
    from idcrafter.judge.parts import assets_dir

    return assets_dir() / "checkpoints" / "sprites-grpo"


def load_generator(model: Path | None = None):
    from idcrafter.pipeline import IDCrafterPipeline

    model = Path(model) if model is not None else default_model()
    if not (model / "model_index.json").is_file():
        raise MissingWeightsError(
            f"no generator at {model}: the repository ships one at assets/checkpoints/sprites-sft; "
            f"or train and export your own (idcrafter train sft --recipe sprites, then "
            f"idcrafter train export --out {model})")
    return IDCrafterPipeline.from_pretrained(str(model))


def run_demo(out: Path, seed: int = 7, subjects: int = 3, model: Path | None = None, steps: int = 30,
             guidance: float = 2.5, compare: Path | str | None = "auto") -> dict:
    """Generate, judge and write `out/{generated.mp4, ground_truth.mp4, sheet.png, metrics.json,
    report.md, ref_*.png}`. `compare`: a second generator sampled on the same case and seed
    (`generated_grpo.mp4`); "auto" = the shipped `sprites-grpo` when `model` is the shipped default
    (skipped with a note when that folder is absent), None = none."""
    from idcrafter.generation import GenerationSettings, generate_and_score
    from idcrafter.heldout import example_case
    from idcrafter.scorers import SpritesScorer
    from idcrafter.utils.media import contact_sheet, save_image, write_mp4
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_generator(model)
    pc = pipe.config
    world = WorldConfig(frames=pc.default_frames, height=pc.default_height, width=pc.default_width,
                        ref_size=pc.reference_size)
    ex = make_example(seed, 0, "heldout", world, num_subjects=subjects)
    settings = GenerationSettings(steps=steps, guidance=guidance)
    (res,) = generate_and_score(pipe, [example_case(ex, "demo", seed)], settings, SpritesScorer(), score_truth=True)
    generated = res.frames  # (T, H, W, 3) uint8
    rl_model = (default_rl_model() if model is None else None) if compare == "auto" else compare
    rl, note = None, ""
    if rl_model is not None and (Path(rl_model) / "model_index.json").is_file():
        (rl,) = generate_and_score(load_generator(Path(rl_model)), [example_case(ex, "demo", seed)], settings,
                                   SpritesScorer())
    elif rl_model is not None:
        note = f"No GRPO column: no RL post-trained generator at {rl_model} (docs/rl.md says how to train one)."
        print(note)
    for i, r in enumerate(ex.refs):
        save_image(out / f"ref_{i}.png", r)
    write_mp4(out / "generated.mp4", generated)
    write_mp4(out / "ground_truth.mp4", ex.clip.frames)
    rows = [("references", list(ex.refs)), ("generated" if rl is None else "SFT", list(generated))]
    if rl is not None:
        write_mp4(out / "generated_grpo.mp4", rl.frames)
        rows.append(("GRPO", list(rl.frames)))
    save_image(out / "sheet.png", contact_sheet(rows + [("ground truth", list(ex.clip.frames))]))
    gen, gt = res.report, res.truth
    result = {"caption": ex.caption, "model": str(model or default_model()), "steps": steps, "guidance": guidance,
              "generated": gen.as_dict(), "ground_truth": gt.as_dict()}
    if rl is not None:
        result.update(grpo_model=str(rl_model), grpo=rl.report.as_dict())
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    lines = [f"# idcrafter demo (held-out cast, seed {seed})", "", f"Caption: {ex.caption}", "",
             f"Generated by `{Path(result['model']).name}` ({steps} Euler steps, guidance {guidance}): "
             "`generated.mp4`; the SpriteWorld render of the same cast: `ground_truth.mp4`; "
             "`sheet.png` shows references | generated | ground truth.", ""]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    if rl is None:
        lines += ([note, ""] if note else []) + ["| metric | generated | ground truth |", "|---|---|---|"]
        lines += [f"| {k} | {fmt(gen.metrics.get(k))} | {fmt(gt.metrics.get(k))} |" for k in METRICS]
    else:
        lines += [f"Beside it, from the same seed, the RL post-trained `{Path(rl_model).name}`: "
                  "`generated_grpo.mp4` (the sheet's GRPO row). One clip is one sample: docs/rl.md has "
                  "the held-out figures.", "",
                  "| metric | SFT | GRPO | ground truth |", "|---|---|---|---|"]
        lines += [f"| {k} | {fmt(gen.metrics.get(k))} | {fmt(rl.report.metrics.get(k))} | {fmt(gt.metrics.get(k))} |"
                  for k in METRICS]
    lines += ["", "Generated clip, per subject:", "",
              "| subject | matched track | face_sim | leakage | action (seen / asked) |", "|---|---|---|---|---|"]
    lines += [f"| ref_{s['reference']} | {s['track']} | {fmt(s['face_sim'])} | {fmt(s['leakage'])} | "
              f"{s['action']} / {s['wanted_action']} |" for s in gen.per_subject]
    lines += ["", f"Wall time: {time.time() - t0:.1f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/generated.mp4, {'generated_grpo.mp4, ' if rl is not None else ''}ground_truth.mp4, "
          "sheet.png, metrics.json, report.md")
    return result
