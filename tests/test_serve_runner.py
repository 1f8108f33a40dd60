"""The served model (`idcrafter.serve.runner`): scorer choice and tolerance, settings bounds,
and a slot loaded through the shared device/dtype loader running a job end to end."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from serve_support import SHIPPED, png_bytes, shipped_slot

from idcrafter.errors import InputError
from idcrafter.scorers import ScoreReport
from idcrafter.serve.limits import ServeLimits, Upload, parse_generate
from idcrafter.serve.runner import TolerantScorer, load_slot, model_bounds, pick_scorer


class FakeScorer:
    name = "fake"

    def __init__(self, fail_with_prompt: str | None = None, fail_always: str | None = None):
        self.calls, self.fail_with_prompt, self.fail_always = [], fail_with_prompt, fail_always

    def score(self, frames, refs, prompt=None):
        self.calls.append(prompt)
        if self.fail_always:
            raise InputError(self.fail_always)
        if prompt is not None and self.fail_with_prompt:
            raise InputError(self.fail_with_prompt)
        return ScoreReport({"face_sim_mean": 0.5}, [{"reference": 0, "face_sim": 0.5}])


def test_tolerant_scorer_retries_free_text_without_the_prompt():
    inner = FakeScorer(fail_with_prompt="cannot parse the clause 'hello'")
    rep = TolerantScorer(inner, "x").score(np.zeros((2, 8, 8, 3), np.uint8), [np.zeros((8, 8, 3), np.uint8)], "hello")
    assert inner.calls == ["hello", None] and rep.metrics == {"face_sim_mean": 0.5}
    assert rep.details["notes"] == ["action_acc not scored: cannot parse the clause 'hello'"]


def test_tolerant_scorer_turns_unmeasurable_clips_into_a_note():
    inner = FakeScorer(fail_always="no subject found in reference 0")
    rep = TolerantScorer(inner, "x").score(np.zeros((2, 8, 8, 3), np.uint8), [np.zeros((8, 8, 3), np.uint8)], "p")
    assert rep.metrics == {} and rep.per_subject == [] and rep.details["notes"] == [
        "not scored: no subject found in reference 0"]
    assert inner.calls == ["p"]  # not a prompt problem: no retry
    ok = TolerantScorer(FakeScorer(), "x").score(np.zeros((2, 8, 8, 3), np.uint8), [], "p")
    assert ok.details["notes"] == []


def test_real_models_get_the_real_face_scorer_and_it_measures_faces():
    from skimage import data

    real_pipe = types.SimpleNamespace(vae=object())  # not the SpriteWorld pixel codec
    scorer, note = pick_scorer(real_pipe)
    assert note is None and scorer.label == "dlib face recognition"
    face = np.ascontiguousarray(data.astronaut()[::2, ::2])  # (256, 256, 3) uint8, one face
    rep = scorer.score(np.stack([face] * 2), [face], "an astronaut")
    assert rep.per_subject[0]["face_sim"] > 0.95 and rep.metrics["face_sim_mean"] > 0.95
    sprite_scorer, _ = pick_scorer(shipped_slot().pipe)
    assert sprite_scorer.label == "SpriteWorld judge"


def test_bounds_follow_the_model_and_the_server_limits():
    pipe = shipped_slot().pipe
    b = model_bounds(pipe, ServeLimits(max_steps=40, max_refs=3, size_factor=3))
    assert b.max_refs == 3  # the server cap is below the model's 4
    assert (b.steps.lo, b.steps.hi, b.steps.default) == (1, 40, 20)
    assert (b.frames.hi, b.frames.default) == (15, 5)
    grid = pipe.codec.spatial_factor * pipe.transformer.config.patch_size[1]
    assert (b.height.lo, b.height.hi, b.width.default) == (grid, 144, 48)
    assert model_bounds(pipe, ServeLimits(max_refs=8)).max_refs == 4


def test_slot_in_bfloat16_runs_a_job_and_reports_rounding(tmp_path):
    slot = load_slot(SHIPPED, "cpu", "bfloat16", limits=ServeLimits())
    assert slot.dtype == "bfloat16" and slot.describe()["dtype"] == "bfloat16"
    import torch

    assert slot.pipe.transformer.dtype == torch.bfloat16
    req = parse_generate({"prompt": "two people", "steps": "1", "height": "50"}, [Upload("a.png", png_bytes())],
                         {slot.name: slot.bounds}, ServeLimits())
    (tmp_path / "ref_0.png").write_bytes(png_bytes())
    seen = []
    res = slot.run(req, [tmp_path / "ref_0.png"], tmp_path, lambda p, s: seen.append((p, s)))
    assert res.settings["height"] == 48 and any("adjusting" in n for n in res.notes)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and seen[-1][0] < 1.0
    assert {f.name for f in tmp_path.iterdir()} >= {"video.mp4", "sheet.png", "metrics.json"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["settings"] == res.settings and saved["scorer"] == "SpriteWorld judge"


def test_load_slot_refuses_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(InputError, match="not a pipeline folder"):
        load_slot(tmp_path)
    with pytest.raises(InputError, match="no CUDA|not available"):
        load_slot(SHIPPED, "cuda:3")
