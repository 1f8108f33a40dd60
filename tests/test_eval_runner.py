"""`idcrafter eval`: the one generate-then-score loop, the resumable runner (`--videos` and
`--model` modes), corrupt / missing videos reported per case, reports, `compare`, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from idcrafter.errors import InputError
from idcrafter.eval import runner as R
from idcrafter.eval.benchmark import resolve_benchmark
from idcrafter.eval.suite import EvalConfig, Metric, Suite
from idcrafter.generation import Case, GenerationSettings, generate, to_uint8
from tiny_models import astronaut_video, clip_folder


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "idcrafter.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------- the loop
def test_to_uint8_rounds_half_up_and_permutes_tensors():
    v = np.array([0.0, 0.5 / 255, 0.49 / 255, 1.0, 1.7, -0.2], np.float32).reshape(1, 1, 2, 3)
    assert to_uint8(v).ravel().tolist() == [0, 1, 0, 255, 255, 0]
    t = torch.zeros(2, 3, 4, 5, 6)
    t[:, 0] = 1.0  # red channel
    out = to_uint8(t)
    assert out.shape == (2, 4, 5, 6, 3) and out[..., 0].min() == 255 and out[..., 1].max() == 0


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    from idcrafter.encoders.text import TextEncoder
    from idcrafter.models.codecs import PixelCodec
    from idcrafter.pipeline import build_pipeline

    torch.manual_seed(0)
    p = build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=64))
    with torch.no_grad():
        for blk in p.transformer.blocks:
            blk.subject_branch.gate.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("pipe") / "debug"
    p.save_pretrained(out)
    return out


def test_generation_does_not_depend_on_batching(pipe_dir):
    from idcrafter.world.dataset import make_example

    pipe = R.load_generator(pipe_dir)
    exs = [make_example(1, i, "heldout", num_subjects=1 + i) for i in range(3)]
    cases = [Case(f"c{i}", e.caption, list(e.refs), seed=10 + i, size=(3, 48, 48)) for i, e in enumerate(exs)]
    one = generate(pipe, cases, GenerationSettings(steps=2))
    three = generate(pipe, cases, GenerationSettings(steps=2, batch_size=3))
    assert len(one) == 3 and one[0].shape == (3, 48, 48, 3) and one[0].dtype == np.uint8
    for a, b in zip(one, three):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # same noise per case; float noise only
    direct = pipe(exs[0].caption, list(exs[0].refs), height=48, width=48, num_frames=3, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(10)).frames[0]
    assert np.array_equal(to_uint8(direct), one[0])  # the loop samples exactly what the pipeline does


def test_stochastic_sampling_is_seeded_per_case_and_eta_zero_is_the_ode(pipe_dir):
    """The held-out loop can sample as RL rollouts do (CPS / Flow-GRPO SDE): the step noise is
    seeded by each case, so a clip does not depend on its batch; CPS at eta 0 is exactly Euler."""
    from idcrafter import sampling
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.world.dataset import make_example

    pipe = R.load_generator(pipe_dir)
    exs = [make_example(2, i, "heldout", num_subjects=1 + i) for i in range(2)]
    cases = [Case(f"c{i}", e.caption, list(e.refs), seed=5 + i, size=(3, 48, 48)) for i, e in enumerate(exs)]
    ode = generate(pipe, cases, GenerationSettings(steps=4))
    eta0 = generate(pipe, cases, GenerationSettings(steps=4, sampler="cps", noise_level=0.0))
    for a, b in zip(ode, eta0):
        assert np.array_equal(a, b)
    one = generate(pipe, cases, GenerationSettings(steps=4, sampler="cps"))
    two = generate(pipe, cases, GenerationSettings(steps=4, sampler="cps", batch_size=2))
    for a, b, o in zip(one, two, ode):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # the same step noise per case
        assert np.abs(a.astype(int) - o.astype(int)).max() > 2  # and it is noise, not Euler
    flow = generate(pipe, cases[:1], GenerationSettings(steps=4, sampler="flow"))
    assert np.abs(flow[0].astype(int) - one[0].astype(int)).max() > 2
    assert sampling.sampler_kwargs("cps", 0.5, None)["noise_level"] == 0.5
    for bad in (dict(sampler="sde"), dict(sampler="ode", noise_level=0.5), dict(sampler="cps", noise_level=1.5),
                dict(sampler="flow", noise_level=float("nan"))):
        with pytest.raises(InputError):
            GenerationSettings(**bad)
    with pytest.raises(InputError):
        IDCrafterPipeline.__call__(pipe, "a", [exs[0].refs[0]], sampler="euler")


# ---------------------------------------------------------------------- OpenS2V, --videos mode
def _img(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture()
def opens2v(tmp_path):
    from idcrafter.utils.media import write_mp4

    root = tmp_path / "OpenS2V-Eval"
    face = astronaut_video(1)[0]
    other = np.ascontiguousarray(np.clip(face[:, ::-1].astype(int) + 30, 0, 255).astype(np.uint8))
    rng = np.random.default_rng(0)
    cup = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _img(root / "Images/face/woman/1.png", face)
    _img(root / "Images/human/man/2.png", other)
    _img(root / "Images/obj/cup/1.png", cup)
    bench = {
        "singleface_1": {"img_paths": ["Images/face/woman/1.png"], "prompt": "a woman", "class_label": ["Woman"]},
        "multihuman_1": {"img_paths": ["Images/face/woman/1.png", "Images/human/man/2.png"],
                         "prompt": "a man and a woman", "class_label": ["Woman", "Man"]},
        "singleobj_1": {"img_paths": ["Images/obj/cup/1.png"], "prompt": "a cup", "class_label": ["Cup"]},
        "multiobject_1": {"img_paths": ["Images/obj/cup/1.png"], "prompt": "cups", "class_label": ["Cup"]},
        "humanobj_1": {"img_paths": ["Images/face/woman/1.png"], "prompt": "a woman", "class_label": ["Woman"]},
        "singlehuman_1": {"img_paths": ["Images/nowhere/man/9.png"], "prompt": "a man", "class_label": ["Man"]},
    }
    (root / "Open-Domain_Eval.json").write_text(json.dumps(bench))
    vids = tmp_path / "videos"
    vids.mkdir()
    moving = astronaut_video(4, shift=2)
    write_mp4(vids / "singleface_1.mp4", moving, upscale=1)
    write_mp4(vids / "multihuman_1.mp4", np.concatenate([moving, np.stack([other] * 4)], axis=2), upscale=1)
    write_mp4(vids / "singleobj_1.mp4", np.stack([np.roll(cup, t, 1) for t in range(4)]), upscale=1)
    (vids / "humanobj_1.mp4").write_bytes(b"\x00not a video")
    write_mp4(vids / "singlehuman_1.mp4", moving, upscale=1)
    return root / "Open-Domain_Eval.json", vids, tmp_path


def test_videos_mode_scores_reports_and_resumes(opens2v, monkeypatch):
    bench_json, vids, tmp = opens2v
    out = tmp / "run"
    cfg = EvalConfig(clip=clip_folder(tmp / "clip"))
    spec = R.RunSpec(resolve_benchmark(str(bench_json)), out, videos=vids, config=cfg)
    res = R.run(spec, progress=False)
    failed = {f["key"]: f["error"] for f in res["cases_failed"]}
    assert set(failed) == {"multiobject_1", "humanobj_1", "singlehuman_1"}  # the others are still scored
    assert "video missing" in failed["multiobject_1"] and "cannot decode" in failed["humanobj_1"]
    assert "reference image not found" in failed["singlehuman_1"]
    assert res["cases_done"] == 3
    cases = {c["key"]: c for c in res["cases"]}
    assert cases["singleobj_1"]["metrics"]["motion_amplitude"] >= 0
    assert 1 <= cases["singleface_1"]["metrics"]["aesthetics"] <= 10
    multi = cases["multihuman_1"]["metrics"]
    assert 0.9 < multi["subjects/face_sim_mean"] <= 1
    assert multi["subjects/face_sim_min"] <= multi["subjects/face_sim_mean"]
    assert cases["singleface_1"]["metrics"]["subjects/face_sim_mean"] is None  # ours: several people only
    total = res["opens2v"]
    assert total["includes"] == ["aesthetics", "motion_amplitude"] and not total["complete"]
    assert "insightface" in total["missing"]["face_sim"] and "YOLO-World" in total["missing"]["nexus"]
    for name in ("results.json", "results.csv", "report.md", "report.html", "figures/metrics.png",
                 "figures/by_subjects.png"):
        assert (out / name).is_file(), name
    assert list((out / "sheets").glob("best_*.png")) and list((out / "sheets").glob("worst_*.png"))
    report = (out / "report.md").read_text()
    assert "Missing metric `gme`" in report and "humanobj_1" in report and "renormalised" in report
    assert (out / "results.csv").read_text().count("\n") == 7  # header + 6 cases

    calls = []
    real = R.score_case
    monkeypatch.setattr(R, "score_case", lambda c, *a, **k: calls.append(c.key) or real(c, *a, **k))
    R.run(spec, progress=False)
    assert sorted(calls) == ["humanobj_1", "multiobject_1", "singlehuman_1"]  # finished cases skipped, failed retried
    from idcrafter.utils.media import write_mp4

    write_mp4(vids / "multiobject_1.mp4", astronaut_video(3), upscale=1)
    calls.clear()
    res = R.run(spec, progress=False)
    assert "multiobject_1" in calls and res["cases_done"] == 4
    with pytest.raises(InputError, match="other settings"):
        R.run(R.RunSpec(resolve_benchmark(str(bench_json)), out, videos=vids, seed=5, config=cfg), progress=False)
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not made by"):
        R.run(R.RunSpec(resolve_benchmark(str(bench_json)), foreign, videos=vids), progress=False)
    with pytest.raises(InputError, match="exactly one"):
        R.run(R.RunSpec(resolve_benchmark(str(bench_json)), tmp / "x"), progress=False)


# ---------------------------------------------------------------------- --model mode, interrupted
def test_model_mode_generates_once_and_survives_an_interrupt(pipe_dir, tmp_path, monkeypatch):
    import idcrafter.generation as G
    from idcrafter.eval import benchmark as B

    seen = []

    def flaky(frames, case):
        seen.append(case.key)
        if case.key == "heldout_0001" and seen.count("heldout_0001") == 1:
            raise KeyboardInterrupt  # the user stops the run while case 1 is being scored
        return {"mean_pixel": float(frames.mean())}

    monkeypatch.setattr(B.Benchmark, "suite", lambda self, cfg: Suite([Metric("mean_pixel", flaky)]))
    generated = []
    real_batch = G.generate_batch
    monkeypatch.setattr(G, "generate_batch", lambda p, cases, s, *a: generated.extend(c.key for c in cases)
                        or real_batch(p, cases, s, *a))
    bench = resolve_benchmark("sprites-heldout", world=dict(frames=3, height=48, width=48, ref_size=32))
    spec = R.RunSpec(bench, tmp_path / "run", model=pipe_dir, cases=3, seed=1, settings=GenerationSettings(steps=2))
    with pytest.raises(KeyboardInterrupt):
        R.run(spec, progress=False)
    assert generated == ["heldout_0000", "heldout_0001"]
    assert (spec.out / "cases" / "heldout_0000.json").is_file()
    assert (spec.out / "videos" / "heldout_0001.mp4").is_file()
    assert not (spec.out / "cases" / "heldout_0001.json").exists()
    generated.clear()
    res = R.run(spec, progress=False)
    assert generated == ["heldout_0002"]  # case 0 skipped, case 1 scored from its mp4, only case 2 generated
    assert res["cases_done"] == 3 and [c["subjects"] for c in res["cases"]] == [1, 2, 3]
    assert all(c["metrics"]["mean_pixel"] > 0 for c in res["cases"])
    # another model's view: export the inputs, "generate" (here: copy our clips), score with --videos
    from idcrafter.eval.benchmark import export_inputs
    from idcrafter.eval.opens2v import load_benchmark

    index = export_inputs(bench.cases(3, seed=1), tmp_path / "inputs")
    loaded = load_benchmark(index)
    assert [c.key for c in loaded] == ["heldout_0000", "heldout_0001", "heldout_0002"]
    assert all((tmp_path / "inputs" / p).is_file() for c in loaded for p in c.img_paths)
    other = R.run(R.RunSpec(bench, tmp_path / "scored", videos=spec.out / "videos", cases=3, seed=1), progress=False)
    assert [c["metrics"] for c in other["cases"]] == [c["metrics"] for c in res["cases"]]


def test_sprites_casts_are_rendered_at_the_generators_own_size(tmp_path, monkeypatch):
    """A model trained on 5-frame clips with 24 px references is asked for 5 frames and gets 24 px
    references (the casts rendered at its `model_index.json` size, as `eval heldout` does), the
    ground truth it is scored against has 5 frames, and the run's identity names that world; an
    explicit world and the `--videos` default are left alone."""
    from idcrafter.encoders.text import TextEncoder
    from idcrafter.eval import benchmark as B
    from idcrafter.models.codecs import PixelCodec
    from idcrafter.pipeline import build_pipeline

    torch.manual_seed(0)
    folder = tmp_path / "five"
    build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=64), default_frames=5,
                   reference_size=24).save_pretrained(folder)
    assert B.native_world(folder) == dict(frames=5, height=48, width=48, ref_size=24)
    assert B.native_world(tmp_path / "nothing") == B.DEFAULT_WORLD
    wan = tmp_path / "wan"
    wan.mkdir()
    (wan / "model_index.json").write_text(json.dumps({"default_frames": 81, "default_height": 480,
                                                      "default_width": 832, "reference_size": 512}))
    assert B.native_world(wan) == dict(frames=81, height=48, width=48, ref_size=512)  # the judge reads square clips
    seen = []

    def truth_frames(frames, case):
        seen.append((frames.shape, case.ground_truth.shape, case.references[0].shape))
        return {"frames": float(len(frames))}

    monkeypatch.setattr(B.Benchmark, "suite", lambda self, cfg: Suite([Metric("frames", truth_frames)]))
    bench = resolve_benchmark("sprites-heldout")
    res = R.run(R.RunSpec(bench, tmp_path / "run", model=folder, cases=2, seed=1,
                          settings=GenerationSettings(steps=1)), progress=False)
    assert [c["metrics"]["frames"] for c in res["cases"]] == [5.0, 5.0]
    assert {(v, g, r) for v, g, r in seen} == {((5, 48, 48, 3), (5, 48, 48, 3), (24, 24, 3))}
    ident = json.loads((tmp_path / "run" / "run.json").read_text())["identity"]
    assert ident["benchmark"]["world"] == dict(frames=5, height=48, width=48, ref_size=24)
    assert bench.world is None and bench.world_size == B.DEFAULT_WORLD  # the caller's benchmark is untouched
    fixed = resolve_benchmark("sprites-heldout", world=dict(frames=3, height=48, width=48, ref_size=32))
    assert fixed.for_model(folder) is fixed


def test_sprites_suite_scores_with_judge_audit_and_truth(tmp_path):
    from idcrafter.eval.suite import sprites_suite

    bench = resolve_benchmark("sprites-heldout")
    case = bench.cases(2, seed=3)[1]
    suite = sprites_suite(EvalConfig())
    assert not suite.missing, suite.missing
    out = {}
    for m in suite.metrics:
        out.update(m.fn(case.ground_truth, case))
    assert out["judge/total"] == pytest.approx(out["truth/total"])  # the truth scored as a generated clip
    assert 0 <= out["audit/attr_acc_mean"] <= 1 and "audit/total" in out


# ---------------------------------------------------------------------- compare and the CLI
def test_paired_delta_by_hand_and_in_the_table(tmp_path):
    from idcrafter.eval.compare import case_values, compare_markdown, paired_delta

    # differences 0.1, 0.3, 0.2 (case d only in one run): mean 0.2, std 0.1, se 0.1 / sqrt(3)
    got = paired_delta({"a": 0.5, "b": 0.4, "c": 0.1, "d": 9.0}, {"a": 0.6, "b": 0.7, "c": 0.3})
    assert got[0] == pytest.approx(0.2) and got[1] == pytest.approx(0.1 / 3 ** 0.5) and got[2] == 3
    assert paired_delta({"a": 1.0}, {"a": 2.0}) is None
    run = {"cases": [{"key": "a", "status": "done", "metrics": {"m": 0.5}},
                     {"key": "b", "status": "failed", "metrics": {"m": 0.1}},
                     {"key": "c", "status": "done", "metrics": {"m": float("nan")}}]}
    assert case_values(run, "m") == {"a": 0.5}

    def result(vals):
        return {"benchmark": {"name": "b"}, "identity": {"cases": 3, "seed": 0}, "cases_done": 3, "cases_total": 3,
                "averages": {"judge/leakage": sum(vals) / 3},
                "cases": [{"key": k, "status": "done", "metrics": {"judge/leakage": v}} for k, v in zip("abc", vals)]}

    md = compare_markdown(["x", "y"], [result([0.5, 0.4, 0.1]), result([0.6, 0.7, 0.3])])
    assert f"(+0.2000 ± {0.1 / 3 ** 0.5:.4f} worse)" in md and "standard error of the paired" in md


def test_compare_table_with_deltas(tmp_path):
    from idcrafter.eval.compare import compare_markdown, load_results

    for name, face, leak in (("ours", 0.6, 0.1), ("peer", 0.5, 0.2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({
            "benchmark": {"name": "b"}, "identity": {"cases": 4, "seed": 0}, "cases_done": 4, "cases_total": 4,
            "averages": {"judge/face_sim_mean": face, "judge/leakage": leak}}))
    runs = [load_results(tmp_path / n) for n in ("ours", "peer")]
    md = compare_markdown([tmp_path / "ours", tmp_path / "peer"], runs)
    assert "| judge/face_sim_mean | 0.6000 | 0.5000 (-0.1000 worse) |" in md
    assert "| judge/leakage | 0.1000 | 0.2000 (+0.1000 worse) |" in md and "Warning" not in md
    with pytest.raises(InputError, match="no results.json"):
        load_results(tmp_path)
    # the same casts at each generator's own length: a note, not the different-cases warning
    for name, frames in (("ours", 5), ("peer", 9)):
        r = json.loads((tmp_path / name / "results.json").read_text())
        r["benchmark"]["world"] = dict(frames=frames, height=48, width=48, ref_size=32)
        (tmp_path / name / "results.json").write_text(json.dumps(r))
    runs = [load_results(tmp_path / n) for n in ("ours", "peer")]
    md = compare_markdown([tmp_path / "ours", tmp_path / "peer"], runs)
    assert "Warning" not in md and "ours 5x48x48 (refs 32 px), peer 9x48x48" in md
    r = json.loads((tmp_path / "peer" / "results.json").read_text())
    r["benchmark"]["name"] = "other"
    (tmp_path / "peer" / "results.json").write_text(json.dumps(r))
    md = compare_markdown([tmp_path / "ours", tmp_path / "peer"], [load_results(tmp_path / n) for n in ("ours", "peer")])
    assert "Warning: these runs were not made on the same benchmark cases" in md


def test_cli_eval_help_errors_and_compare(opens2v, tmp_path):
    bench_json, vids, tmp = opens2v
    res = cli("eval")
    assert res.returncode == 0 and "--benchmark" in res.stdout and "heldout" in res.stdout
    res = cli("eval", "--benchmark", str(tmp / "nope.txt"), "--videos", str(vids), "--out", str(tmp / "o"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown benchmark" in res.stderr
    small = bench_json.with_name("Small.json")  # one good clip, one corrupt: the CLI's whole path, quickly
    full = json.loads(bench_json.read_text())
    small.write_text(json.dumps({k: full[k] for k in ("singleobj_1", "humanobj_1")}))
    res = cli("eval", "--benchmark", str(small), "--videos", str(vids), "--out", str(tmp / "cli"), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "1 case(s) failed" in res.stderr and (tmp / "cli" / "report.html").is_file()
    assert "| motion_amplitude |" in res.stdout
    res = cli("compare", str(tmp / "cli"), str(tmp / "cli"))
    assert res.returncode == 0 and "motion_amplitude" in res.stdout
    res = cli("compare", str(tmp_path / "none"))
    assert res.returncode == 2 and "no results.json" in res.stderr


def test_trainer_sample_video_goes_through_the_loop(tmp_path, monkeypatch):
    import idcrafter.generation as G
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train.sft import run_sft

    calls = []
    real = G.generate_and_score
    monkeypatch.setattr(G, "generate_and_score", lambda *a, **k: calls.append(a[1][0].key) or real(*a, **k))
    cfg = apply_overrides(recipe("debug"), ["train.steps=1", "eval.every=0", "eval.sample_every=1",
                                            "eval.sample_steps=2", "checkpoint.every=1"])
    run_sft(cfg, tmp_path / "run")
    assert calls == ["step_00000001"]
    assert (tmp_path / "run" / "samples" / "step_00000001.mp4").is_file()
    assert (tmp_path / "run" / "samples" / "step_00000001_sheet.png").is_file()
