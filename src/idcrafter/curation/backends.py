"""Model backends of the curation steps: compose (image edit), captioning, aesthetics.

Every backend loads from a local folder (`local_files_only=True`) or talks to an endpoint the
user runs; nothing is downloaded.

Compose (image edit): `compose(image, mask, request) -> (R, R, 3) uint8` reference, where
`request` = {"prompt", "seed", "size", "background", "class_label", "identity"}.
- `sprites`: `curation.sprites.SpriteComposer` (the embedded default).
- `diffusers`: any local image-edit `DiffusionPipeline` folder called as
  `pipe(prompt=..., image=PIL, num_inference_steps=..., guidance_scale=..., generator=...)`
  (InstructPix2Pix, Qwen-Image-Edit, FLUX Kontext and the like take these).
- `http`: POST `{"image": base64 PNG, "prompt", "seed"}` as JSON to `url`; the answer is either
  an image (Content-Type image/*) or JSON `{"image": base64 PNG}`.

Captioning: `caption(frames (T, H, W, 3), prompt) -> str`.
- `qwen`: a local Qwen2.5-VL folder (`Qwen2_5_VLForConditionalGeneration`), the frames given as
  images (the full processor needs torchvision, which the project never installs, so image tokens
  are expanded as in `encoders.vlm`), greedy decoding.
- `openai`: an OpenAI-compatible `/chat/completions` endpoint (vLLM, SGLang, ...), frames sent as
  PNG data URLs; the key is read from the environment variable `api_key_env` if set.

Aesthetics: `score(frames) -> float`.
- `sprites`: the judge's quality model (1 - predicted degradation / 1.5, in [0, 1]).
- `clip`: CLIP vision tower + the LAION aesthetic MLP (768-1024-128-64-16-1 on the L2-normalised
  image embedding; the same layout as the improved-aesthetic-predictor weights), from a local
  folder holding the CLIP model and `aesthetic_mlp.safetensors`; mean over frames (LAION scale 1-10).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from idcrafter.errors import InputError, MissingWeightsError


def png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8).copy()


def _finish(image: np.ndarray, request: dict) -> np.ndarray:
    from idcrafter.encoders.references import prepare_reference

    return prepare_reference(image, int(request["size"]), canvas=tuple(int(v) for v in request["background"]))


# ----------------------------------------------------------------------------- compose

class DiffusersComposer:
    """A local diffusers image-edit pipeline (see the module docstring)."""

    name = "diffusers"

    def __init__(self, path: str | Path | None = None, steps: int = 20, guidance: float = 4.0, pipe: Any = None):
        if pipe is None:
            if not path or not Path(path).is_dir():
                raise MissingWeightsError(f"compose.path {path!r} is not a folder: put a diffusers image-edit "
                                          "pipeline there (model_index.json and its parts)")
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
        self.pipe, self.steps, self.guidance = pipe, steps, guidance

    def compose(self, image: np.ndarray, mask: np.ndarray | None, request: dict) -> np.ndarray:
        import torch
        from PIL import Image

        gen = torch.Generator().manual_seed(int(request["seed"]))
        out = self.pipe(prompt=request["prompt"], image=Image.fromarray(image), num_inference_steps=self.steps,
                        guidance_scale=self.guidance, generator=gen, output_type="np")
        edited = np.asarray(out.images[0])
        if edited.dtype != np.uint8:
            edited = np.clip(edited * 255 + 0.5, 0, 255).astype(np.uint8)
        return _finish(edited, request)


class HTTPComposer:
    """An image-edit HTTP endpoint (protocol in the module docstring)."""

    name = "http"

    def __init__(self, url: str | None, timeout: float = 60.0):
        if not url:
            raise InputError("compose.backend = 'http' needs compose.url (the edit endpoint)")
        self.url, self.timeout = url, timeout

    def compose(self, image: np.ndarray, mask: np.ndarray | None, request: dict) -> np.ndarray:
        import requests

        body = {"image": png_b64(image), "prompt": request["prompt"], "seed": int(request["seed"])}
        resp = requests.post(self.url, json=body, timeout=self.timeout)
        resp.raise_for_status()
        if resp.headers.get("content-type", "").startswith("image/"):
            edited = decode_image(resp.content)
        else:
            edited = decode_image(base64.b64decode(resp.json()["image"]))
        return _finish(edited, request)


def build_composer(cfg) -> Any:
    from idcrafter.curation.sprites import SpriteComposer

    if cfg.backend == "sprites":
        return SpriteComposer(cfg.keep_background)
    if cfg.backend == "diffusers":
        return DiffusersComposer(cfg.path, cfg.steps, cfg.guidance)
    if cfg.backend == "http":
        return HTTPComposer(cfg.url, cfg.timeout)
    raise InputError(f"compose.backend {cfg.backend!r}: choose sprites, diffusers or http")


# ----------------------------------------------------------------------------- captioning

class OpenAICaptioner:
    name = "openai"

    def __init__(self, url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 160,
                 timeout: float = 120.0):
        if not url:
            raise InputError("caption.backend = 'openai' needs caption.url (e.g. http://127.0.0.1:8000/v1)")
        self.url, self.model, self.max_tokens, self.timeout = url.rstrip("/"), model, max_tokens, timeout
        self.key = os.environ.get(api_key_env) if api_key_env else None

    def caption(self, frames: np.ndarray, prompt: str) -> str:
        import requests

        content = [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64(f)}"}} for f in frames]
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        resp = requests.post(f"{self.url}/chat/completions", headers=headers, timeout=self.timeout,
                             json={"model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
                                   "messages": [{"role": "user", "content": content}]})
        resp.raise_for_status()
        return str(resp.json()["choices"][0]["message"]["content"]).strip()


class QwenCaptioner:
    """A local Qwen2.5-VL folder, greedy decoding over the sampled frames (see the module docstring)."""

    name = "qwen"

    def __init__(self, path: str | Path | None, max_new_tokens: int = 160, max_pixels: int = 448 * 448):
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from idcrafter.encoders.vlm import _image_processor

        folder = Path(path) if path else None
        if folder is None or not (folder / "config.json").is_file():
            raise MissingWeightsError(f"caption.path {path!r}: put a Qwen2.5-VL checkpoint folder there "
                                      "(config.json, *.safetensors, tokenizer.json, preprocessor_config.json)")
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.processor = _image_processor(folder, max_pixels)
        self.max_new_tokens = max_new_tokens

    def build_inputs(self, frames: np.ndarray, prompt: str) -> dict:
        import torch

        from idcrafter.encoders.vlm import IMAGE_PAD, SYSTEM_PROMPT, VISION_END, VISION_START

        proc = self.processor(images=[f for f in frames], return_tensors="pt")
        merge = self.processor.merge_size ** 2
        counts = [int(g.prod()) // merge for g in proc["image_grid_thw"]]
        vision = "".join(f"{VISION_START}{IMAGE_PAD * n}{VISION_END}" for n in counts)
        text = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{vision}{prompt}<|im_end|>\n"
                f"<|im_start|>assistant\n")
        ids = self.tokenizer(text, return_tensors="pt")
        pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"],
                "mm_token_type_ids": (ids["input_ids"] == pad_id).long(),
                "pixel_values": proc["pixel_values"], "image_grid_thw": proc["image_grid_thw"],
                "_len": torch.tensor(ids["input_ids"].shape[1])}

    def caption(self, frames: np.ndarray, prompt: str) -> str:
        import torch

        inputs = self.build_inputs(frames, prompt)
        n = int(inputs.pop("_len"))
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, n:], skip_special_tokens=True).strip()


def build_captioner(cfg) -> Any:
    if cfg.backend == "keep":
        return None
    if cfg.backend == "qwen":
        return QwenCaptioner(cfg.path, cfg.max_new_tokens)
    if cfg.backend == "openai":
        return OpenAICaptioner(cfg.url, cfg.model, cfg.api_key_env, cfg.max_new_tokens, cfg.timeout)
    raise InputError(f"caption.backend {cfg.backend!r}: choose keep, qwen or openai")


# ----------------------------------------------------------------------------- open-vocabulary detection

class OwlDetector:
    """Open-vocabulary subject detector: an OWL-ViT / OWLv2 folder (`AutoModelForZeroShotObjectDetection`
    + its processor), queried with class names. Scores are sigmoid(logits) per patch and query, the
    best query per patch kept, boxes (normalised cx cy w h of the padded square input) mapped back
    to pixels, greedy NMS at IoU 0.5; `Detection.label` is the query name."""

    name = "owl"

    def __init__(self, path: str | Path | None, queries: list[str], threshold: float = 0.2, max_det: int = 8):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        folder = Path(path) if path else None
        if folder is None or not (folder / "config.json").is_file():
            raise MissingWeightsError(f"subjects.detector_path {path!r}: put an OWL-ViT / OWLv2 folder there "
                                      "(config.json, weights, preprocessor_config.json, tokenizer files)")
        if not queries:
            raise InputError("subjects.queries must name at least one class for the owl detector")
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, local_files_only=True).eval()
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.queries, self.threshold, self.max_det = list(queries), threshold, max_det

    def detect(self, image: np.ndarray) -> list:
        import torch

        from idcrafter.judge.interfaces import Detection

        inputs = self.processor(text=[self.queries], images=[image], return_tensors="pt", padding="max_length",
                                truncation=True)
        with torch.no_grad():
            out = self.model(**inputs)
        probs = out.logits[0].sigmoid()  # (patches, queries)
        score, label = probs.max(-1)
        h, w = image.shape[:2]
        side = max(h, w)  # OWL pads to a square at the bottom / right
        cx, cy, bw, bh = out.pred_boxes[0].unbind(-1)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * side
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = [int(i) for i in torch.argsort(score, descending=True) if score[i] >= self.threshold]
        found: list = []
        for i in keep:
            b = boxes[i].numpy().astype(np.float32)
            if b[2] - b[0] < 1 or b[3] - b[1] < 1 or any(_iou(b, f.box) > 0.5 for f in found):
                continue
            det = Detection(box=b, score=float(score[i]))
            object.__setattr__(det, "label", self.queries[int(label[i])])
            found.append(det)
            if len(found) >= self.max_det:
                break
        return found


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


# ----------------------------------------------------------------------------- aesthetics

class SpriteAesthetic:
    name = "sprites"

    def __init__(self, folder: str | None = None):
        from idcrafter.judge.quality import QualityModel

        self.model = QualityModel.load(folder)

    def score(self, frames: np.ndarray) -> float:
        from idcrafter.judge.judge import check_video

        return float(self.model.score(check_video(np.asarray(frames), (48, 48))))


def aesthetic_mlp():
    """The LAION aesthetic predictor's MLP (dropouts omitted: inference only)."""
    from torch import nn

    return nn.Sequential(nn.Linear(768, 1024), nn.Identity(), nn.Linear(1024, 128), nn.Identity(),
                         nn.Linear(128, 64), nn.Identity(), nn.Linear(64, 16), nn.Linear(16, 1))


class ClipAesthetic:
    """CLIP image embedding -> LAION MLP (see the module docstring)."""

    name = "clip"

    def __init__(self, folder: str | Path | None):
        import torch
        from safetensors.torch import load_file
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        folder = Path(folder) if folder else None
        mlp_file = folder / "aesthetic_mlp.safetensors" if folder else None
        if folder is None or not (folder / "config.json").is_file() or not mlp_file.is_file():
            raise MissingWeightsError(f"filters.aesthetic_path {folder}: needs a CLIP folder (config.json, weights, "
                                      "preprocessor_config.json) and aesthetic_mlp.safetensors")
        self.clip = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True).eval()
        self.proc = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        dim = int(self.clip.config.projection_dim)
        mlp = aesthetic_mlp()
        if dim != 768:
            mlp[0] = torch.nn.Linear(dim, 1024)
        mlp.load_state_dict(load_file(str(mlp_file)))
        self.mlp = mlp.eval()

    def score(self, frames: np.ndarray) -> float:
        import torch

        with torch.no_grad():
            pix = self.proc(images=[f for f in frames], return_tensors="pt")["pixel_values"]
            emb = self.clip(pixel_values=pix).image_embeds
            emb = emb / emb.norm(dim=-1, keepdim=True)
            return float(self.mlp(emb).mean())


def build_aesthetic(kind: str, path: str | None) -> Any:
    if kind == "none":
        return None
    if kind == "sprites":
        return SpriteAesthetic(path)
    if kind == "clip":
        return ClipAesthetic(path)
    raise InputError(f"filters.aesthetic {kind!r}: choose auto, sprites, clip or none")
