"""`idcrafter eval` (the runner; `idcrafter eval heldout` stays as a sub-command) and
`idcrafter compare`. Registered in `idcrafter.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from idcrafter.errors import InputError

eval_app = typer.Typer(help="Evaluate a generator (or any model's videos) on a benchmark; `eval heldout`: "
                            "the quick held-out SpriteWorld check.", invoke_without_command=True,
                       no_args_is_help=False)


@eval_app.callback(invoke_without_command=True)
def eval_main(
    ctx: typer.Context,
    benchmark: Optional[str] = typer.Option(None, help="sprites-heldout, or an OpenS2V-Eval JSON file"),
    model: Optional[Path] = typer.Option(None, help="a pipeline folder that generates every case"),
    videos: Optional[Path] = typer.Option(None, help="or: a folder of <key>.mp4 clips made by any model"),
    out: Optional[Path] = typer.Option(None, help="run folder (resumed when it holds this run)"),
    cases: Optional[int] = typer.Option(None, help="number of cases (sprites-heldout: default 16; JSON: a seeded "
                                                   "sample, default all)"),
    seed: int = typer.Option(0, help="benchmark seed (sprites-heldout casts, JSON sample, initial noise)"),
    steps: int = typer.Option(20, help="sampling steps (with --model)"),
    cfg: float = typer.Option(2.5, help="guidance scale (with --model)"),
    guide_references: bool = typer.Option(True, help="drop references from guidance's unconditional branch"),
    images: Optional[Path] = typer.Option(None, help="root of a JSON's img_paths (default: the JSON's folder)"),
    domain: Optional[str] = typer.Option(None, help="open or human (default: from the JSON's file name)"),
    clip: Optional[Path] = typer.Option(None, help="CLIP ViT-L/14 + LAION aesthetic MLP folder (Aesthetics)"),
    face_detector: Optional[Path] = typer.Option(None, help="insightface detection model folder (FaceSim-Cur)"),
    curricular: Optional[Path] = typer.Option(None, help="CurricularFace IR-101 weights (FaceSim-Cur)"),
    gme: Optional[Path] = typer.Option(None, help="gme-Qwen2-VL folder (GmeScore, NexusScore)"),
    nexus_detector: Optional[Path] = typer.Option(None, help="OWLv2 folder: NexusScore's detector (YOLO-World in "
                                                              "the published metric, not shipped)"),
    quality_vlm: Optional[Path] = typer.Option(None, help="Qwen-VL folder rating MotionSmoothness windows"),
    natural_vlm: Optional[Path] = typer.Option(None, help="Qwen2.5-VL folder judging NaturalScore"),
    natural_url: Optional[str] = typer.Option(None, help="or an OpenAI-compatible endpoint (…/v1) for NaturalScore"),
    natural_model: Optional[str] = typer.Option(None, help="the endpoint's model name"),
    natural_prompt: Optional[Path] = typer.Option(None, help="a text file with the judge's rubric"),
    face_backend: str = typer.Option("dlib", help="per-subject identity (ours): dlib or insightface"),
    face_weights: Optional[Path] = typer.Option(None, help="ONNX model for --face-backend insightface"),
    judge: Optional[Path] = typer.Option(None, help="SpriteWorld judge parts folder (default assets/judge)"),
    device: str = typer.Option("cpu"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    inputs_only: bool = typer.Option(False, help="only write the cases' prompts and references (OpenS2V JSON) "
                                                 "to --out, for another model to generate <key>.mp4 from"),
) -> None:
    """Run a benchmark: results.json / .csv, report.md / .html with figures and contact sheets."""
    if ctx.invoked_subcommand is not None:
        if benchmark is not None:
            raise InputError("--benchmark is an option of `idcrafter eval` itself: put it after `eval`, not after "
                             f"`{ctx.invoked_subcommand}`, or drop the sub-command")
        return
    if benchmark is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    if out is None:
        raise InputError("--out DIR is required: the folder that receives results.json and the report")
    from idcrafter.eval.benchmark import export_inputs, resolve_benchmark
    from idcrafter.eval.runner import RunSpec, run

    if inputs_only:
        path = export_inputs(resolve_benchmark(benchmark, images, domain).cases(cases, seed), out)
        typer.echo(f"wrote {path} and the references under {out}/Images")
        return
    from idcrafter.eval.suite import EvalConfig
    from idcrafter.generation import GenerationSettings

    prompt = None
    if natural_prompt is not None:
        if not natural_prompt.is_file():
            raise InputError(f"--natural-prompt {natural_prompt}: no such file")
        prompt = natural_prompt.read_text(encoding="utf-8").strip()
    config = EvalConfig(device=device, clip=clip, face_detector=face_detector, curricular=curricular, gme=gme,
                        nexus_detector=nexus_detector,
                        quality_vlm=quality_vlm, natural_vlm=natural_vlm, natural_url=natural_url,
                        natural_model=natural_model, natural_prompt=prompt, face_backend=face_backend,
                        face_weights=face_weights, judge=judge)
    spec = RunSpec(resolve_benchmark(benchmark, images, domain), out, model, videos, cases, seed,
                   GenerationSettings(steps=steps, guidance=cfg, guide_references=guide_references), config)
    results = run(spec, progress=not quiet)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"wrote {out}/results.json, results.csv, report.md, report.html", err=True)
    if results["cases_failed"]:
        typer.echo(f"{len(results['cases_failed'])} case(s) failed: see {out}/results.csv", err=True)


def compare_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run folders written by `idcrafter eval --out`"),
    out: Optional[Path] = typer.Option(None, help="also write the table to this markdown file"),
) -> None:
    """Runs of `idcrafter eval` side by side, with deltas against the first."""
    from idcrafter.eval.compare import compare_markdown, load_results
    from idcrafter.utils.io import atomic_write_text

    runs = [load_results(d) for d in run_dirs]
    text = compare_markdown(run_dirs, runs)
    typer.echo(text)
    if out is not None:
        atomic_write_text(out, text)
