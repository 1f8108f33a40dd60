"""The `idcrafter` command line.

Bad input raises `InputError`; `main` prints its one-line message to stderr and exits with 2.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from idcrafter.build import build_cmd
from idcrafter.devices import DeviceOption, DtypeOption, OffloadOption
from idcrafter.errors import InputError, run_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="idcrafter: multi-subject, identity-preserving video generation.")
world_app = typer.Typer(no_args_is_help=True, help="SpriteWorld, the embedded multi-subject world, and its judge.")
app.add_typer(world_app, name="world")
bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks (ratios measured side by side in one run).")
app.add_typer(bench_app, name="bench")


def _mount_rl_bench() -> None:
    from idcrafter.rl.bench import register_bench

    register_bench(bench_app)  # `idcrafter bench rl`


_mount_rl_bench()
from idcrafter.eval.cli import compare_cmd, eval_app  # noqa: E402 - `idcrafter eval` runner; `eval heldout` below

app.add_typer(eval_app, name="eval")
app.command("compare")(compare_cmd)


def _mount_train() -> None:
    from idcrafter.train.cli import train_app

    app.add_typer(train_app, name="train", help="Training: rectified-flow SFT (recipes in idcrafter.recipes).")


_mount_train()
app.command("build")(build_cmd)  # idcrafter build --wan DIR [--vlm DIR] --out DIR (idcrafter.build)

from idcrafter.curation.cli import data_app  # noqa: E402 - data curation (typer sub-app)

app.add_typer(data_app, name="data")

from idcrafter.serve.cli import serve_cmd  # noqa: E402 - the web page and JSON API

app.command("serve")(serve_cmd)

PARTS = ["detector", "face", "subject", "action", "quality", "critic"]


def _command() -> str:
    return "idcrafter " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for k, v in metrics.items():
        if isinstance(v, float):
            typer.echo(f"{k:28s} {v:.4f}")
        elif not isinstance(v, (list, dict)):
            typer.echo(f"{k:28s} {v}")


@world_app.command("make")
def world_make(
    split: str = typer.Option(..., help="train or heldout"),
    num: int = typer.Option(..., help="number of clips"),
    seed: int = typer.Option(0, help="data seed (the dataset is a pure function of split and seed)"),
    out: Path = typer.Option(..., help="output folder"),
    frames: int = typer.Option(9), height: int = typer.Option(48), width: int = typer.Option(48),
    ref_size: int = typer.Option(32),
    overwrite: bool = typer.Option(False, help="replace an existing folder"),
) -> None:
    """Render a SpriteWorld dataset to disk (random access with `SpriteWorldDataset`)."""
    from idcrafter.world.dataset import check_split, make_dataset

    cfg = _world_config(frames, height, width, ref_size)
    path = make_dataset(out, check_split(split), num, seed, cfg, overwrite=overwrite, command=_command())
    typer.echo(f"wrote {num} {split} clips to {path}")


def _world_config(frames: int, height: int, width: int, ref_size: int):
    from idcrafter.validation import check_world_size
    from idcrafter.world.scene import WorldConfig

    check_world_size(frames, height, width, ref_size)  # documented limits (docs/reliability.md)
    try:
        return WorldConfig(frames=frames, height=height, width=width, ref_size=ref_size)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


@world_app.command("sample")
def world_sample(
    subjects: int = typer.Option(3, help="number of subjects, 1..4"),
    seed: int = typer.Option(0), split: str = typer.Option("heldout"),
    out: Path = typer.Option(..., help="output folder"),
    frames: int = typer.Option(9),
) -> None:
    """Write one clip: ref_*.png, clip.mp4, sheet.png, meta.json."""
    from idcrafter.world.dataset import check_split, make_example
    from idcrafter.world.scene import MAX_SUBJECTS

    if not 1 <= subjects <= MAX_SUBJECTS:
        raise InputError(f"--subjects must be between 1 and {MAX_SUBJECTS}, got {subjects}")
    ex = make_example(seed, 0, check_split(split), _world_config(frames, 48, 48, 32), num_subjects=subjects)
    write_example(ex, out)
    typer.echo(f"caption: {ex.caption}\nwrote {out}/clip.mp4, sheet.png, meta.json and {subjects} reference(s)")


def write_example(ex, out: Path) -> None:
    from idcrafter.utils.io import atomic_write_json, claim_output_dir
    from idcrafter.utils.media import contact_sheet, save_image, write_mp4

    claim_output_dir(out, "idcrafter world sample", signature=("meta.json", "clip.mp4", "sheet.png"))
    for i, r in enumerate(ex.refs):
        save_image(out / f"ref_{i}.png", r)
    write_mp4(out / "clip.mp4", ex.clip.frames)
    save_image(out / "sheet.png", contact_sheet([("references", list(ex.refs)), ("clip", list(ex.clip.frames))]))
    meta = ex.meta()
    meta["boxes"] = ex.clip.boxes.round(2).tolist()
    meta["head_boxes"] = ex.clip.head_boxes.round(2).tolist()
    meta["visibility"] = ex.clip.visibility.round(3).tolist()
    atomic_write_json(out / "meta.json", meta)


@world_app.command("train-judge")
def world_train_judge(
    part: str = typer.Option("all", help=f"all or one of {', '.join(PARTS)}"),
    seed: Optional[int] = typer.Option(None, help="seed (default: 0 for the main judge, the audit recipe's for audit)"),
    folder: Optional[Path] = typer.Option(None, help="judge folder (default: assets/judge; audit parts go to its audit/)"),
    judge: str = typer.Option("main", "--judge", help="main (what rewards use) or audit (trained apart, never a reward)"),
) -> None:
    """Train the judge's parts (CPU, 1 thread, minutes each, resumable) and write them with their cards."""
    from idcrafter.judge.commands import train_judge
    from idcrafter.validation import check_seed

    if seed is not None:
        check_seed(seed)
    for name, figures in train_judge(part, seed, folder, judge, echo=typer.echo).items():
        typer.echo(f"== {name}")
        _print_metrics({k: v for k, v in figures.items() if not isinstance(v, dict)}, False)


@world_app.command("validate-judge")
def world_validate_judge(
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    clips: int = typer.Option(120, help="held-out clips scored end to end"),
    seed: int = typer.Option(1234),
    folder: Optional[Path] = typer.Option(None, help="judge parts folder (default: assets/judge)"),
    judge: str = typer.Option("main", "--judge", help="main or audit"),
    adversarial: bool = typer.Option(False, "--adversarial", help="degenerate videos of held-out casts beside ground truth"),
    casts: int = typer.Option(12, help="--adversarial: held-out casts (2-4 subjects)"),
    frames: int = typer.Option(9, help="--adversarial: frames per clip"),
    checkpoint: list[Path] = typer.Option([], help="--adversarial: pipeline folders of one run, oldest first (repeat)"),
) -> None:
    """Validation figures of the judge on held-out identities, with their targets."""
    from idcrafter.judge.commands import validate
    from idcrafter.validation import LIMITS, check_int, check_seed

    check_int(clips, "--clips", 1, LIMITS.max_eval_cases), check_seed(seed)
    check_int(casts, "--casts", 1, LIMITS.max_eval_cases), check_int(frames, "--frames", 2, 64)
    validate(judge, folder, clips, seed, adversarial, casts, frames, checkpoint, as_json, echo=typer.echo)


@app.command("judge")
def judge_cmd(
    video: Path = typer.Option(..., help="the clip to score (mp4)"),
    ref: list[Path] = typer.Option(..., help="one reference image per subject (repeat --ref)"),
    prompt: Optional[str] = typer.Option(None, help="the caption; needed for action_acc"),
    as_json: bool = typer.Option(False, "--json"),
    face_backend: str = typer.Option("sprites", help="sprites (SpriteWorld judge), dlib or insightface (real faces)"),
    face_weights: Optional[Path] = typer.Option(None, help="ONNX recognition model for --face-backend insightface"),
    judge: str = typer.Option("main", "--judge", help="SpriteWorld judge: main, or audit (never a reward; adds attr_acc)"),
) -> None:
    """Score a clip against its references: face_sim, leakage, motion, actions, quality, total."""
    from idcrafter.scorers import build_scorer
    from idcrafter.utils.media import load_image, read_video
    from idcrafter.validation import LIMITS, check_prompt

    from idcrafter.validation import check_reference_count

    if judge not in ("main", "audit"):
        raise InputError(f"--judge must be main or audit, got {judge!r}")
    if judge == "audit" and face_backend != "sprites":
        raise InputError(f"--judge audit is the SpriteWorld audit judge: use it with --face-backend sprites, "
                         f"not {face_backend!r}")
    if prompt is not None:
        check_reference_count(check_prompt(prompt, "--prompt"), len(ref))
    if len(ref) > LIMITS.max_references:
        raise InputError(f"{len(ref)} references given; at most {LIMITS.max_references} subjects are scored")
    refs = [load_image(p) for p in ref]
    frames = read_video(video)  # bad inputs first: before the judge is loaded
    name = "sprites-audit" if judge == "audit" and face_backend == "sprites" else face_backend
    scorer = build_scorer(name, None if face_backend == "sprites" else face_weights)
    report = scorer.score(frames, refs, prompt)
    _print_metrics(report.as_dict() if as_json else report.metrics, as_json)


@app.command("generate")
def generate(
    model: Path = typer.Option(..., help="a pipeline folder (IDCrafterPipeline.save_pretrained)"),
    ref: list[Path] = typer.Option(..., help="one reference image per subject (repeat --ref)"),
    prompt: str = typer.Option(..., help="the prompt"),
    out: Path = typer.Option(Path("outputs/generate/out.mp4"), help="output mp4; a contact sheet is written beside it"),
    steps: int = typer.Option(50), cfg: float = typer.Option(2.5), seed: int = typer.Option(0),
    frames: Optional[int] = typer.Option(None), height: Optional[int] = typer.Option(None),
    width: Optional[int] = typer.Option(None),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out file"),
    device: DeviceOption = None, dtype: DtypeOption = None, offload: OffloadOption = "none",
) -> None:
    """Generate a video from a prompt and reference images with a saved pipeline."""
    from idcrafter.encoders.references import prepare_reference
    from idcrafter.generation import Case, GenerationSettings, generate as generate_clips
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.utils.media import contact_sheet, save_image, write_mp4

    from idcrafter.utils.io import check_output_file
    from idcrafter.validation import LIMITS, check_generation, check_pipeline_folder, check_seed, check_video_size

    check_pipeline_folder(model)  # a local folder only (a hub name is refused)

    # everything that needs no model first, so bad input never waits for (or prints) a model load
    check_seed(seed), check_video_size(frames, height, width)
    check_generation([prompt], [list(ref)], steps, cfg, LIMITS.max_references)
    check_output_file(out, (".mp4",), overwrite)
    check_output_file(out.with_name(out.stem + "_sheet.png"), (".png",), overwrite, option="the sheet beside --out")
    from idcrafter.devices import load_pipeline

    pipe = load_pipeline(model, device, dtype, offload)
    refs = [prepare_reference(p, pipe.config.reference_size) for p in ref]
    case = Case(key=out.stem, prompt=prompt, references=refs, seed=seed, size=(frames, height, width))
    (frames_u8,) = generate_clips(pipe, [case], GenerationSettings(steps=steps, guidance=cfg))  # (F, H, W, 3) uint8
    write_mp4(out, frames_u8, fps=pipe.fps)  # the model's size and frame rate
    sheet = out.with_name(out.stem + "_sheet.png")
    save_image(sheet, contact_sheet([("references", refs), ("generated", list(frames_u8))]))
    typer.echo(f"wrote {out} and {sheet}")


@bench_app.command("model")
def bench_model_cmd(
    as_json: bool = typer.Option(False, "--json"),
    steps: int = typer.Option(50, help="sampling steps of the cache benchmark"),
    repeats: int = typer.Option(10, help="forward passes timed per model"),
    ref_latent: int = typer.Option(26, help="side of each reference's latent (26: 169 tokens; 32: a frame's 256)"),
) -> None:
    """IDCrafter vs diffusers' Wan forward, condition-cache speed-up, achieved GEMM fraction."""
    from idcrafter.bench import bench_model

    from idcrafter.validation import check_int, check_steps

    if not 2 <= ref_latent <= 32 or ref_latent % 2:
        raise InputError(f"--ref-latent must be even and in 2..32 (the bench preset takes 256 tokens), got {ref_latent}")
    check_steps(steps), check_int(repeats, "--repeats", 1, 1000)
    _print_metrics(bench_model(steps=steps, repeats=repeats, ref_latent=ref_latent), as_json)


@bench_app.command("train")
def bench_train_cmd(
    as_json: bool = typer.Option(False, "--json"),
    target: list[str] = typer.Option(["sprites", "bench"], help="a recipe name, or `bench` (the bench model size)"),
    repeats: int = typer.Option(5, help="training steps timed per target"),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
) -> None:
    """Training step speed: samples/s, achieved fraction of the fp32 GEMM peak, peak memory."""
    from idcrafter.bench import bench_train
    from idcrafter.recipes import RECIPES
    from idcrafter.validation import check_int

    check_int(repeats, "--repeats", 1, 1000)
    if threads is not None:
        check_int(threads, "--threads", 1, 256)
    for name in target:
        if name != "bench" and name not in RECIPES:
            raise InputError(f"unknown --target {name!r}: choose bench or a recipe ({', '.join(RECIPES)})")
    res = bench_train(tuple(target), repeats=repeats, threads=threads)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    for name, figures in res.items():
        typer.echo(f"[{name}]")
        _print_metrics(figures, False)


@eval_app.command("heldout")
def eval_heldout(
    model: Path = typer.Option(Path("assets/checkpoints/sprites-sft"), help="a SpriteWorld pipeline folder"),
    n: int = typer.Option(16, help="held-out casts"), seed: int = typer.Option(1234),
    steps: int = typer.Option(20), cfg: float = typer.Option(2.5),
    guide_references: bool = typer.Option(True, help="drop the references from guidance's unconditional branch "
                                                      "(--no-guide-references keeps them: guidance on the prompt only)"),
    out: Path = typer.Option(Path("outputs/heldout"), help="heldout.json and contact sheets"),
    as_json: bool = typer.Option(False, "--json"),
    device: DeviceOption = None, dtype: DtypeOption = None, offload: OffloadOption = "none",
) -> None:
    """Generate held-out SpriteWorld casts and judge them beside the ground truth's own figures."""
    from idcrafter.heldout import HeldoutConfig, evaluate_heldout, metrics_table
    from idcrafter.pipeline import IDCrafterPipeline

    from idcrafter.utils.io import claim_output_dir
    from idcrafter.validation import LIMITS, check_guidance, check_int, check_pipeline_folder, check_seed, check_steps

    check_pipeline_folder(model)
    check_int(n, "--n", 1, LIMITS.max_eval_cases), check_seed(seed), check_steps(steps), check_guidance(cfg)
    claim_output_dir(out, "idcrafter eval heldout", signature=("heldout.json",))
    held = HeldoutConfig(n=n, seed=seed, steps=steps, guidance=cfg, guide_references=guide_references)
    from idcrafter.devices import load_pipeline

    result = evaluate_heldout(load_pipeline(model, device, dtype, offload), held, out_dir=out)
    typer.echo(json.dumps({k: result[k] for k in ("generated", "ground_truth")}, indent=2) if as_json
               else metrics_table(result))
    typer.echo(f"wrote {out}/heldout.json", err=True)


@app.command("demo")
def demo(out: Path = typer.Option(Path("outputs/demo")), seed: int = typer.Option(7),
         subjects: int = typer.Option(3)) -> None:
    """The main job on the embedded default (see README)."""
    from idcrafter.demo import run_demo
    from idcrafter.utils.io import claim_output_dir
    from idcrafter.validation import LIMITS, check_int, check_seed

    check_seed(seed), check_int(subjects, "--subjects", 1, LIMITS.max_references)
    claim_output_dir(out, "idcrafter demo", signature=("generated.mp4", "metrics.json", "report.md"))
    run_demo(out, seed=seed, subjects=subjects)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
