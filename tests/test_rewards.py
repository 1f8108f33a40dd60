"""idcrafter.rewards: the combination maths by hand, the batch contract (flags, never NaN, never
raising mid-batch), the SpriteWorld judge backend, real backends on tiny random models, and
running beside rollouts (thread / spawned process)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from idcrafter.errors import InputError
from idcrafter.rewards import CompositeWeights, RewardBatch, RewardSpec, RewardWorker, build_reward
from idcrafter.rewards.base import Reward, assemble
from idcrafter.rewards.composite import composite_reward, face_reward, subject_aggregate
from tiny_models import astronaut_video, clip_folder, face_onnx, qwen_folder


# ---------------------------------------------------------------------- pure maths by hand
def test_face_aggregate_and_composite_by_hand():
    assert subject_aggregate([0.8, 0.4], 0.5) == pytest.approx(0.5 * 0.6 + 0.5 * 0.4)
    assert subject_aggregate([0.9, 0.3, 0.6], 0.0) == pytest.approx(0.6)  # gamma 0: the mean
    assert subject_aggregate([0.9, 0.3, 0.6], 1.0) == pytest.approx(0.3)  # gamma 1: the worst
    # face_mean .8, face_min .6 -> face .7; fid .5*.7 + .5*.5 = .6; qual .6*.9 + .4*.5 = .74
    r = composite_reward(0.8, 0.6, 0.5, 0.9, 0.5, copy_paste=0.25)
    assert r["face"] == pytest.approx(0.7) and r["fidelity"] == pytest.approx(0.6)
    assert r["quality"] == pytest.approx(0.74)
    assert r["composite"] == pytest.approx(0.6 * 0.6 + 0.4 * 0.74 - 0.2 * 0.25)  # 0.606
    assert composite_reward(0.8, 0.6, 0.5, 0.9, 0.5, 0.25, CompositeWeights.paper())["composite"] == \
        pytest.approx(0.656)
    w = CompositeWeights(fidelity=1.0, quality=0.0, subject_share=0.0, gamma=1.0, copy_paste=0.0)
    assert composite_reward(0.8, 0.6, 0.5, 0.9, 0.5, 1.0, w)["composite"] == pytest.approx(0.6)  # min face only
    t = composite_reward(torch.tensor([0.8, 1.0]), torch.tensor([0.6, 1.0]), torch.tensor([0.5, 1.0]),
                         torch.tensor([0.9, 1.0]), torch.tensor([0.5, 1.0]), torch.tensor([0.25, 0.0]))
    assert torch.allclose(t["composite"], torch.tensor([0.606, 1.0]))
    assert face_reward(0.8, 0.6, 0.25) == pytest.approx(0.75)
    # the binding term (off by default): + w_bind * R_bind
    wb = CompositeWeights(binding=0.5)
    assert composite_reward(0.8, 0.6, 0.5, 0.9, 0.5, 0.25, wb, binding=0.3)["composite"] == \
        pytest.approx(0.606 + 0.5 * 0.3)
    assert composite_reward(0.8, 0.6, 0.5, 0.9, 0.5, 0.25, binding=0.3)["composite"] == pytest.approx(0.606)


def test_composite_weights_reject_nonsense():
    for bad in (dict(fidelity=-1), dict(gamma=1.5), dict(natural_share=float("nan"))):
        with pytest.raises(InputError):
            CompositeWeights(**bad)


# ---------------------------------------------------------------------- the batch contract
def test_assemble_flags_nan_inf_missing_and_exceptions():
    out = assemble([{"a": 0.5, "b": 1.0}, {"a": float("nan"), "b": 2.0}, ValueError("no face"), {"a": float("inf")}],
                   ("a", "b"), fill=-1.0)
    assert out["a"].tolist() == [0.5, -1.0, -1.0, -1.0] and out["b"].tolist() == [1.0, 2.0, -1.0, -1.0]
    assert out.valid["a"].tolist() == [True, False, False, False]
    assert out.valid["b"].tolist() == [True, True, False, False]
    assert out.errors[0] is None and "nan" in out.errors[1] and "no face" in out.errors[2]
    assert "b undefined" in out.errors[3]
    assert out.all_valid().tolist() == [True, False, False, False]
    assert out.as_rows()[1] == {"a": None, "b": 2.0}


class _Brightness(Reward):
    name, components = "bright", ("bright",)

    def score_sample(self, video, refs, prompt):
        if prompt == "boom":
            raise RuntimeError("model exploded")
        return {"bright": float(video.mean()) / 255}


def test_one_bad_sample_never_stops_the_batch():
    ok = np.full((2, 4, 4, 3), 255, np.uint8)
    batch = RewardBatch([ok, ok, np.zeros((4, 4)), np.full((2, 4, 4, 3), np.nan, np.float32)],
                        [[ok[0]]] * 4, ["fine", "boom", "fine", "fine"])
    out = _Brightness()(batch)
    assert out["bright"].tolist() == [1.0, 0.0, 0.0, 0.0] and torch.isfinite(out["bright"]).all()
    assert out.valid["bright"].tolist() == [True, False, False, False]
    assert "exploded" in out.errors[1] and "shape" in out.errors[2] and "uint8" in out.errors[3]
    with pytest.raises(InputError, match="one reference list"):
        RewardBatch([ok], [], [None])
    # pipeline output: (B, 3, F, H, W) in [0, 1] goes through the one float -> uint8 conversion
    b = RewardBatch.from_pipeline(torch.ones(2, 3, 2, 4, 4), [[ok[0]], [ok[0]]], [None, None])
    assert b.videos[0].shape == (2, 4, 4, 3) and b.videos[0].dtype == np.uint8 and b.videos[0].max() == 255


# ---------------------------------------------------------------------- SpriteWorld judge backend
@pytest.fixture(scope="module")
def cast():
    from idcrafter.world.dataset import make_example

    return make_example(3, 0, "heldout", num_subjects=2)


def test_sprites_composite_separates_truth_from_noise_and_flags_bad_clips(cast):
    reward = build_reward("composite")
    noise = np.random.default_rng(0).integers(0, 256, cast.clip.frames.shape, dtype=np.uint8)
    refs = list(cast.refs)
    batch = RewardBatch([cast.clip.frames, noise, cast.clip.frames[:, :10]], [refs] * 3, [cast.caption] * 3)
    out = reward(batch)
    for name in ("composite", "face", "face_mean", "subject", "aesthetic", "natural", "copy_paste", "judge_total"):
        assert torch.isfinite(out[name]).all(), name
    assert out.valid["composite"].tolist() == [True, True, False]  # 48x10 is not a SpriteWorld aspect ratio
    assert out["composite"][2] == 0.0 and "InputError" in out.errors[2]
    assert out["composite"][0] > out["composite"][1] + 0.2
    # the joint: the composite is exactly the maths on the judge's own figures
    from idcrafter.scorers import SpritesScorer

    rep = SpritesScorer().score(cast.clip.frames, refs, cast.caption)
    sims = [s["face_sim"] for s in rep.per_subject]
    expected = composite_reward(np.mean(sims), np.min(sims), rep.metrics["subject_sim"], rep.metrics["quality"],
                                rep.metrics["natural"], max(s["copy_paste"] for s in rep.per_subject))["composite"]
    assert float(out["composite"][0]) == pytest.approx(expected, abs=1e-5)
    # with w_bind > 0 the judge's own binding enters exactly; a caption that asks nothing binds fully
    wb = CompositeWeights(binding=0.3)
    bound = build_reward("composite", composite_weights=wb)(
        RewardBatch([cast.clip.frames, noise, cast.clip.frames], [refs] * 3, [cast.caption, cast.caption, None]))
    assert float(bound["binding"][0]) == pytest.approx(rep.metrics["binding"], abs=1e-5)
    assert float(bound["binding"][0]) > float(bound["binding"][1]) + 0.3  # noise does nothing asked
    assert float(bound["action"][0]) == pytest.approx(rep.metrics["action_acc"])
    assert float(bound["composite"][0]) == pytest.approx(expected + 0.3 * rep.metrics["binding"], abs=1e-5)
    assert float(bound["binding"][2]) == 1.0 and bool(bound.valid["composite"][2])


def test_face_reward_gamma_and_components_needed(cast):
    refs = list(cast.refs)
    batch = RewardBatch([cast.clip.frames], [refs], [cast.caption])
    a = build_reward("face", gamma=0.0)(batch)
    b = build_reward("face", gamma=1.0)(batch)
    assert float(a["face"][0]) == pytest.approx(float(a["face_mean"][0]))
    assert float(b["face"][0]) == pytest.approx(float(b["face_min"][0]))
    with pytest.raises(InputError, match="needs components"):
        build_reward("composite", parts=[build_reward("face")])
    with pytest.raises(InputError, match="binding"):  # a part set with no binding scorer refuses w_bind > 0
        build_reward("composite", parts=[build_reward("face"), build_reward("subject"), build_reward("aesthetic"),
                                         build_reward("natural")], composite_weights=CompositeWeights(binding=0.2))
    with pytest.raises(InputError, match="unknown reward"):
        build_reward("beauty")


# ---------------------------------------------------------------------- real backends, tiny models
def test_clip_aesthetic_and_subject_on_a_tiny_clip(tmp_path):
    from idcrafter.rewards.base import sample_indices
    from idcrafter.rewards.clip import ClipImageModel

    folder = clip_folder(tmp_path / "clip")
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (5, 40, 56, 3), dtype=np.uint8) for _ in range(2)]
    aes = build_reward("aesthetic", weights=folder, backend="clip")
    out = aes(RewardBatch(clips + [np.zeros((3, 3))], [[clips[0][0]]] * 3, [None] * 3))
    assert out.valid["aesthetic"].tolist() == [True, True, False]
    # hand computation: the mean MLP score of the 32 sampled frames (repeats included)
    model = ClipImageModel(folder, with_aesthetic=True)
    want = float(model.aesthetic([clips[1][j] for j in sample_indices(5, 32)]).mean())
    assert float(out["aesthetic_raw"][1]) == pytest.approx(want, rel=1e-5)
    assert float(out["aesthetic"][1]) == pytest.approx(np.clip((want - 4) / 3, 0, 1), abs=1e-6)
    # the .pth layout loads with weights_only=True and gives the same head
    pth = clip_folder(tmp_path / "clip_pth", mlp="pth")
    assert build_reward("aesthetic", weights=pth, backend="clip")(RewardBatch(clips[1:], [[]], [None]))[
        "aesthetic_raw"][0] == pytest.approx(want, rel=1e-5)
    sub = build_reward("subject", weights=folder, backend="clip")
    still = np.stack([clips[0][0]] * 4)
    s = sub(RewardBatch([still, clips[1]], [[clips[0][0]], [clips[0][0]]], [None, None]))
    assert float(s["subject"][0]) == pytest.approx(1.0, abs=1e-5) and float(s["subject"][1]) < 1.0


def test_missing_weights_say_what_to_put_where(tmp_path):
    from idcrafter.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="CLIP"):
        build_reward("aesthetic", weights=tmp_path, backend="clip")
    (tmp_path / "clip").mkdir()
    clip_folder(tmp_path / "clip", mlp=None)
    with pytest.raises(MissingWeightsError, match="aesthetic MLP"):
        build_reward("aesthetic", weights=tmp_path, backend="clip")
    with pytest.raises(MissingWeightsError, match="VLM folder"):
        build_reward("natural", weights=tmp_path / "nothing", backend="qwen")


def test_qwen_natural_judge_expected_score_and_batching(tmp_path):
    from idcrafter.rewards.natural import QwenNaturalJudge, expected_score, natural_frames

    assert expected_score([0, 0, 1, 0, 0]) == 3.0
    assert expected_score([1, 1, 0, 0, 2]) == pytest.approx((1 + 2 + 10) / 4)
    with pytest.raises(InputError):
        expected_score([0, 0, 0, 0, 0])
    # OpenS2V's frame choice: 16 frames at i * max(T // 16, 1), long side 512
    v = np.zeros((40, 30, 60, 3), np.uint8)
    fr = natural_frames(v)
    assert len(fr) == 16 and fr[0].shape == (256, 512, 3)
    assert len(natural_frames(np.zeros((5, 8, 8, 3), np.uint8))) == 5

    folder = qwen_folder(tmp_path / "vlm")
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (6, 24, 40, 3), dtype=np.uint8)]
    one = QwenNaturalJudge(folder, max_pixels=28 * 28)
    both = QwenNaturalJudge(folder, max_pixels=28 * 28, batch_size=2)
    singles = [one.rate([c])[0] for c in clips]
    assert both.rate(clips) == pytest.approx(singles, abs=1e-4)  # right padding reads each row's own last token
    assert all(1.0 <= s <= 5.0 for s in singles) and singles[0] != singles[1]
    out = build_reward("natural", weights=folder, backend="qwen", max_pixels=28 * 28)(
        RewardBatch(clips, [[], []], [None, None]))
    assert out["natural_raw"].tolist() == pytest.approx(singles, abs=1e-4)
    assert out["natural"].tolist() == pytest.approx([(s - 1) / 4 for s in singles], abs=1e-4)


class _Judge(BaseHTTPRequestHandler):
    answers: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append(body)
        status, reply = _Judge.answers.pop(0)
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_natural_judge_logprobs_text_and_failure():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    lp = {"content": [{"token": "4", "top_logprobs": [{"token": "4", "logprob": np.log(0.5)},
                                                       {"token": "2", "logprob": np.log(0.5)},
                                                       {"token": "x", "logprob": -0.1}]}]}
    _Judge.answers = [(200, {"choices": [{"message": {"content": "4"}, "logprobs": lp}]}),  # 3.0
                      (200, {"choices": [{"message": {"content": "Score: 5."}}]}),  # 5
                      (200, {"choices": [{"message": {"content": "2"}}]}),  # 2 -> mean of 3 runs 10/3
                      (200, {"choices": [{"message": {"content": "no idea"}}]})]  # unparsable: flagged
    _Judge.seen = []
    try:
        reward = build_reward("natural", backend="endpoint", base_url=url, model="judge-1", runs=3, retries=1)
        clip = np.zeros((20, 16, 16, 3), np.uint8)
        out = reward(RewardBatch([clip, clip, np.zeros(3)], [[], [], []], [None] * 3))
        assert float(out["natural_raw"][0]) == pytest.approx(10 / 3)
        assert out.valid["natural"].tolist() == [True, False, False] and "no score" in out.errors[1]
        content = _Judge.seen[0]["messages"][0]["content"]
        assert _Judge.seen[0]["model"] == "judge-1" and len(content) == 17  # 16 frames + the rubric
        assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    finally:
        server.shutdown()


def test_real_face_rewards_on_a_real_photo(tmp_path):
    onnx = face_onnx(tmp_path / "face.onnx")
    video = astronaut_video(4, shift=3)  # the same face moving
    face = video[0]
    noface = np.full_like(video, 120)
    batch = RewardBatch([video, noface], [[face], [face]], [None, None])
    for backend, weights in (("insightface", onnx), ("dlib", None)):
        out = build_reward("face", weights=weights, backend=backend)(batch)
        assert out.valid["face"].tolist() == [True, False] and "no face" in out.errors[1]
        assert 0.9 < float(out["face"][0]) <= 1.0 and float(out["face"][1]) == 0.0
    cp = build_reward("copy_paste", backend="faces")
    pasted = np.stack([face] * 4)
    res = cp(RewardBatch([pasted, noface, astronaut_video(4, shift=0)[:, ::-1]], [[face]] * 3, [None] * 3))
    assert float(res["copy_paste"][0]) > 0.9  # the reference itself, still
    assert float(res["copy_paste"][1]) == 0.0 and bool(res.valid["copy_paste"][1])  # nothing pasted
    assert float(res["copy_paste"][2]) < float(res["copy_paste"][0])  # mirrored: not the reference's pixels


# ---------------------------------------------------------------------- beside rollouts
def test_reward_worker_in_a_thread_and_a_spawned_process():
    face = astronaut_video(1)[0]
    batch = RewardBatch([np.stack([face] * 3)], [[face]], [None])
    direct = build_reward("copy_paste", backend="faces")(batch)
    spec = RewardSpec("copy_paste", options=(("backend", "faces"),))
    with RewardWorker(spec, mode="thread") as w:
        futs = [w.submit(batch) for _ in range(3)]
        assert all(torch.equal(f.result()["copy_paste"], direct["copy_paste"]) for f in futs)
    threads = torch.get_num_threads()
    with RewardWorker(spec, mode="process", threads=1) as w:
        assert torch.equal(w.submit(batch).result(timeout=300)["copy_paste"], direct["copy_paste"])
    assert torch.get_num_threads() == threads  # the worker's thread count stays in its process
    with pytest.raises(InputError, match="RewardSpec"):
        RewardWorker(build_reward("copy_paste", backend="faces"), mode="process")
