"""Model backends of OpenS2V-Eval's metrics, from local weights only.

- `IRBackbone`: the IR-ResNet face backbone CurricularFace's `glint360k_curricular_face_r101`
  checkpoint was trained with (TFace's `Backbone(input_size=112, num_layers=100, mode="ir")`),
  written here with the same module layout so that checkpoint loads strictly.
- `InsightFaceDetector`: insightface's `FaceAnalysis` detection model (boxes + 5 landmarks) from a
  local model folder at det size 320 x 320, as `get_facesim.py` prepares it.
- `FaceSimCur`: the published FaceSim-Cur of one video (see its docstring).
- `GmeEmbedder`: GME (`gme-Qwen2-VL`) text / image embeddings, built as `GmeQwen2VL.embed` builds
  them, from a local folder.
- `VLMQualityRater`: window ratings for MotionSmoothness with Q-Align's prompt and its five
  levels on a local Qwen-VL. Departure: the published metric uses Q-Align itself (mPLUG-Owl2
  "one-align"), an architecture transformers does not ship; a Qwen-VL rater gives other numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.eval.metrics import face_sim_from_frames, sample_frames

IR_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


# ---------------------------------------------------------------------- CurricularFace IR-101
class _IRUnit(nn.Module):
    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        self.shortcut_layer = nn.MaxPool2d(1, stride) if cin == depth else nn.Sequential(
            nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(depth), nn.PReLU(depth),
                                       nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
    """(B, 3, 112, 112) in [-1, 1] -> (B, dim) (not normalised). `units` per stage: IR-101 is
    (3, 13, 30, 3) at widths (64, 128, 256, 512); tests build tiny ones."""

    def __init__(self, units: Sequence[int] = IR_UNITS[100], widths: Sequence[int] = (64, 128, 256, 512),
                 dim: int = 512, input_size: int = 112):
        super().__init__()
        if len(units) != 4 or len(widths) != 4 or input_size % 16:
            raise InputError("an IR backbone has 4 stages and an input side divisible by 16")
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))
        body, cin = [], widths[0]
        for n, depth in zip(units, widths):
            body += [_IRUnit(cin, depth, 2)] + [_IRUnit(depth, depth, 1) for _ in range(n - 1)]
            cin = depth
        self.body = nn.Sequential(*body)
        side = input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(cin * side * side, dim), nn.BatchNorm1d(dim, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a plain torch file (`weights_only=True`, never unpickled);
    a `module.` prefix (DataParallel) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot read {path} as a plain state dict ({type(exc).__name__}): "
                             "convert it to safetensors") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


class CurricularFaceEmbedder:
    """Embeds a 224 x 224 aligned RGB face as the published script does: `cv2.resize` to 112 x 112
    (bilinear), CHW, /255, -0.5, /0.5, the backbone, L2-normalised."""

    def __init__(self, weights: str | Path | nn.Module, device: str | torch.device = "cpu",
                 units: Sequence[int] = IR_UNITS[100]):
        self.device = torch.device(device)
        if isinstance(weights, nn.Module):
            self.model = weights
        else:
            self.model = IRBackbone(units)
            try:
                self.model.load_state_dict(load_state(weights), strict=True)
            except RuntimeError as exc:
                raise InputError(f"{weights} is not an IR-101 CurricularFace backbone: "
                                 f"{str(exc).splitlines()[0]}") from exc
        self.model = self.model.to(self.device).eval()

    @torch.no_grad()
    def embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        import cv2

        img = cv2.resize(aligned_rgb, (112, 112))
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0).float().to(self.device)
        x = x.div(255).sub(0.5).div(0.5)
        e = self.model(x).float().cpu().numpy()[0]
        return e / np.linalg.norm(e)


# ---------------------------------------------------------------------- face detection + alignment
class KeypointDetector(Protocol):
    """Faces in a BGR uint8 image: (box (4,) x0 y0 x1 y1, landmarks (5, 2)) each."""

    def detect(self, image_bgr: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]: ...


class InsightFaceDetector:
    """insightface `FaceAnalysis` detection (SCRFD / RetinaFace ONNX) from a local model folder."""

    def __init__(self, folder: str | Path, det_size: tuple[int, int] = (320, 320)):
        folder = Path(folder)
        if not folder.is_dir() or not any(folder.glob("*.onnx")):
            raise MissingWeightsError(f"no insightface model folder at {folder}: put OpenS2V-Weight's face_extractor "
                                      "(its detection .onnx, e.g. scrfd_10g_bnkps.onnx / det_10g.onnx) there")
        try:
            from insightface.app import FaceAnalysis
        except ImportError as exc:
            raise InputError(f"cannot import insightface ({exc}): pip install --no-deps insightface==2.1") from exc
        try:
            self.app = FaceAnalysis(name=str(folder.resolve()), allowed_modules=["detection"],
                                    providers=["CPUExecutionProvider"])
        except AssertionError:
            raise MissingWeightsError(f"{folder} holds no face detection model insightface recognises") from None
        self.app.prepare(ctx_id=-1, det_size=det_size)

    def detect(self, image_bgr: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.asarray(f.bbox, np.float64), np.asarray(f.kps, np.float64))
                for f in self.app.get(image_bgr) if f.kps is not None]


def _largest(faces: list[tuple[np.ndarray, np.ndarray]]):
    return sorted(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[-1] if faces else None


class FaceSimCur:
    """FaceSim-Cur of one video against one reference, as `get_facesim.py` computes it.

    Reference and frames: RGB -> BGR; the largest detected face (by box area); a reference
    without one is padded by 25% of its height / width on each side with grey (128) and
    detected again (its landmarks shifted back); `face_align.norm_crop` to 224 x 224 (BGR),
    back to RGB, then `CurricularFaceEmbedder.embed`. Frames: 32 at `sample_frames`; per frame
    the cosine with the reference, clipped at 0; frames with no face or a cosine of 0 dropped;
    the mean (0 when none). `score` returns None when the reference has no face (the published
    script then skips the case).
    """

    def __init__(self, detector: KeypointDetector, embedder: CurricularFaceEmbedder, frames: int = 32):
        self.detector, self.embedder, self.frames = detector, embedder, int(frames)

    def _aligned(self, rgb: np.ndarray, pad: bool) -> np.ndarray | None:
        import cv2
        from insightface.utils import face_align

        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        face = _largest(self.detector.detect(bgr))
        if face is None and pad:
            h, w = bgr.shape[:2]
            top, left = int(h * 0.25), int(w * 0.25)
            padded = cv2.copyMakeBorder(bgr, top, top, left, left, cv2.BORDER_CONSTANT, value=(128, 128, 128))
            face = _largest(self.detector.detect(padded))
            if face is not None:
                face = (face[0], face[1] - np.array([left, top], np.float64))
        if face is None:
            return None
        aligned = face_align.norm_crop(bgr, landmark=face[1].astype(np.float32), image_size=224)
        return cv2.cvtColor(aligned, cv2.COLOR_BGR2RGB)

    def reference_embedding(self, ref_rgb: np.ndarray) -> np.ndarray | None:
        face = self._aligned(ref_rgb, pad=True)
        return None if face is None else self.embedder.embed(face)

    def score(self, frames: np.ndarray, ref_rgb: np.ndarray) -> float | None:
        ref = self.reference_embedding(ref_rgb)
        if ref is None:
            return None
        cosines: list[float | None] = []
        for i in sample_frames(len(frames), self.frames):
            face = self._aligned(frames[int(i)], pad=True)
            cosines.append(None if face is None else float(np.dot(ref, self.embedder.embed(face))))
        return face_sim_from_frames(cosines)


# ---------------------------------------------------------------------- GME
GME_TEXT_INSTRUCTION = "Find an image that matches the given text."
IMAGE_FACTOR, GME_MIN_PIXELS, GME_MAX_PIXELS = 28, 4 * 28 * 28, 16384 * 28 * 28


def gme_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = GME_MIN_PIXELS,
               max_pixels: int = GME_MAX_PIXELS) -> tuple[int, int]:
    """GME's `smart_resize` (sides rounded to multiples of 28, area kept within bounds); the
    aspect-ratio cap of 200 is not reached by video frames and is not applied."""
    import math

    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


class GmeEmbedder:
    """GME embeddings: the final hidden state of the last token (`<|endoftext|>` after the
    assistant tag), L2-normalised. Texts use the query instruction; images the default system
    prompt. Images are first resized with `gme_resize` (PIL's default filter), then by the image
    processor within [min_pixels, max_pixels] (GME: 256 and 1280 image tokens)."""

    def __init__(self, folder: str | Path | None, device: str | torch.device = "cpu",
                 min_pixels: int = 256 * 28 * 28, max_pixels: int = 1280 * 28 * 28, batch_size: int = 8):
        from idcrafter.rewards.vlm import LocalVLM

        self.vlm = LocalVLM(folder, device, head=False, min_pixels=min_pixels, max_pixels=max_pixels)
        self.batch_size = int(batch_size)

    def _embed(self, turns: list) -> np.ndarray:
        out = []
        for i in range(0, len(turns), self.batch_size):
            h = self.vlm.last_hidden(turns[i:i + self.batch_size])
            out.append(torch.nn.functional.normalize(h, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1))

    def texts(self, texts: Sequence[str], instruction: str = GME_TEXT_INSTRUCTION) -> np.ndarray:
        from idcrafter.rewards.vlm import ChatTurn

        return self._embed([ChatTurn([], t, system=instruction, end="<|endoftext|>") for t in texts])

    def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        from PIL import Image

        from idcrafter.rewards.vlm import ChatTurn

        turns = []
        for im in images:
            pil = Image.fromarray(np.asarray(im, np.uint8)).convert("RGB")
            h, w = gme_resize(pil.height, pil.width)
            turns.append(ChatTurn([np.asarray(pil.resize((w, h)))], "", end="<|endoftext|>"))
        return self._embed(turns)


# ---------------------------------------------------------------------- MotionSmoothness rater
QALIGN_PROMPT = "How would you rate the quality of this video?"
QALIGN_ANSWER = "The quality of the video is"
QALIGN_LEVELS = ("excellent", "good", "fair", "poor", "bad")
QALIGN_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)


def expand_to_square(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Q-Align's `expand2square`: pad the short side (centred, top/left first) with `colour`."""
    h, w = image.shape[:2]
    if h == w:
        return image
    s = max(h, w)
    out = np.empty((s, s, 3), np.uint8)
    out[:] = colour
    y, x = (s - h) // 2, (s - w) // 2
    out[y:y + h, x:x + w] = image
    return out


class VLMQualityRater:
    """Rates windows of frames (each window one multi-image turn) with Q-Align's prompt: the
    softmax over the next-token logits of the five level words, dotted with (1, .75, .5, .25, 0).
    Frames are padded square with the processor's mean colour, as Q-Align does."""

    def __init__(self, folder: str | Path | None, device: str | torch.device = "cpu", max_pixels: int | None = None,
                 batch_size: int = 8):
        from idcrafter.rewards.vlm import LocalVLM

        self.vlm = LocalVLM(folder, device, head=True, max_pixels=max_pixels)
        self.levels = [self._level_id(w) for w in QALIGN_LEVELS]
        mean = getattr(self.vlm.processor, "image_mean", (0.5, 0.5, 0.5))
        self.colour = tuple(int(x * 255) for x in mean)
        self.batch_size = int(batch_size)

    def _level_id(self, word: str) -> int:
        for text in (" " + word, word):
            try:
                return self.vlm.token_id(text)
            except InputError:
                continue
        raise InputError(f"the level word {word!r} is not one token of this VLM's tokenizer")

    def __call__(self, windows: list[list[np.ndarray]]) -> list[float]:
        from idcrafter.rewards.vlm import ChatTurn

        weights = torch.tensor(QALIGN_WEIGHTS)
        out: list[float] = []
        for i in range(0, len(windows), self.batch_size):
            turns = [ChatTurn([expand_to_square(f, self.colour) for f in w], QALIGN_PROMPT, assistant=QALIGN_ANSWER)
                     for w in windows[i:i + self.batch_size]]
            out += (self.vlm.next_token_probs(turns, self.levels) @ weights).tolist()
        return out


def backend_note(name: str) -> str:
    """What a backend departs from in the published metric (for reports)."""
    return {"motion_smoothness": "rated by a local Qwen-VL with Q-Align's prompt, not Q-Align (mPLUG-Owl2)",
            "natural": "judged by the configured VLM (published: GPT-4o), with idcrafter's rubric unless "
                       "--natural-prompt gives the published one"}.get(name, "")


# ---------------------------------------------------------------------- NexusScore detector
class OwlImagePromptDetector:
    """Image-prompted detection with OWLv2 (`Owlv2ForObjectDetection.image_guided_detection`)
    from a local folder, with NexusScore's post-processing: score > 0.5, NMS at IoU 0.7, at most
    100 boxes. Departure: NexusScore's detector is YOLO-World with image prompts (mmyolo), which
    this build does not ship; OWLv2 gives other detections, so NexusScores differ."""

    def __init__(self, folder: str | Path | None, device: str | torch.device = "cpu", score: float = 0.5,
                 nms: float = 0.7, max_boxes: int = 100):
        from transformers import Owlv2ForObjectDetection
        from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

        if folder is None or not (Path(folder) / "config.json").is_file():
            raise MissingWeightsError(f"no OWLv2 checkpoint at {folder}: put an Owlv2ForObjectDetection folder "
                                      "(e.g. google/owlv2-base-patch16-ensemble) there")
        self.device = torch.device(device)
        self.model = Owlv2ForObjectDetection.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.processor = Owlv2ImageProcessorPil.from_pretrained(folder, local_files_only=True) \
            if (Path(folder) / "preprocessor_config.json").is_file() else Owlv2ImageProcessorPil()
        self.score, self.nms, self.max_boxes = float(score), float(nms), int(max_boxes)

    @torch.no_grad()
    def detect(self, frame: np.ndarray, prompt: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """(box x0 y0 x1 y1 in frame pixels, confidence), best first."""
        from PIL import Image

        px = self.processor(images=[Image.fromarray(frame)], return_tensors="pt")["pixel_values"].to(self.device)
        qx = self.processor(images=[Image.fromarray(np.asarray(prompt, np.uint8))],
                            return_tensors="pt")["pixel_values"].to(self.device)
        out = self.model.image_guided_detection(pixel_values=px, query_pixel_values=qx)
        side = max(frame.shape[:2])  # OWLv2 pads to a square before resizing
        res = self.processor.post_process_image_guided_detection(
            outputs=out, threshold=self.score, nms_threshold=self.nms, target_sizes=torch.tensor([[side, side]]))[0]
        order = torch.argsort(res["scores"], descending=True)[: self.max_boxes]
        h, w = frame.shape[:2]
        boxes = res["boxes"][order].cpu().numpy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return [(b, float(s)) for b, s in zip(boxes, res["scores"][order].tolist())]


def nexus_score(frames: np.ndarray, case, detector, gme: GmeEmbedder, count: int = 32) -> float:
    """NexusScore of one video, as `get_nexusscore.py` computes it (`metrics.nexus_from_detections`
    for the rule): each of 32 frames against each (reference, label) of `case.nexus_labels()`;
    every detection's crop (PIL's rounding of the box) is embedded by GME and compared with the
    reference image and with its label. Boxes of zero area are skipped (the script would fail on
    the video and leave it out; a video without any detection scores 0, which the Total leaves
    out likewise)."""
    from PIL import Image

    from idcrafter.eval.metrics import nexus_from_detections

    refs = case.references
    confs, crops, prompts, labels = [], [], [], []
    frames_with_detection = 0
    for i in sample_frames(len(frames), count):
        frame = frames[int(i)]
        found = False
        for r, label in case.opens2v.nexus_labels():
            dets = detector.detect(frame, refs[r])
            found = found or bool(dets)
            for box, conf in dets:
                crop = Image.fromarray(frame).crop(tuple(float(v) for v in box))
                if crop.width < 1 or crop.height < 1:
                    continue
                confs.append(conf)
                crops.append(np.asarray(crop))
                prompts.append(refs[r])
                labels.append(label)
        frames_with_detection += found
    if not crops:
        return 0.0
    local = gme.images(crops)
    image_sim = (gme.images(prompts) * local).sum(-1)
    text_sim = (gme.texts(labels) * local).sum(-1)
    return nexus_from_detections(list(zip(confs, text_sim.tolist(), image_sim.tolist())), frames_with_detection)
