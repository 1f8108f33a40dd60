"""Naturalness: a VLM judge rating how real a clip looks on a 1-5 scale (OpenS2V's NaturalScore,
ID-Crafter's R_nat), or the SpriteWorld judge's plausibility checks.

Frames are chosen as OpenS2V-Eval's script chooses them: 16 frames at indices
`i * max(T // 16, 1)` (those past the end skipped), each resized so its long side is 512 px
(`cv2.INTER_AREA`, the short side truncated to an int). Backends:

- `QwenNaturalJudge`: a local Qwen2.5-VL (or Qwen2-VL) folder; the frames then the rubric in one
  user turn; the score is the expectation sum_s s p(s) over the next-token probabilities of
  the answers "1".."5" (renormalised over those five tokens), so it is continuous and needs
  no sampling.
- `EndpointNaturalJudge`: any OpenAI-compatible `/chat/completions` endpoint (frames as JPEG
  data URLs, encoded like the published script: OpenCV JPEG of the BGR frames). When the
  endpoint returns `logprobs`, the score is the same expectation over the first token's top
  log-probabilities; otherwise the first digit 1-5 of the answer. The mean of `runs` calls
  (3, as published).

Departure: the rubric is ours (the same four criteria and five levels as OpenS2V's prompt,
reworded); pass `prompt=` (or `--natural-prompt FILE` in `idcrafter eval`) to use the published
text exactly. Published NaturalScores come from GPT-4o; a different judge model gives other
numbers.

`natural` = (raw - 1) / 4 clipped to [0, 1]; `natural_raw` is on the 1-5 scale. The SpriteWorld
backend reports its plausibility mean as `natural` and 1 + 4 natural as `natural_raw`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward, RewardBatch, check_clip

RUBRIC = """Judge how real this video looks from the frames above (in order). Weigh:
- common sense: are objects, people and their interactions coherent?
- physics: do light, shadows, reflections and motion behave as in the real world?
- appearance: do textures, details and proportions look natural, without distortions?
- generation artefacts: blur, morphing, glitches or changes between frames?
If people appear, check that faces and bodies are anatomically right and move naturally.
Answer with one number:
1 = clearly generated (frequent artefacts, broken physics or anatomy);
2 = probably generated (noticeable cues on inspection);
3 = unsure (mostly natural with small anomalies);
4 = probably real (only rare, explainable irregularities);
5 = clearly real (no sign of generation).
Reply with the number only."""

SCORES = (1, 2, 3, 4, 5)


def natural_frames(video: np.ndarray, count: int = 16, long_side: int = 512) -> list[np.ndarray]:
    """OpenS2V's NaturalScore frames (module docstring): (h, w, 3) uint8 RGB each."""
    import cv2

    t = len(video)
    step = max(t // count, 1)
    out = []
    for i in range(count):
        if i * step >= t:
            continue
        f = video[i * step]
        h, w = f.shape[:2]
        size = (int(w * long_side / h), long_side) if h >= w else (long_side, int(h * long_side / w))
        out.append(cv2.resize(f, size, interpolation=cv2.INTER_AREA))
    return out


def expected_score(probs: Sequence[float]) -> float:
    """sum_s s p(s) over the answers 1..5 (probabilities renormalised to sum to 1)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (5,) or not np.isfinite(p).all() or p.sum() <= 0:
        raise InputError(f"need 5 finite, non-negative answer probabilities, got {p.tolist()}")
    p = p / p.sum()
    return float(np.dot(p, SCORES))


def normalise_natural(raw: float) -> float:
    return float((np.clip(raw, 1.0, 5.0) - 1.0) / 4.0)


class QwenNaturalJudge:
    name = "qwen"

    def __init__(self, folder: str | Path | None, device: str | torch.device = "cpu", prompt: str | None = None,
                 frames: int = 16, long_side: int = 512, max_pixels: int | None = None, batch_size: int = 1):
        from idcrafter.rewards.vlm import LocalVLM

        self.batch_size = max(int(batch_size), 1)
        self.vlm = LocalVLM(folder, device, head=True, max_pixels=max_pixels)
        self.prompt = prompt or RUBRIC
        self.frames, self.long_side = int(frames), int(long_side)
        self.candidates = [self.vlm.token_id(str(s)) for s in SCORES]

    def rate(self, videos: Sequence[np.ndarray]) -> list[float]:
        """1-5 expected scores, `batch_size` videos (16 frames each) per forward."""
        from idcrafter.rewards.vlm import ChatTurn

        out: list[float] = []
        for i in range(0, len(videos), self.batch_size):
            turns = [ChatTurn(natural_frames(v, self.frames, self.long_side), self.prompt)
                     for v in videos[i:i + self.batch_size]]
            probs = self.vlm.next_token_probs(turns, self.candidates)  # (b, 5)
            out += [expected_score(p.tolist()) for p in probs]
        return out


class EndpointNaturalJudge:
    name = "endpoint"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", prompt: str | None = None,
                 runs: int = 3, frames: int = 16, long_side: int = 512, timeout: float = 120.0, retries: int = 3):
        if not base_url or not model:
            raise InputError("the endpoint judge needs a base URL (e.g. http://localhost:8000/v1) and a model name")
        if runs < 1:
            raise InputError(f"runs must be >= 1, got {runs}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.prompt = model, api_key_env, prompt or RUBRIC
        self.runs, self.frames, self.long_side = int(runs), int(frames), int(long_side)
        self.timeout, self.retries = float(timeout), int(retries)

    def _payload(self, video: np.ndarray) -> dict[str, Any]:
        import cv2

        content: list[dict[str, Any]] = []
        for f in natural_frames(video, self.frames, self.long_side):
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(f[:, :, ::-1]))  # OpenCV encodes BGR
            if not ok:
                raise InputError("cannot JPEG-encode a frame")
            content.append({"type": "image_url",
                            "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(buf).decode()}})
        content.append({"type": "text", "text": self.prompt})
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "logprobs": True,
                "top_logprobs": 5}

    def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        import requests

        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                r = requests.post(self.url, data=json.dumps(payload), headers=headers, timeout=self.timeout)
                if r.status_code < 500:
                    r.raise_for_status()
                    return r.json()
                last = RuntimeError(f"HTTP {r.status_code}")
            except requests.RequestException as exc:
                last = exc
            time.sleep(min(2.0 ** attempt, 10.0) * 0.1)
        raise RuntimeError(f"the judge endpoint {self.url} failed {self.retries} times: {last}")

    def rate(self, videos: Sequence[np.ndarray]) -> list[float]:
        out = []
        for v in videos:
            payload = self._payload(v)
            out.append(float(np.mean([parse_response(self._call(payload)) for _ in range(self.runs)])))
        return out


def parse_response(resp: dict[str, Any]) -> float:
    """A 1-5 score from a chat-completions response (module docstring)."""
    try:
        choice = resp["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"the judge endpoint returned no choices: {str(resp)[:200]}") from None
    first = ((choice.get("logprobs") or {}).get("content") or [None])[0]
    if first and first.get("top_logprobs"):
        p = [0.0] * 5
        for cand in first["top_logprobs"]:
            tok = str(cand.get("token", "")).strip()
            if tok in {str(s) for s in SCORES} and cand.get("logprob") is not None:
                p[int(tok) - 1] += math.exp(float(cand["logprob"]))
        if sum(p) > 0:
            return expected_score(p)
    text = str((choice.get("message") or {}).get("content") or "")
    m = re.search(r"[1-5]", text)
    if m is None:
        raise InputError(f"the judge's answer holds no score 1-5: {text[:80]!r}")
    return float(m.group(0))


class NaturalReward(Reward):
    """backend "qwen" (weights: a local VLM folder), "endpoint" (options base_url, model) or
    "sprites" (the SpriteWorld judge)."""

    name = "natural"
    components = ("natural", "natural_raw")

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None,
                 backend: str = "sprites", fill: float = 0.0, judge: Any = None, **options: Any):
        super().__init__(device, weights, fill)
        self.backend = backend
        if judge is not None:
            self.judge = judge
        elif backend == "qwen":
            self.judge = QwenNaturalJudge(weights, device, **options)
        elif backend == "endpoint":
            self.judge = EndpointNaturalJudge(**options)
        elif backend == "sprites":
            from idcrafter.scorers import SpritesScorer

            self.judge = SpritesScorer(weights)
        else:
            raise InputError(f"unknown natural backend {backend!r}: choose qwen, endpoint or sprites")

    def score_sample(self, video, refs, prompt):
        n = self.judge.score(video, refs, prompt).metrics.get("natural")
        return {"natural": n, "natural_raw": None if n is None else 1 + 4 * n}

    def score_batch(self, batch: RewardBatch):
        if self.backend == "sprites":
            return super().score_batch(batch)
        rows: list = [None] * len(batch)
        ok = []
        for i, v in enumerate(batch.videos):
            try:
                ok.append((i, check_clip(v)))
            except Exception as exc:  # noqa: BLE001
                rows[i] = exc
        # a local judge rates the batch at once; an endpoint call that fails flags its video only
        groups = [ok] if getattr(self.judge, "name", "") == "qwen" else [[x] for x in ok]
        for group in groups:
            try:
                raws = self.judge.rate([v for _, v in group])
                for (i, _), raw in zip(group, raws):
                    rows[i] = {"natural": normalise_natural(raw) if math.isfinite(raw) else raw, "natural_raw": raw}
            except Exception as exc:  # noqa: BLE001
                for i, _ in group:
                    rows[i] = exc
        return rows
