"""Data curation: pure scores against hand computations, importers, engines, resume, trainer joint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from idcrafter.curation import filters as F
from idcrafter.curation import rle
from idcrafter.curation.config import from_dict, sprites_config
from idcrafter.curation.engine import curate, dedup, mix_quotas, shard_path
from idcrafter.curation.schema import read_rows, read_training_items
from idcrafter.errors import InputError

BG = (240, 240, 235)


# ----------------------------------------------------------------------------- pure functions

def test_rle_hand_example():
    # runs 5 zeros, 3 ones, 7 zeros, 2 ones; the 4th run is stored as 2 - 3 = -1 -> 'O'
    assert rle.counts_to_string([1, 2, 3]) == "123"
    assert rle.counts_to_string([5, 3, 7, 2]) == "537O"
    assert rle.string_to_counts("537O") == [5, 3, 7, 2]
    mask = rle.decode({"size": [17, 1], "counts": "537O"})[:, 0]
    assert mask.tolist() == [0] * 5 + [1] * 3 + [0] * 7 + [1] * 2
    # column-major: a (2, 3) mask whose first column is [0, 1]
    m = np.array([[0, 1, 1], [1, 0, 1]], bool)
    enc = rle.encode(m)
    assert rle.string_to_counts(enc["counts"]) == [1, 2, 1, 2]
    assert (rle.decode(enc) == m).all()
    rng = np.random.default_rng(0)
    big = rng.random((37, 23)) > 0.6
    assert (rle.decode(rle.encode(big)) == big).all()


def test_ncc_and_copy_paste_risk_by_hand():
    a = np.zeros((2, 2, 3), np.uint8)
    a[0, 0], a[1, 1] = 10, 30
    b = (a.astype(np.int32) * 2 + 5).astype(np.uint8)  # affine copy: NCC 1
    where = np.ones((2, 2), bool)
    assert F.ncc(a, b, where) == pytest.approx(1.0)
    assert F.ncc(a, 40 - a, where) == pytest.approx(-1.0)
    # x = [1, 0], y = [0, 1] over two pixels x 1 channel -> -1; with a third equal pixel: hand value
    x = np.array([[[1], [0], [1]]], np.uint8)
    y = np.array([[[0], [1], [1]]], np.uint8)
    # x - mean = [1/3, -2/3, 1/3], y - mean = [-2/3, 1/3, 1/3]: sum xy = -1/3, |x||y| = 2/3
    assert F.ncc(x, y, np.ones((1, 3), bool)) == pytest.approx(-0.5)
    ref = np.full((8, 8, 3), BG, np.uint8)
    ref[2:6, 3:5] = (200, 20, 20)
    ref[2:4, 3:5] = (20, 20, 200)
    other = np.full((8, 8, 3), BG, np.uint8)
    other[1:7, 2:6] = (20, 200, 20)
    assert F.copy_paste_risk(ref, [other, ref], BG) == pytest.approx(1.0)
    assert F.copy_paste_risk(ref, [other], BG) < 0.5
    assert F.copy_paste_risk(ref, [], BG) == 0.0


def test_phash_hamming_dedup_and_mixing():
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    h = F.phash(clip)
    assert len(h) == 16 and F.phash(clip.copy()) == h
    assert F.phash(np.clip(clip.astype(int) + 3, 0, 255).astype(np.uint8)) == h  # brightness-invariant
    assert F.hamming("00000000000000ff", "000000000000000f") == 4
    flip = lambda v, bits: f"{int(v, 16) ^ sum(1 << b for b in bits):016x}"  # noqa: E731
    a, b = "0123456789abcdef", "fedcba9876543210"
    hashes = [a, flip(a, [0, 17, 40]), b, None, flip(b, [1, 2, 3, 4, 5]), flip(a, [63, 62, 61, 60])]
    assert dedup(hashes, max_distance=4) == [False, True, False, False, False, True]
    assert dedup(hashes, max_distance=0) == [False] * 6
    # 10 real, 4 synthetic at weights 2:1 -> T = min(10 / (2/3), 4 / (1/3)) = 12 -> 8 real, 4 synthetic
    assert mix_quotas({"real": 10, "synthetic": 4, "captured": 0}, {"real": 2, "synthetic": 1, "captured": 5}) == \
        {"real": 8, "synthetic": 4, "captured": 0}
    assert mix_quotas({"real": 10, "synthetic": 4, "captured": 3}, {"real": 1, "synthetic": 0, "captured": 1}, total=4) == \
        {"real": 2, "synthetic": 0, "captured": 2}
    # a cap of 7 at 2:1 -> 4.67 and 2.33 rows: floors, so the proportions are never exceeded
    assert mix_quotas({"real": 10, "synthetic": 5}, {"real": 2, "synthetic": 1}, total=7) == {"real": 4, "synthetic": 2}


def test_face_quality_by_hand():
    face = np.zeros((6, 6, 3), np.uint8)
    face[:, ::2] = 200  # stripes: a strong Laplacian
    import cv2

    lap = cv2.Laplacian(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F).var()
    assert F.face_quality(face, 4, min_face_px=8, sharp_ref=lap * 2) == pytest.approx(0.5 * 0.5)
    assert F.face_quality(face, 16, min_face_px=8, sharp_ref=1.0) == pytest.approx(1.0)
    assert F.face_quality(np.zeros((6, 6, 3), np.uint8), 16, 8, 1.0) == 0.0


def test_the_documented_config_parses():
    import tomllib

    doc = (Path(__file__).parents[1] / "docs" / "curation.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = from_dict(tomllib.loads(block))
    assert [i.resolved_source() for i in cfg.inputs] == ["real", "synthetic", "captured"]
    assert cfg.mix.weights["synthetic"] == 0.3 and cfg.caption.backend == "openai"


def test_config_refuses_unknown_keys():
    with pytest.raises(InputError, match="filters.min_motoin"):
        from_dict({"inputs": [{"kind": "folder", "path": "x"}], "filters": {"min_motoin": 1}})
    with pytest.raises(InputError, match="kind"):
        from_dict({"inputs": [{"kind": "youtube", "path": "x"}]})
    with pytest.raises(InputError, match="no \\[\\[inputs\\]\\]"):
        from_dict({})


# ----------------------------------------------------------------------------- SpriteWorld end to end

@pytest.fixture(scope="module")
def sprite_runs(tmp_path_factory):
    from idcrafter.curation.ablation import make_pairs

    out = tmp_path_factory.mktemp("pairs")
    report = make_pairs(out, num=3, seed=3, progress=False)
    return out, report


def test_sprites_scene_split_matches_ground_truth(sprite_runs):
    out, _ = sprite_runs
    rows = read_rows(out / "curated" / "manifest.parquet")
    plan = {r["plan_index"] for r in rows}
    assert plan == set(range(3))
    for r in rows:
        scenes = json.loads(r["meta"])["sprites"]["scenes"]
        assert [r["clip_start"], r["clip_end"]] == [scenes[r["scene_index"]]["start"], scenes[r["scene_index"]]["end"]]
    assert sum(len(json.loads(r["meta"])["sprites"]["scenes"]) for r in rows if r["scene_index"] == 0) == len(rows)


def test_naive_refs_are_copies_curated_refs_are_not(sprite_runs):
    out, report = sprite_runs
    naive = {r["id"]: r for r in read_rows(out / "naive" / "manifest.parquet")}
    cur = {r["id"]: r for r in read_rows(out / "curated" / "manifest.parquet")}
    assert naive.keys() == cur.keys() and report["clips_in_both"] > 0
    for i in naive:
        assert naive[i]["kept"] == cur[i]["kept"]
        if not naive[i]["kept"]:
            continue
        assert naive[i]["copy_paste_risk"] > 0.97  # a crop of one of its own frames
        assert cur[i]["copy_paste_risk"] < 0.9
        assert {s["ref_origin"] for s in naive[i]["subjects"]} == {"frame"}
        assert {s["ref_origin"] for s in cur[i]["subjects"]} == {"edit:sprites"}
        assert [s["identity"] for s in naive[i]["subjects"]] == [s["identity"] for s in cur[i]["subjects"]]
        assert naive[i]["caption"] == cur[i]["caption"] and naive[i]["caption_origin"] == "truth"
    assert report["copy_paste_risk_mean"]["naive"] > report["copy_paste_risk_mean"]["curated"] + 0.2
    assert (out / "pairs_sheet.png").stat().st_size > 1000


def test_trainer_reads_the_parquet_manifest(sprite_runs):
    """The joint: ManifestSource on a .parquet draws clips inside each row's window."""
    from idcrafter.curation.media import load_clip
    from idcrafter.train.config import DataConfig
    from idcrafter.train.data import ManifestSource

    out, _ = sprite_runs
    manifest = out / "curated" / "manifest.parquet"
    items = read_training_items(manifest)
    src = ManifestSource(DataConfig(source="manifest", path=str(manifest), frames=9, height=48, width=48,
                                    ref_size=36, prefetch=0))
    assert len(src.items) == len(items) > 0
    for p in range(len(items)):
        sample = src.get(p)
        i = src.order.item(p)
        it = items[i]
        assert sample.caption == it["caption"] and len(sample.refs) == len(it["references"])
        want, _ = load_clip(it["video"], *it["window"])
        assert np.array_equal(sample.frames, want)  # the 9 frames of its own scene, no other
        assert len(it["boxes"]) == len(it["references"]) and sample.subject is not None
        x0, y0, x1, y1 = (int(v) for v in it["boxes"][0])
        assert sample.subject[:, (y0 + y1) // 2, (x0 + x1) // 2].all() and not sample.subject[:, :, :2].all()
    assert src.skipped == 0


def test_convert_to_jsonl(sprite_runs, tmp_path):
    from idcrafter.curation.schema import to_jsonl
    from idcrafter.train.config import DataConfig
    from idcrafter.train.data import ManifestSource

    out, _ = sprite_runs
    jl = out / "curated" / "train.jsonl"
    n = to_jsonl(out / "curated" / "manifest.parquet", jl)
    lines = [json.loads(x) for x in jl.read_text().splitlines()]
    assert n == len(lines) > 0 and not os.path.isabs(lines[0]["video"])
    src = ManifestSource(DataConfig(source="manifest", path=str(jl), frames=9, prefetch=0, ref_size=36))
    assert len(src.items) == n
    from idcrafter.curation.media import load_clip

    for p in range(n):  # the JSONL reader honours the clip window too
        it = src.items[src.order.item(p)]
        assert np.array_equal(src.get(p).frames, load_clip(it["video"], *it["window"])[0])


def test_resume_skips_finished_shards_and_loses_nothing(sprite_runs, tmp_path):
    out, _ = sprite_runs
    cfg = sprites_config(3, 3, compose=True)
    cfg.shard_size = 1
    run = tmp_path / "run"
    curate(cfg, run, progress=False)
    first = read_rows(run / "manifest.parquet")
    stamp = shard_path(run, 0).stat().st_mtime_ns
    shard_path(run, 1).unlink()  # as if killed while shard 1 was in flight
    (run / "manifest.parquet").unlink()
    s = curate(cfg, run, progress=False)
    assert s["shards_skipped"] == 2 and s["shards"] == 3
    assert shard_path(run, 0).stat().st_mtime_ns == stamp
    again = read_rows(run / "manifest.parquet")
    assert again == first
    # and the same rows as the one-shard run of the same config
    ref = {r["id"]: r for r in read_rows(out / "curated" / "manifest.parquet")}
    assert {r["id"]: r["copy_paste_risk"] for r in again} == {i: r["copy_paste_risk"] for i, r in ref.items()}


def test_failing_rows_are_recorded_and_never_stop_the_run(tmp_path):
    from idcrafter.curation.media import write_video
    from idcrafter.world.dataset import make_example

    vids = tmp_path / "videos"
    vids.mkdir()
    write_video(vids / "good.mp4", make_example(0, 0, "train").clip.frames, 8)
    (vids / "broken.mp4").write_bytes(b"not a video at all")
    cfg = from_dict({"inputs": [{"kind": "folder", "path": str(vids)}], "subjects": {"detector": "sprites"},
                     "face": {"detector": "sprites"}, "caption": {"backend": "keep"},
                     "filters": {"min_short_side": 32}, "scene": {"min_scene_len": 3}})
    s = curate(cfg, tmp_path / "out", progress=False)
    rows = {Path(r["video_uri"]).name: r for r in read_rows(tmp_path / "out" / "manifest.parquet")}
    assert rows["broken.mp4"]["drop_reason"] == "unreadable" and "probe" in rows["broken.mp4"]["error"]
    good = rows["good.mp4"]
    assert good["subjects"] and good["copy_paste_risk"] > 0.97 and good["drop_reason"] == "no_caption"
    assert s["dropped"] == {"unreadable": 1, "no_caption": 1}


def test_step_exception_becomes_an_error_row(monkeypatch):
    from idcrafter.curation import steps

    def boom(row, ctx):
        raise RuntimeError("detector exploded")

    from idcrafter.curation.schema import new_row

    r = steps.apply_step("subjects", boom, new_row(id="x"), None)[0]
    assert r["kept"] is False and r["drop_reason"] == "error" and r["error"] == "subjects: RuntimeError: detector exploded"
    assert steps.apply_step("caption", lambda row, ctx: 1 / 0, r, None) == [r]  # later steps pass it through


def _same_as_one_worker(sprite_runs, tmp_path, engine: str, workers: int) -> None:
    out, _ = sprite_runs
    cfg = sprites_config(3, 3, compose=True)
    cfg.shard_size = 1
    want = read_rows(out / "curated" / "manifest.parquet")
    s = curate(cfg, tmp_path / engine, engine=engine, workers=workers, progress=False)
    got = read_rows(tmp_path / engine / "manifest.parquet")
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [r["copy_paste_risk"] for r in got] == [r["copy_paste_risk"] for r in want]
    assert [r["kept"] for r in got] == [r["kept"] for r in want]
    assert s["step_seconds"]["subjects"] > 0 and s["shards"] == 3


def test_local_pool_of_two_matches_one_worker(sprite_runs, tmp_path):
    _same_as_one_worker(sprite_runs, tmp_path, "local", 2)


def test_ray_data_local_mode_matches_local_engine(sprite_runs, tmp_path):
    """The same step functions on Ray Data (a local Ray instance; 3 blocks): identical manifests."""
    pytest.importorskip("ray")
    _same_as_one_worker(sprite_runs, tmp_path, "ray", 1)  # one Ray worker: fewer torch imports


# ----------------------------------------------------------------------------- real-data importers

def _opens2v_fixture(root: Path) -> Path:
    """Two clips of one cluster in the OpenS2V-5M JSON layout, with RLE masks and a cross pair."""
    from idcrafter.curation.media import write_video
    from idcrafter.world.dataset import make_example

    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for j in range(2):
        ex = make_example(5, j, "train", num_subjects=1)
        frames = np.concatenate([np.zeros((9, 48, 8, 3), np.uint8), ex.clip.frames], axis=2)  # 8 px "watermark"
        write_video(root / f"clip{j}.mp4", frames, 8)
        m = ex.clip.masks[2] == 1
        x0, y0, x1, y1 = ex.clip.boxes[2, 0]
        data[f"vid_part{j}_step1"] = {
            "metadata": {"path": f"clip{j}.mp4", "face_cut": [1, 9], "cut": [0, 9], "crop": [8, 56, 0, 48],
                         "fps": 8.0, "num_frames": 9, "resolution": {"height": 48, "width": 56},
                         "face_cap_qwen": ex.caption, "aesthetic": 5.1, "motion": 0.3, "tech": 2.0},
            "annotation": {
                "ann_frame_data": {"ann_frame_idx": 2, "img_width": 48, "img_height": 48, "box_format": "xyxy",
                                   "annotations": [{"class_name": "woman", "bbox": [float(x0), float(y0), float(x1), float(y1)],
                                                    "gme_score": 0.4, "aes_score": 4.5},
                                                   {"class_name": "park", "bbox": [0, 0, 48, 48], "gme_score": 0.3,
                                                    "aes_score": 4.0}]},
                "mask_map": {"1": {"class_name": "woman"}, "2": {"class_name": "park"}},
                "mask_annotation": {"2": {"1": rle.encode(m), "2": rle.encode(~m)}}}}
    (root / "total.json").write_text(json.dumps(data))
    pairs = [{"cur_id": "part1/vid_part0_step1", "aft_id": "part1/vid_part1_step1", "cur_class_name": "woman",
              "aft_class_name": "woman", "text_similarity": 1.0, "image_similarity": 0.9, "cur_frame_idx": 2,
              "aft_frame_idx": 2}]
    (root / "pairs.json").write_text(json.dumps(pairs))
    return root


def test_opens2v_import_masks_crop_and_cross_pairs(tmp_path):
    root = _opens2v_fixture(tmp_path / "opens2v")
    cfg = from_dict({"inputs": [{"kind": "opens2v", "path": str(root / "total.json"), "video_root": str(root),
                                 "cross_pairs": str(root / "pairs.json")}],
                     "ref_size": 32, "filters": {"min_short_side": 32}, "scene": {"min_scene_len": 3},
                     "face": {"detector": "sprites"}})
    curate(cfg, tmp_path / "out", progress=False)
    rows = {r["id"]: r for r in read_rows(tmp_path / "out" / "manifest.parquet")}
    a, b = rows["opens2v:vid_part0_step1#s0"], rows["opens2v:vid_part1_step1#s0"]
    assert (a["clip_start"], a["clip_end"], a["crop"], a["width"]) == (1, 9, [8, 0, 56, 48], 48)
    assert [s["class_label"] for s in a["subjects"]] == ["woman"]  # "park" is not a subject class
    assert a["subjects"][0]["ref_origin"] == "cross_clip" and b["subjects"][0]["ref_origin"] == "frame"
    assert b["copy_paste_risk"] > 0.97 and a["caption_origin"] == "annotation"
    # the frame reference is the masked subject on the canvas: corner pixels are canvas
    from idcrafter.utils.media import load_image

    ref = load_image(tmp_path / "out" / b["subjects"][0]["ref_uri"])
    assert tuple(ref[0, 0]) == BG and F.subject_pixels(ref, BG).mean() > 0.1


def test_captured_and_csv_importers(tmp_path):
    from idcrafter.curation.config import CurationConfig, InputConfig
    from idcrafter.curation.importers import import_captured, import_csv
    from idcrafter.utils.media import save_image

    take = tmp_path / "cap" / "take01"
    (take / "refs").mkdir(parents=True)
    (take / "video.mp4").write_bytes(b"")
    (take / "caption.txt").write_text("Alice waves.\n")
    save_image(take / "refs" / "alice.png", np.zeros((8, 8, 3), np.uint8))
    rows = import_captured(InputConfig(kind="captured", path=str(tmp_path / "cap")), CurationConfig())
    assert rows[0]["caption"] == "Alice waves." and rows[0]["subjects"][0]["name"] == "alice"
    assert rows[0]["subjects"][0]["ref_origin"] == "provided"
    (tmp_path / "list.csv").write_text("video,caption,start,end\nclips/a.mp4,a cat,3,20\n")
    rows = import_csv(InputConfig(kind="csv", path=str(tmp_path / "list.csv")), CurationConfig())
    assert rows[0]["video_uri"] == str((tmp_path / "clips" / "a.mp4").resolve())
    assert (rows[0]["clip_start"], rows[0]["clip_end"], rows[0]["caption"]) == (3, 20, "a cat")
    (tmp_path / "bad.csv").write_text("path\nx.mp4\n")
    with pytest.raises(InputError, match="video"):
        import_csv(InputConfig(kind="csv", path=str(tmp_path / "bad.csv")), CurationConfig())


def _astronaut_video(path: Path, frames: int = 9) -> np.ndarray:
    """A real face (skimage's astronaut) panning 3 px per frame, 256 x 256."""
    import cv2
    import skimage.data

    from idcrafter.curation.media import write_video

    a = cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    clip = np.stack([np.roll(a, 3 * i, axis=1) for i in range(frames)])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, clip, 8)
    return a


def test_real_faces_folder_and_captured_take(tmp_path):
    """Real backends end to end: dlib face tracks on a folder video; a captured take's studio
    reference matched to its face track by dlib embeddings."""
    from idcrafter.utils.media import save_image

    a = _astronaut_video(tmp_path / "videos" / "astro.mp4")
    take = tmp_path / "captured" / "take1"
    _astronaut_video(take / "video.mp4")
    save_image(take / "refs" / "eileen.png", np.ascontiguousarray(a[20:160, 50:170][:, ::-1]))  # mirrored studio shot
    (take / "caption.txt").write_text("An astronaut in front of a flag.")
    cfg = from_dict({"inputs": [{"kind": "folder", "path": str(tmp_path / "videos")},
                                {"kind": "captured", "path": str(tmp_path / "captured")}],
                     "scene": {"min_scene_len": 3}, "filters": {"min_motion": 0.0}})
    s = curate(cfg, tmp_path / "out", progress=False)
    rows = {r["origin"]: r for r in read_rows(tmp_path / "out" / "manifest.parquet")}
    folder, cap = rows["folder"], rows["captured"]
    assert len(folder["subjects"]) == 1 and folder["subjects"][0]["ref_origin"] == "frame"
    assert folder["copy_paste_risk"] > 0.97 and folder["face_quality"] > 0.5
    assert folder["drop_reason"] == "no_caption"  # caption backend "keep" and no caption given
    sub = cap["subjects"][0]
    assert sub["ref_origin"] == "provided" and sub["name"] == "eileen" and len(sub["box_frames"]) >= 3
    box = np.asarray(sub["boxes"][0])  # the head-and-shoulders box around the detected face (~x 88-133)
    assert box[0] < 95 and box[2] > 130 and cap["kept"] and cap["source"] == "captured"
    assert cap["copy_paste_risk"] < 0.9 and s["kept_by_source"]["captured"] == 1


def _tiny_owl(folder: Path) -> Path:
    """A random OWL-ViT (32-wide, 1 layer) with a character-level CLIP tokenizer, saved locally."""
    import torch
    from transformers import (CLIPTokenizer, OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor,
                              OwlViTProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"!": 0}  # OWL treats a query whose first id is 0 as padding: keep 0 off the start token
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    cfg = OwlViTConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16,
                                        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                        pad_token_id=vocab["<|endoftext|>"]),
                       vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=64, patch_size=16), projection_dim=32)
    torch.manual_seed(0)
    model = OwlViTForObjectDetection(cfg)
    with torch.no_grad():  # boxes = the patch-grid prior (random box heads saturate to empty boxes)
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    size = {"height": 64, "width": 64}
    OwlViTProcessor(image_processor=OwlViTImageProcessor(size=size, crop_size=size), tokenizer=tok).save_pretrained(folder)
    return folder


def test_owl_detector_backend_from_a_local_folder(tmp_path):
    from idcrafter.curation.backends import OwlDetector
    from idcrafter.curation.media import write_video
    from idcrafter.world.dataset import make_example

    folder = _tiny_owl(tmp_path / "owl")
    det = OwlDetector(folder, ["person", "dog"], threshold=0.0, max_det=3)
    found = det.detect(np.zeros((48, 40, 3), np.uint8))
    assert 1 <= len(found) <= 3 and all(d.label in ("person", "dog") for d in found)
    assert all(0 <= d.box[0] < d.box[2] <= 40 and 0 <= d.box[1] < d.box[3] <= 48 for d in found)
    write_video(tmp_path / "v" / "a.mp4", make_example(0, 2, "train").clip.frames, 8)
    cfg = from_dict({"inputs": [{"kind": "folder", "path": str(tmp_path / "v")}], "scene": {"min_scene_len": 3},
                     "subjects": {"detector": "owl", "detector_path": str(folder), "queries": ["person", "dog"],
                                  "threshold": 0.0, "max_subjects": 2}, "face": {"detector": "none"}})
    curate(cfg, tmp_path / "out", progress=False)
    row = read_rows(tmp_path / "out" / "manifest.parquet")[0]
    assert 1 <= len(row["subjects"]) <= 2 and {s["class_label"] for s in row["subjects"]} <= {"person", "dog"}
    assert all(s["ref_uri"] and s["box_frames"] for s in row["subjects"])
    with pytest.raises(InputError, match="OWL"):
        OwlDetector(tmp_path / "nothing", ["person"])


# ----------------------------------------------------------------------------- backends over HTTP / injected

@pytest.fixture
def stub_server():
    """A loopback HTTP server answering edit and chat-completion requests."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            if self.path.endswith("/chat/completions"):
                n = sum(c["type"] == "image_url" for c in body["messages"][0]["content"])
                out = {"choices": [{"message": {"content": f" {n} frames seen "}}]}
            else:
                from idcrafter.curation.backends import decode_image, png_b64

                img = decode_image(base64.b64decode(body["image"]))
                out = {"image": png_b64(255 - img)}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()


def test_http_composer_and_openai_captioner(stub_server):
    from idcrafter.curation.backends import HTTPComposer, OpenAICaptioner

    url, seen = stub_server
    img = np.full((10, 6, 3), 40, np.uint8)
    out = HTTPComposer(url + "/edit").compose(img, None, {"prompt": "p", "seed": 3, "size": 16, "background": BG})
    assert out.shape == (16, 16, 3) and (out == 215).any()  # the inverted subject, fitted on the canvas
    assert seen[-1][1]["seed"] == 3 and seen[-1][1]["prompt"] == "p"
    cap = OpenAICaptioner(url + "/v1", "m", api_key_env="")
    assert cap.caption(np.zeros((3, 8, 8, 3), np.uint8), "describe") == "3 frames seen"
    assert seen[-1][1]["model"] == "m" and seen[-1][0] == "/v1/chat/completions"


def test_diffusers_composer_calls_the_pipeline_like_an_edit_model():
    from types import SimpleNamespace

    from idcrafter.curation.backends import DiffusersComposer

    calls = []

    def pipe(**kw):
        calls.append(kw)
        return SimpleNamespace(images=[np.full((12, 12, 3), 0.5, np.float32)])

    out = DiffusersComposer(pipe=pipe, steps=3).compose(np.zeros((8, 8, 3), np.uint8), None,
                                                        {"prompt": "q", "seed": 1, "size": 16, "background": BG})
    assert out.shape == (16, 16, 3) and calls[0]["num_inference_steps"] == 3 and calls[0]["prompt"] == "q"
    with pytest.raises(InputError, match="not a folder"):
        DiffusersComposer("/nonexistent/pipe")


def test_qwen_captioner_on_a_tiny_random_model(tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from idcrafter.curation.backends import QwenCaptioner
    from idcrafter.encoders.vlm import VLMGrounder

    tiny = VLMGrounder.tiny()
    model = Qwen2_5_VLForConditionalGeneration(tiny.model.config)
    model.model.load_state_dict(tiny.model.state_dict())
    model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    tiny.image_processor.save_pretrained(tmp_path)
    cap = QwenCaptioner(tmp_path, max_new_tokens=4, max_pixels=56 * 56)
    torch.manual_seed(0)
    text = cap.caption(np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), dtype=np.uint8), "describe")
    assert isinstance(text, str)
    ids = cap.build_inputs(np.zeros((2, 48, 48, 3), np.uint8), "describe")
    assert int(ids["mm_token_type_ids"].sum()) == sum(int(g.prod()) // 4 for g in ids["image_grid_thw"])


# ----------------------------------------------------------------------------- CLI

def test_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from idcrafter.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text('[[inputs]]\nkind = "folder"\npath = "nowhere"\n[filters]\nmin_motoin = 1\n')
    runner = CliRunner()
    for args, match in ((["data", "curate", "--config", str(cfg), "--out", str(tmp_path / "o")], "min_motoin"),
                        (["data", "curate", "--out", str(tmp_path / "o")], "exactly one"),
                        (["data", "summary", "--manifest", str(tmp_path / "missing.parquet")], "not found")):
        res = runner.invoke(app, args)
        assert isinstance(res.exception, InputError) and match in str(res.exception), res.output
    # the real entry point turns it into one line and exit status 2
    exe = Path(sys.executable).parent / "idcrafter"
    r = subprocess.run([str(exe), "data", "curate", "--config", str(cfg), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
