"""The learned reward model (Identity-GRPO): references + a few sampled frames (+ the prompt) ->
one scalar read at a special token, trained on preference pairs with Bradley-Terry with ties.

Two backbones behind one interface (`score(videos, references, prompts) -> (B,)`, `save`,
`load_reward_model`):

- `QwenRewardModel` (the real path): a Qwen2.5-VL (bare `Qwen2_5_VLModel`, local folder) reading

      <|im_start|>user\\n Subject 1: <image> ... Frame 1: <image> ... Prompt: {prompt}<|im_end|>\\n
      <|im_start|>assistant\\n <|reward|>

  with a linear head on the last layer's state at the added `<|reward|>` token; LoRA (peft) on the
  language model's attention projections and the head train, everything else is frozen. Images
  are prepared and expanded into placeholder tokens exactly as `encoders.vlm.VLMGrounder` does
  (no torchvision). Tested on a tiny random Qwen2.5-VL (DESIGN.md section 7).
- `SpriteRewardModel` (the embedded default, CPU size): the shipped judge plays the pretrained
  vision tower: its frozen detector and face / subject embedders turn each reference and each
  subject detected in each sampled frame into a token (embeddings, box, score, a slot or frame
  embedding, and the detection's cosines to every reference), and its clip-level readings
  (`SUMMARY_METRICS` + plausibility checks, given the prompt) into a summary token; a small
  transformer reads them with a `<reward>` token and a linear head gives the scalar. Features are
  computed once per clip (frozen), so training runs on a CPU.

Departure from Identity-GRPO: the embedded model reads the prompt only through the judge's
summary (who should do what: action accuracy and binding), not as text; a swap of identities
between subjects is invisible without it. The Qwen path reads the prompt as the paper's does.

Both read the prompt, so `score` and `features` take the prompts as a required argument (one per
clip): a score without them is another function than the one trained (the summary's
prompt-dependent readings fall back to 0.5), which is how an exported model once "differed" from
the reward serving it. The embedded model is also a function of the judge's weights: its saved
config records the SHA-256 of each judge part file it read (`judge_fingerprint`), and
`load_reward_model` refuses a judge whose parts changed since (retrained, or a part such as the
critic added), instead of silently scoring with other features. The judge's code is not covered.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from idcrafter.errors import InputError, MissingWeightsError

REWARD_TOKEN = "<|reward|>"


def _check_prompts(prompts: Sequence[str | None] | None, n: int) -> list[str | None]:
    if prompts is None or isinstance(prompts, str) or len(prompts) != n:
        raise InputError(f"the reward model reads each clip's prompt: pass a list of {n} prompts "
                         f"(got {'none' if prompts is None else repr(prompts)[:60]})")
    return list(prompts)


# the judge parts `Judge.load` reads (the critic is optional there: recorded as absent)
JUDGE_PARTS = ("detector", "face", "subject", "action", "quality", "critic")


def judge_fingerprint(folder: str | Path | None) -> dict[str, str | None]:
    """{part: SHA-256 of `<judge folder>/<part>.safetensors`, or None when absent}: the frozen
    feature extractor of the embedded reward model (default folder `assets/judge`)."""
    import hashlib

    from idcrafter.judge.judge import judge_folder

    base = judge_folder(folder, "main")
    out: dict[str, str | None] = {}
    for part in JUDGE_PARTS:
        f = base / f"{part}.safetensors"
        out[part] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None
    return out


def sample_frames(video: np.ndarray, n: int) -> np.ndarray:
    """n evenly spaced frames of a (T, H, W, 3) clip (repeats frames of shorter clips)."""
    idx = np.linspace(0, len(video) - 1, n).round().astype(int)
    return np.asarray(video)[idx]


# ------------------------------------------------------------------ embedded: judge features + transformer
# the judge's readings that enter the summary token (a missing or undefined one reads 0.5)
SUMMARY_METRICS = ("face_sim_mean", "face_sim_min", "subject_sim", "leakage", "motion", "action_acc", "binding",
                   "quality", "natural", "copy_paste")
SUMMARY_CHECKS = ("count", "present", "no_duplicates", "coherent", "no_morphing", "steady_light", "alive", "lifelike")
# the embedded head's readouts: a transformer over the tokens, or one linear layer over the summary
# and `SpriteRewardHead.identity_aggregates` (it generalises better to the held-out kind: docs/rl.md)
READOUTS = ("transformer", "linear")
IDENTITY_AGGREGATES = 6


@dataclass
class SpriteFeatures:
    """Frozen features of B clips. refs (B, K, D) with ref_mask (B, K); dets (B, N, M, D + 5) with
    det_mask (B, N, M): N sampled frames, M detections each (face + subject embedding, box, score);
    summary (B, S): the judge's clip-level readings (`SUMMARY_METRICS`, `SUMMARY_CHECKS`), which
    carry what only the prompt tells (who should do what: `action_acc`, `binding`)."""

    refs: torch.Tensor
    ref_mask: torch.Tensor
    dets: torch.Tensor
    det_mask: torch.Tensor
    summary: torch.Tensor

    def select(self, rows: Sequence[int]) -> "SpriteFeatures":
        i = torch.as_tensor(list(rows), dtype=torch.long)
        return SpriteFeatures(self.refs[i], self.ref_mask[i], self.dets[i], self.det_mask[i], self.summary[i])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"refs": self.refs, "ref_mask": self.ref_mask, "dets": self.dets, "det_mask": self.det_mask,
                "summary": self.summary}


def judge_summary(report) -> list[float]:
    """The summary vector of one judge report (`SpriteFeatures.summary`)."""
    def val(d: dict, k: str) -> float:
        v = d.get(k)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else 0.5

    return [val(report.metrics, k) for k in SUMMARY_METRICS] + [val(report.plausibility, k) for k in SUMMARY_CHECKS]


class SpriteFeaturizer:
    """The judge's detector and embedders as a frozen feature extractor (no gradients)."""

    def __init__(self, judge_folder: str | Path | None = None, frames: int = 5, max_refs: int = 4,
                 max_dets: int = 4):
        from idcrafter.judge.judge import Judge

        self.judge = Judge.load(judge_folder)
        self.frames, self.max_refs, self.max_dets = frames, max_refs, max_dets
        self.dim = self.judge.face.dim + self.judge.subject.dim

    @torch.no_grad()
    def __call__(self, videos: Sequence[np.ndarray], references: Sequence[Sequence[np.ndarray]],
                 prompts: Sequence[str | None]) -> SpriteFeatures:
        from idcrafter.judge.crops import body_crop, head_crop
        from idcrafter.judge.judge import check_video

        j = self.judge
        b, n, m, d = len(videos), self.frames, self.max_dets, self.dim
        refs = torch.zeros(b, self.max_refs, d)
        ref_mask = torch.zeros(b, self.max_refs, dtype=torch.bool)
        dets = torch.zeros(b, n, m, d + 5)
        det_mask = torch.zeros(b, n, m, dtype=torch.bool)
        summary = torch.zeros(b, len(SUMMARY_METRICS) + len(SUMMARY_CHECKS))
        prompts = _check_prompts(prompts, b)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the judge's nets are tiny: one thread is fastest (judge.score)
        try:
            for i, (video, rr) in enumerate(zip(videos, references)):
                if len(rr) > self.max_refs:
                    raise InputError(f"{len(rr)} references; the reward model reads at most {self.max_refs}")
                enc = j.encode_references(list(rr))
                refs[i, : len(rr)] = torch.from_numpy(np.concatenate([enc["face"], enc["subject"]], 1))
                ref_mask[i, : len(rr)] = True
                clip = check_video(np.asarray(video), j.size)
                try:
                    summary[i] = torch.tensor(judge_summary(j.score(clip, list(rr), prompts[i])))
                except InputError:  # e.g. a prompt naming other subjects: the summary stays unknown
                    summary[i] = 0.5
                frames = sample_frames(clip, n)
                h, w = frames.shape[1:3]
                for t, (frame, found) in enumerate(zip(frames, j.detector.detect_video(frames))):
                    found = sorted(found, key=lambda x: -x.score)[:m]
                    if not found:
                        continue
                    face = j.face.embed_crops(np.stack([head_crop(frame, x.head) for x in found]))
                    subj = j.subject.embed_crops(np.stack([body_crop(frame, x.box) for x in found]))
                    geo = np.array([[x.box[0] / w, x.box[1] / h, x.box[2] / w, x.box[3] / h, x.score] for x in found])
                    dets[i, t, : len(found)] = torch.from_numpy(np.concatenate([face, subj, geo], 1)).float()
                    det_mask[i, t, : len(found)] = True
        finally:
            torch.set_num_threads(threads)
        return SpriteFeatures(refs, ref_mask, dets, det_mask, summary)


class SpriteRewardHead(nn.Module):
    """Tokens of references, detections and the judge summary + a reward token -> transformer ->
    scalar. Each detection token also gets its cosines to every reference (face and subject
    embeddings, computed here from the frozen features), the identity-agnostic comparison that
    lets the head generalise to identities it never saw."""

    def __init__(self, feat_dim: int, dim: int = 64, layers: int = 2, heads: int = 4, frames: int = 5,
                 max_refs: int = 4, face_dim: int | None = None, summary_dim: int = 18, readout: str = "transformer"):
        super().__init__()
        if readout not in READOUTS:
            raise InputError(f"model.readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        self.face_dim = feat_dim // 2 if face_dim is None else face_dim
        self.max_refs = max_refs
        self.readout = readout
        if readout == "linear":  # the summary and the identity aggregates, read by one linear layer
            self.linear = nn.Linear(summary_dim + IDENTITY_AGGREGATES, 1)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
            return
        self.ref_in = nn.Linear(feat_dim, dim)
        self.det_in = nn.Linear(feat_dim + 5 + 2 * max_refs, dim)
        self.summary_in = nn.Linear(summary_dim, dim)
        self.slot = nn.Parameter(torch.randn(max_refs, dim) * 0.02)  # which reference
        self.time = nn.Parameter(torch.randn(frames, dim) * 0.02)  # which sampled frame
        self.reward_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def similarities(self, f: SpriteFeatures) -> torch.Tensor:
        """(B, N, M, 2 max_refs): cosines of each detection's face / subject embedding to each
        reference's (0 for absent references); embeddings are unit vectors."""
        fd = self.face_dim
        d_face, d_subj = f.dets[..., :fd], f.dets[..., fd:f.refs.shape[-1]]
        r_face, r_subj = f.refs[..., :fd], f.refs[..., fd:]
        sf = torch.einsum("bnmd,bkd->bnmk", d_face, r_face)
        ss = torch.einsum("bnmd,bkd->bnmk", d_subj, r_subj)
        keep = f.ref_mask[:, None, None, :].to(sf.dtype)
        pad = sf.new_zeros(*sf.shape[:3], self.max_refs - f.refs.shape[1])
        sims = torch.cat([sf * keep, pad, ss * keep, pad], -1)  # (B, N, M, 2 max_refs)
        return sims * f.det_mask[..., None].to(sims.dtype)

    def identity_aggregates(self, f: SpriteFeatures) -> torch.Tensor:
        """(B, 6): for the face and the subject embedding, each reference's best-matching detection
        per sampled frame (a frame without one reads -1), averaged over frames and over references,
        its minimum over frames averaged over references, and the minimum over both."""
        fd, out = self.face_dim, []
        keep = f.ref_mask.to(f.refs.dtype)  # (B, K)
        count = keep.sum(1).clamp(min=1)
        for sl in (slice(0, fd), slice(fd, f.refs.shape[-1])):
            s = torch.einsum("bnmd,bkd->bnmk", f.dets[..., sl], f.refs[..., sl])
            s = torch.where(f.det_mask[..., None], s, torch.full_like(s, -1.0))
            best = s.max(2).values  # (B, N, K)
            low = best.min(1).values  # (B, K)
            out += [(best.mean(1) * keep).sum(1) / count, (low * keep).sum(1) / count,
                    torch.where(f.ref_mask, low, torch.full_like(low, 2.0)).min(1).values]
        return torch.stack(out, 1)

    def forward(self, f: SpriteFeatures) -> torch.Tensor:
        if self.readout == "linear":
            return self.linear(torch.cat([f.summary, self.identity_aggregates(f)], -1)).squeeze(-1)  # (B,)
        b, k = f.ref_mask.shape
        n, m = f.det_mask.shape[1:]
        refs = self.ref_in(f.refs) + self.slot[:k]  # (B, K, dim)
        det_in = torch.cat([f.dets, self.similarities(f)], -1)
        dets = (self.det_in(det_in) + self.time[:n, None]).flatten(1, 2)  # (B, N*M, dim)
        summary = self.summary_in(f.summary)[:, None]  # (B, 1, dim)
        tokens = torch.cat([self.reward_token.expand(b, -1, -1), summary, refs, dets], 1)
        mask = torch.cat([torch.ones(b, 2, dtype=torch.bool, device=refs.device), f.ref_mask,
                          f.det_mask.flatten(1)], 1)
        out = self.encoder(tokens, src_key_padding_mask=~mask)
        return self.head(self.norm(out[:, 0])).squeeze(-1)  # (B,)


class SpriteRewardModel(nn.Module):
    """The embedded default (module docstring)."""

    backbone = "sprites"

    def __init__(self, frames: int = 5, dim: int = 64, layers: int = 2, heads: int = 4,
                 judge_folder: str | None = None, readout: str = "transformer"):
        super().__init__()
        self.featurizer = SpriteFeaturizer(judge_folder, frames)
        self.config = dict(backbone="sprites", frames=frames, dim=dim, layers=layers, heads=heads,
                           judge_folder=judge_folder, judge_sha256=judge_fingerprint(judge_folder), readout=readout)
        self.head = SpriteRewardHead(self.featurizer.dim, dim, layers, heads, frames,
                                     face_dim=self.featurizer.judge.face.dim,
                                     summary_dim=len(SUMMARY_METRICS) + len(SUMMARY_CHECKS), readout=readout)

    def features(self, videos, references, prompts: Sequence[str | None]) -> SpriteFeatures:
        return self.featurizer(videos, references, prompts)

    def score_features(self, f: SpriteFeatures) -> torch.Tensor:
        return self.head(f)

    def score(self, videos: Sequence[np.ndarray], references: Sequence[Sequence[np.ndarray]],
              prompts: Sequence[str | None]) -> torch.Tensor:
        return self.head(self.features(videos, references, prompts))

    def trainable(self) -> dict[str, nn.Parameter]:
        return {f"head.{n}": p for n, p in self.head.named_parameters()}

    def save(self, folder: str | Path) -> Path:
        return _save(self, folder, {f"head.{n}": p for n, p in self.head.state_dict().items()})


# ------------------------------------------------------------------ real: Qwen2.5-VL + LoRA + head
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class QwenRewardModel(nn.Module):
    """Qwen2.5-VL scalar reward model (module docstring)."""

    backbone = "qwen"

    def __init__(self, vlm: nn.Module, tokenizer: Any, image_processor: Any, frames: int = 4, lora_rank: int = 8,
                 lora_alpha: int = 8, base_path: str | None = None):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        self.config = dict(backbone="qwen", frames=frames, lora_rank=lora_rank, lora_alpha=lora_alpha,
                           base_path=base_path)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        if REWARD_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.reward_token_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        if vlm.get_input_embeddings().num_embeddings <= self.reward_token_id:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the new token's embedding row is a fixed function of the base
                vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        vlm.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=list(LORA_TARGETS),
                                           init_lora_weights=True), vlm.language_model)
        self.vlm = vlm
        hidden = int(vlm.config.text_config.hidden_size)
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden))

    @classmethod
    def from_pretrained(cls, folder: str | Path, frames: int = 4, lora_rank: int = 8, lora_alpha: int = 8,
                        dtype: torch.dtype | None = None) -> "QwenRewardModel":
        """A fresh reward model on a local Qwen2.5-VL folder (nothing is downloaded)."""
        from idcrafter.encoders.vlm import VLMGrounder

        g = VLMGrounder.from_pretrained(folder, dtype=dtype)
        return cls(g.model, g.tokenizer, g.image_processor, frames, lora_rank, lora_alpha, base_path=str(folder))

    def trainable(self) -> dict[str, nn.Parameter]:
        out = {f"vlm.{n}": p for n, p in self.vlm.named_parameters() if "lora_" in n}
        out.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        for p in out.values():
            p.requires_grad_(True)
        return out

    def build_inputs(self, videos, references, prompts) -> dict[str, torch.Tensor]:
        from idcrafter.encoders.vlm import IMAGE_PAD, SYSTEM_PROMPT, VISION_END, VISION_START, _as_rgb

        images, texts = [], []
        per_sample = []
        for video, refs in zip(videos, references):
            frames = list(sample_frames(video, self.config["frames"]))
            imgs = [_as_rgb(r) for r in refs] + [np.ascontiguousarray(f) for f in frames]
            per_sample.append((len(refs), len(frames)))
            images += imgs
        vis = dict(self.image_processor(images=images, return_tensors="pt"))
        merge = self.image_processor.merge_size
        counts = [int(g.prod()) // merge ** 2 for g in vis["image_grid_thw"]]
        start = 0
        for (k, n), prompt in zip(per_sample, prompts):
            c = counts[start: start + k + n]
            start += k + n
            refs = "".join(f"Subject {i + 1}: {VISION_START}{IMAGE_PAD * c[i]}{VISION_END}\n" for i in range(k))
            frames = "".join(f"Frame {i + 1}: {VISION_START}{IMAGE_PAD * c[k + i]}{VISION_END}\n" for i in range(n))
            texts.append(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{refs}{frames}"
                         f"Prompt: {prompt or ''}<|im_end|>\n<|im_start|>assistant\n{REWARD_TOKEN}")
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
        image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if int((ids == image_id).sum()) != sum(counts):
            raise RuntimeError("the tokenizer split <|image_pad|>: tokenizer and model do not match")
        last = torch.tensor([len(r) - 1 for r in rows])
        if not bool((ids[torch.arange(len(rows)), last] == self.reward_token_id).all()):
            raise RuntimeError(f"the tokenizer split {REWARD_TOKEN}")
        return dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == image_id).long(), last=last, **vis)

    def score(self, videos, references, prompts: Sequence[str | None]) -> torch.Tensor:
        prompts = _check_prompts(prompts, len(videos))
        inputs = self.build_inputs(videos, references, prompts)
        last = inputs.pop("last")
        device = next(self.head.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        out = self.vlm(**inputs, use_cache=False, return_dict=True)
        h = out.last_hidden_state[torch.arange(len(last)), last.to(device)]  # (B, D) at <|reward|>
        return self.head(h.float()).squeeze(-1)

    def save(self, folder: str | Path) -> Path:
        """Adapter, head and the reward token's embedding row (the base stays in its own folder)."""
        if not self.config["base_path"]:
            raise InputError("this reward model was not built from a local Qwen2.5-VL folder: save the base with "
                             "VLMGrounder.save_pretrained and build it with QwenRewardModel.from_pretrained")
        state = {f"vlm.{n}": p for n, p in self.vlm.state_dict().items() if "lora_" in n}
        state.update({f"head.{n}": p for n, p in self.head.state_dict().items()})
        state["reward_token_embedding"] = self.vlm.get_input_embeddings().weight[self.reward_token_id].detach()
        return _save(self, folder, state)


# ------------------------------------------------------------------ save / load
def _save(model: nn.Module, folder: str | Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save

    from idcrafter.utils.io import atomic_write_bytes, atomic_write_json, ensure_dir

    folder = ensure_dir(folder)
    atomic_write_bytes(Path(folder) / "reward_model.safetensors",
                       save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
    atomic_write_json(Path(folder) / "config.json", model.config)
    return Path(folder)


def _check_judge(folder: Path, cfg: dict, model: "SpriteRewardModel") -> None:
    """Refuse a judge whose parts changed since the reward model was trained on its features."""
    from idcrafter.errors import CorruptFileError
    from idcrafter.judge.judge import judge_folder

    saved, now = cfg.get("judge_sha256"), model.config["judge_sha256"]
    if saved is None:  # saved before fingerprints were recorded: nothing to compare
        return
    changed = [p for p in sorted(set(saved) | set(now)) if saved.get(p) != now.get(p)]
    if changed:
        where = judge_folder(cfg.get("judge_folder"), "main")
        raise CorruptFileError(
            f"the reward model in {folder} was trained on the features of the judge in {where}, whose parts "
            f"{', '.join(changed)} changed since (retrained or added): retrain it with `idcrafter train "
            f"reward-model`, or set model.judge_path to a copy of the judge it was trained with")


def load_reward_model(folder: str | Path) -> nn.Module:
    """A saved reward model (either backbone) from its local folder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_file, weights = folder / "config.json", folder / "reward_model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise MissingWeightsError(f"no reward model in {folder}: it needs config.json and reward_model.safetensors "
                                  "(written by `idcrafter train reward-model`)")
    cfg = json.loads(cfg_file.read_text())
    state = load_file(str(weights))
    if cfg.get("backbone") == "sprites":
        model: nn.Module = SpriteRewardModel(cfg["frames"], cfg["dim"], cfg["layers"], cfg["heads"],
                                             cfg["judge_folder"], cfg.get("readout", "transformer"))
        _check_judge(folder, cfg, model)
        model.head.load_state_dict({k[len("head."):]: v for k, v in state.items()}, strict=True)
    elif cfg.get("backbone") == "qwen":
        model = QwenRewardModel.from_pretrained(cfg["base_path"], cfg["frames"], cfg["lora_rank"], cfg["lora_alpha"])
        with torch.no_grad():
            model.vlm.get_input_embeddings().weight[model.reward_token_id] = state.pop("reward_token_embedding")
        missing = model.load_state_dict(state, strict=False)
        bad = [k for k in missing.missing_keys if "lora_" in k or k.startswith("head.")]
        if bad or missing.unexpected_keys:
            raise InputError(f"{weights} does not match this reward model: {bad[:3]} {missing.unexpected_keys[:3]}")
    else:
        raise InputError(f"{cfg_file}: unknown reward model backbone {cfg.get('backbone')!r}")
    return model.eval()


# ------------------------------------------------------------------ training: `idcrafter train reward-model`
def pairwise_accuracy(r_a: torch.Tensor, r_b: torch.Tensor, target: torch.Tensor) -> float:
    """Share of non-tie pairs whose better clip scores higher (ties excluded); NaN without any."""
    keep = target != 0
    if not bool(keep.any()):
        return float("nan")
    return float(((r_a[keep] - r_b[keep]).sign() == target[keep].sign()).float().mean())
