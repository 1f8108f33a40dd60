"""Shipping a real run: the wan2.1 recipe trained on real clips of a JSONL manifest (a tiny Wan2.1
folder of the real classes, a tiny Qwen2.5-VL), exported with a card of its own data and command,
real-face evaluation on the held-out manifest (or skipped with the reason), frozen components
linked, and the reference gap's subject figures defined on real clips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from test_build_wan import make_wan_folder


def write_manifest(folder, name: str, seeds: list[int], boxes: bool) -> str:
    from idcrafter.utils.media import save_image, write_mp4
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    lines = []
    for s in seeds:
        ex = make_example(s, 0, "heldout", WorldConfig(frames=9), num_subjects=2)
        write_mp4(folder / f"clip{s}.mp4", ex.clip.frames)  # 48 px, written at 192 px
        refs = []
        for k, r in enumerate(ex.refs):
            save_image(folder / f"ref{s}_{k}.png", r)
            refs.append(f"ref{s}_{k}.png")
        item = {"video": f"clip{s}.mp4", "references": refs, "caption": ex.caption}
        if boxes:  # the subjects' extent over the clip, in pixels of the 192 px video
            b = ex.clip.boxes  # (T, K, 4) in 48 px frame coordinates
            item["boxes"] = [[float(b[:, k, 0].min() * 4), float(b[:, k, 1].min() * 4),
                              float(b[:, k, 2].max() * 4), float(b[:, k, 3].max() * 4)] for k in range(b.shape[1])]
        lines.append(json.dumps(item))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_face_manifest(folder, name: str) -> str:
    """A held-out manifest of one real face (scikit-image's astronaut photo): a clip of the photo
    drifting by a few pixels, the photo as the reference, the face's box."""
    from skimage import data

    from idcrafter.utils.media import save_image, write_mp4

    crop = data.astronaut()[0:260, 90:350]  # (260, 260, 3), the face at x 85..176, y 76..167
    write_mp4(folder / "face.mp4", np.stack([np.roll(crop, 2 * t, axis=1) for t in range(9)]), fps=16)
    save_image(folder / "face_ref.png", crop)
    item = {"video": "face.mp4", "references": ["face_ref.png"], "caption": "an astronaut smiles at the camera",
            "boxes": [[85.0, 76.0, 192.0, 167.0]]}
    (folder / name).write_text(json.dumps(item) + "\n")
    return str(folder / name)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from idcrafter.config import apply_overrides
    from idcrafter.encoders.vlm import VLMGrounder
    from idcrafter.recipes import recipe
    from idcrafter.train.sft import run_sft

    root = tmp_path_factory.mktemp("real")
    wan = make_wan_folder(root / "Wan2.1-T2V-tiny-Diffusers")
    VLMGrounder.tiny(64).save_pretrained(root / "qwen")
    data = root / "data"
    data.mkdir()
    train = write_manifest(data, "train.jsonl", [0, 1], boxes=False)
    heldout = write_face_manifest(data, "heldout.jsonl")
    size = dict(frames=5, height=128, width=128)  # faces of 60 px: dlib's detector finds them
    over = [f"model.wan_path={wan}", f"model.vlm_path={root / 'qwen'}", "model.preset=debug",
            'model.preset_overrides={"text_mode": "t5+vlm"}', "model.text_max_length=32",
            "model.reference_size=128", "data.ref_size=128", f"data.path={train}", f"eval.path={heldout}",
            "train.steps=2", "checkpoint.every=2", "eval.every=2", "eval.sample_every=0", "log.tensorboard=false",
            "log.progress=false", "data.prefetch=0", *[f"{s}.{k}={v}" for s in ("model", "data") for k, v in size.items()]]
    cfg = apply_overrides(recipe("wan2.1-1.3b"), over)
    run_sft(cfg, root / "run")
    return root, cfg


def test_reference_gap_subject_figures_are_defined_on_real_clips(real_run):
    root, _ = real_run
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "ref_gap_subject/t0.6" in r]
    assert evals and all(math.isfinite(r["ref_gap_subject/t0.6"]) for r in evals)
    # the held-out manifest gives boxes: the subject figures are measured on subject cells only
    assert all(r["x0_err_subject/t0.6"] != r["x0_err/t0.6"] for r in evals)


def test_manifest_boxes_become_the_subject_mask(tmp_path):
    from idcrafter.train.config import DataConfig
    from idcrafter.train.data import ManifestSource

    path = write_manifest(tmp_path, "m.jsonl", [3], boxes=True)
    with_boxes = ManifestSource(DataConfig(source="manifest", path=path, frames=5, height=32, width=32,
                                           ref_size=32)).get(0)
    assert with_boxes.subject.shape == (5, 32, 32) and 0 < with_boxes.subject.mean() < 1
    item = json.loads(open(path).read())
    hand = np.zeros((32, 32), bool)  # the 192 px video's boxes on the 32 px frames: a factor 6
    for x0, y0, x1, y1 in item["boxes"]:
        hand[round(y0 / 6):round(y1 / 6), round(x0 / 6):round(x1 / 6)] = True
        assert with_boxes.subject[0, int((y0 + y1) / 12), int((x0 + x1) / 12)]  # each box's centre
    assert (with_boxes.subject[0] != hand).mean() < 0.05  # the same cells up to the resize's edge pixels
    assert (with_boxes.subject == with_boxes.subject[:1]).all()  # one extent for the whole clip
    bare = write_manifest(tmp_path, "n.jsonl", [3], boxes=False)
    assert ManifestSource(DataConfig(source="manifest", path=bare, frames=5, height=32, width=32,
                                     ref_size=32)).get(0).subject is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**item, "boxes": [[5, 5, 1, 1]]}) + "\n")
    from idcrafter.errors import InputError

    with pytest.raises(InputError, match="boxes must be"):
        ManifestSource(DataConfig(source="manifest", path=str(bad)))


def test_export_of_a_real_run_states_its_data_and_links_frozen_parts(real_run, tmp_path):
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.train.export import export_run

    root, cfg = real_run
    out = tmp_path / "shipped"
    res = export_run(root / "run", out, n=1, steps=1, progress=False)
    assert res["kind"] == "manifest" and res["config"]["n"] == 1 and res["config"]["scored"] == 1
    assert set(res["generated"]) == {"face_sim_mean", "face_sim_min", "leakage", "motion_px_per_frame"}
    assert res["ground_truth"]["face_sim_mean"] > 0.8  # the real clip of the reference's face
    assert res["generated"]["face_sim_mean"] < res["ground_truth"]["face_sim_mean"]  # an untrained model
    card = (out / "README.md").read_text()
    for needle in ("--recipe wan2.1-1.3b", f"'data.path={cfg.data.path}'", "real clips of the manifest",
                   "fine-tuned on the CPU from the Wan2.1 weights", "LoRA r32", "Held-out evaluation on real clips",
                   "| face_sim_mean |", "## Linked components", "Steps: 2 of 2", "1 of 1 scored", "`dlib`"):
        assert needle in card, needle
    assert "trained on a CPU" not in card and "SpriteWorld rendered" not in card
    for name in ("vae", "text_encoder", "vlm"):
        assert (out / name).is_symlink(), name  # referenced, not copied
    assert not (out / "transformer").is_symlink()
    pipe = IDCrafterPipeline.from_pretrained(str(out))
    assert pipe.transformer.config.text_mode == "t5+vlm" and not any(".lora_" in k for k in pipe.transformer.state_dict())
    saved = json.loads((out / "heldout" / "heldout.json").read_text())
    assert saved["kind"] == "manifest" and len(saved["cases"]) == 1


def test_export_without_held_out_data_says_why(real_run, tmp_path):
    from idcrafter.config import load_config, save_config
    from idcrafter.train.config import Config
    from idcrafter.train.export import export_run
    import shutil

    root, _ = real_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run, symlinks=True)
    cfg = load_config(Config, run / "config.json")
    cfg.eval.path = str(tmp_path / "nowhere.jsonl")
    save_config(cfg, run / "config.json")
    res = export_run(run, tmp_path / "a", n=1, steps=1, progress=False)
    assert res["kind"] == "skipped"
    card = (tmp_path / "a" / "README.md").read_text()
    assert "Skipped: the held-out manifest" in card and "nowhere.jsonl" in card
    res = export_run(run, tmp_path / "b", n=1, steps=1, progress=False, evaluate=False)
    assert "Skipped: skipped on request" in (tmp_path / "b" / "README.md").read_text()
    assert np.isnan(res.get("generated", {}).get("face_sim_mean", float("nan")))


def test_subject_error_by_hand():
    import torch

    from idcrafter.train.evaluation import _subject_error

    err = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(1, 1, 1, 2, 2)
    cells = torch.tensor([1.0, 0.0, 0.5, 0.0]).view(1, 1, 1, 2, 2)
    assert _subject_error(err, cells) == pytest.approx((1 * 1 + 0.5 * 5) / 1.5)
    assert _subject_error(err, None) == pytest.approx(4.0)  # no masks (real clips without boxes): every cell
