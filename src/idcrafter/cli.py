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

from idcrafter.errors import InputError, run_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="idcrafter: multi-subject, identity-preserving video generation.")
world_app = typer.Typer(no_args_is_help=True, help="SpriteWorld, the embedded multi-subject world, and its judge.")
app.add_typer(world_app, name="world")
bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks (ratios measured side by side in one run).")
app.add_typer(bench_app, name="bench")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluation of a generator with the judge.")
app.add_typer(eval_app, name="eval")


def _mount_train() -> None:
    from idcrafter.train.cli import train_app

    app.add_typer(train_app, name="train", help="Training: rectified-flow SFT (recipes in idcrafter.recipes).")


_mount_train()

PARTS = ["detector", "face", "subject", "action", "quality"]


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
    from idcrafter.world.scene import WorldConfig

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
    from idcrafter.utils.media import contact_sheet, save_image, write_mp4

    out.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(ex.refs):
        save_image(out / f"ref_{i}.png", r)
    write_mp4(out / "clip.mp4", ex.clip.frames)
    save_image(out / "sheet.png", contact_sheet([("references", list(ex.refs)), ("clip", list(ex.clip.frames))]))
    meta = ex.meta()
    meta["boxes"] = ex.clip.boxes.round(2).tolist()
    meta["head_boxes"] = ex.clip.head_boxes.round(2).tolist()
    meta["visibility"] = ex.clip.visibility.round(3).tolist()
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


@world_app.command("train-judge")
def world_train_judge(
    part: str = typer.Option("all", help=f"all or one of {', '.join(PARTS)}"),
    seed: int = typer.Option(0),
    folder: Optional[Path] = typer.Option(None, help="where to write the parts (default: assets/judge)"),
) -> None:
    """Train the judge's parts (CPU, minutes each) and write them with their cards."""
    import torch

    from idcrafter.judge import action, detector, embedders, quality

    trainers = {"detector": detector.train_detector, "face": embedders.train_face,
                "subject": embedders.train_subject, "action": action.train_action,
                "quality": quality.train_quality}
    names = PARTS if part == "all" else [part]
    for n in names:
        if n not in trainers:
            raise InputError(f"unknown part {n!r}: choose all or one of {', '.join(PARTS)}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for n in names:
        typer.echo(f"== {n}")
        figures = trainers[n](seed=seed, folder=folder)
        _print_metrics({k: v for k, v in figures.items() if not isinstance(v, dict)}, False)


@world_app.command("validate-judge")
def world_validate_judge(
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    clips: int = typer.Option(120, help="held-out clips scored end to end"),
    seed: int = typer.Option(1234),
    folder: Optional[Path] = typer.Option(None, help="judge parts folder (default: assets/judge)"),
) -> None:
    """Validation figures of the judge on held-out identities, with their targets."""
    from idcrafter.judge.judge import Judge
    from idcrafter.judge.validate import TARGETS, check_targets, validate_judge

    fig = validate_judge(Judge.load(folder), num_clips=clips, seed=seed, progress=not as_json)
    ok = check_targets(fig)
    if as_json:
        typer.echo(json.dumps({**fig, "targets_met": ok}, indent=2))
        return
    for k, v in fig.items():
        mark = "" if k not in ok else f"   target {TARGETS[k][0]} {TARGETS[k][1]}: {'ok' if ok[k] else 'MISSED'}"
        typer.echo(f"{k:28s} {v:.4f}{mark}" if isinstance(v, float) else f"{k:28s} {v}")


@app.command("judge")
def judge_cmd(
    video: Path = typer.Option(..., help="the clip to score (mp4)"),
    ref: list[Path] = typer.Option(..., help="one reference image per subject (repeat --ref)"),
    prompt: Optional[str] = typer.Option(None, help="the caption; needed for action_acc"),
    as_json: bool = typer.Option(False, "--json"),
    face_backend: str = typer.Option("sprites", help="sprites (SpriteWorld judge), dlib or insightface (real faces)"),
    face_weights: Optional[Path] = typer.Option(None, help="ONNX recognition model for --face-backend insightface"),
) -> None:
    """Score a clip against its references: face_sim, leakage, motion, actions, quality, total."""
    from idcrafter.utils.media import load_image, read_video

    refs = [load_image(p) for p in ref]
    if face_backend == "sprites":
        from idcrafter.judge.judge import Judge

        judge = Judge.load()
        frames = read_video(video)
        report = judge.score(frames, refs, prompt)
        out = report.as_dict() if as_json else report.metrics
    else:
        out = _judge_real_faces(read_video(video), refs, face_backend, face_weights)
    _print_metrics(out, as_json)


def _judge_real_faces(frames, refs, backend: str, weights: Optional[Path]) -> dict:
    """Real-video mode: per-subject face similarity and leakage with a real face model."""
    from idcrafter.judge.backends.real_faces import face_similarity_matrix
    from idcrafter.judge.backends.registry import build_face_detector, build_face_embedder
    from idcrafter.judge.metrics import motion_amplitude

    detector = build_face_detector("dlib")
    embedder = build_face_embedder(backend, str(weights) if weights else None)
    res = face_similarity_matrix(frames, refs, detector, embedder, max_faces=len(refs))
    return {"face_sim_mean": res.mean, "face_sim_min": res.min,
            "leakage": float(sum(res.leakage) / len(res.leakage)),
            "motion_px_per_frame": motion_amplitude(frames), "per_subject": res.per_subject}


@app.command("generate")
def generate(
    model: Path = typer.Option(..., help="a pipeline folder (IDCrafterPipeline.save_pretrained)"),
    ref: list[Path] = typer.Option(..., help="one reference image per subject (repeat --ref)"),
    prompt: str = typer.Option(..., help="the prompt"),
    out: Path = typer.Option(Path("outputs/generate/out.mp4"), help="output mp4; a contact sheet is written beside it"),
    steps: int = typer.Option(50), cfg: float = typer.Option(2.5), seed: int = typer.Option(0),
    frames: Optional[int] = typer.Option(None), height: Optional[int] = typer.Option(None),
    width: Optional[int] = typer.Option(None),
) -> None:
    """Generate a video from a prompt and reference images with a saved pipeline."""
    import torch

    from idcrafter.encoders.references import prepare_reference
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.utils.media import contact_sheet, save_image, write_mp4

    if not (model / "model_index.json").is_file():
        raise InputError(f"{model} is not a pipeline folder (no model_index.json): pass the folder written "
                         f"by IDCrafterPipeline.save_pretrained, e.g. assets/checkpoints/sprites-sft")
    pipe = IDCrafterPipeline.from_pretrained(str(model))
    refs = [prepare_reference(p, pipe.config.reference_size) for p in ref]
    video = pipe(prompt, refs, height=height, width=width, num_frames=frames, num_inference_steps=steps,
                 guidance_scale=cfg, generator=torch.Generator().manual_seed(seed)).frames[0]
    frames_u8 = (video * 255 + 0.5).clip(0, 255).astype("uint8")  # (F, H, W, 3)
    write_mp4(out, frames_u8)
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

    if not 2 <= ref_latent <= 32 or ref_latent % 2:
        raise InputError(f"--ref-latent must be even and in 2..32 (the bench preset takes 256 tokens), got {ref_latent}")
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
) -> None:
    """Generate held-out SpriteWorld casts and judge them beside the ground truth's own figures."""
    from idcrafter.heldout import HeldoutConfig, evaluate_heldout, metrics_table
    from idcrafter.pipeline import IDCrafterPipeline

    if not (model / "model_index.json").is_file():
        raise InputError(f"{model} is not a pipeline folder (no model_index.json)")
    held = HeldoutConfig(n=n, seed=seed, steps=steps, guidance=cfg, guide_references=guide_references)
    result = evaluate_heldout(IDCrafterPipeline.from_pretrained(str(model)), held, out_dir=out)
    typer.echo(json.dumps({k: result[k] for k in ("generated", "ground_truth")}, indent=2) if as_json
               else metrics_table(result))
    typer.echo(f"wrote {out}/heldout.json", err=True)


@app.command("demo")
def demo(out: Path = typer.Option(Path("outputs/demo")), seed: int = typer.Option(7),
         subjects: int = typer.Option(3)) -> None:
    """The main job on the embedded default (see README)."""
    from idcrafter.demo import run_demo

    run_demo(out, seed=seed, subjects=subjects)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
