"""Local Qwen2-VL / Qwen2.5-VL checkpoints as judges and embedders (no processor, no torchvision).

The full `AutoProcessor` of these models needs torchvision (its video processor), which this
project never installs, so chat inputs are built here the way the processor would: the PIL
image processor (`Qwen2VLImageProcessorPil`) gives `pixel_values` and `image_grid_thw`, each
image becomes `<|vision_start|>` + `grid_t * grid_h * grid_w / merge**2` x `<|image_pad|>` +
`<|vision_end|>`, and `mm_token_type_ids` (1 on image tokens) lets transformers 5.x compute the
3-D M-RoPE positions. Batches are right-padded; `last_positions` is each row's last real token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from idcrafter.errors import InputError, MissingWeightsError

VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
DEFAULT_SYSTEM = "You are a helpful assistant."
_HINT = ("put a Qwen2-VL / Qwen2.5-VL checkpoint there (config.json, *.safetensors, tokenizer.json, "
         "preprocessor_config.json)")


@dataclass
class ChatTurn:
    """One user turn: images first (in order), then text; `assistant` starts the reply."""

    images: list[np.ndarray]
    text: str
    system: str = DEFAULT_SYSTEM
    assistant: str = ""
    end: str = ""  # appended after the assistant prefix (GME appends <|endoftext|>)


class LocalVLM:
    """A Qwen2(.5)-VL checkpoint from a local folder. `head=True` loads the LM head (judges that
    read next-token probabilities); `head=False` the bare model (embedders)."""

    def __init__(self, folder: str | Path | None, device: str | torch.device = "cpu", head: bool = True,
                 dtype: torch.dtype | None = None, min_pixels: int | None = None, max_pixels: int | None = None):
        from transformers import AutoConfig, AutoTokenizer

        if folder is None or not Path(folder).is_dir():
            raise MissingWeightsError(f"VLM folder not found: {folder}: {_HINT}")
        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
            raise MissingWeightsError(f"no config.json or tokenizer.json in {folder}: {_HINT}")
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        cls = _model_class(config.model_type, head)
        self.device = torch.device(device)
        self.model = cls.from_pretrained(folder, local_files_only=True, dtype=dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.processor = _image_processor(folder, min_pixels, max_pixels)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if self.image_token_id != self.model.config.image_token_id:
            raise InputError(f"the tokenizer in {folder} maps {IMAGE_PAD} to {self.image_token_id} but the model "
                             f"expects {self.model.config.image_token_id}: tokenizer and model do not match")

    def build(self, turns: Sequence[ChatTurn]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs of a right-padded batch and (B,) index of each row's last real token."""
        flat = [_rgb(im) for t in turns for im in t.images]
        vis: dict[str, torch.Tensor] = {}
        counts: list[int] = []
        if flat:
            vis = dict(self.processor(images=flat, return_tensors="pt"))
            merge = self.processor.merge_size
            counts = [int(g.prod()) // merge ** 2 for g in vis["image_grid_thw"]]
        texts, start = [], 0
        for t in turns:
            if any(tok in t.text for tok in (VISION_START, VISION_END, IMAGE_PAD)):
                raise InputError("a prompt contains a vision placeholder token: remove it")
            images = "".join(f"{VISION_START}{IMAGE_PAD * n}{VISION_END}" for n in counts[start:start + len(t.images)])
            start += len(t.images)
            texts.append(f"<|im_start|>system\n{t.system}<|im_end|>\n<|im_start|>user\n{images}{t.text}<|im_end|>\n"
                         f"<|im_start|>assistant\n{t.assistant}{t.end}")
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)  # (B, L)
        mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
        if int((ids == self.image_token_id).sum()) != sum(counts):
            raise RuntimeError("the tokenizer split the image placeholder tokens")
        inputs = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == self.image_token_id).long(), **vis)
        return {k: v.to(self.device) for k, v in inputs.items()}, mask.sum(1) - 1

    def token_id(self, text: str) -> int:
        """The id of `text` as one token (InputError if the tokenizer splits it)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"{text!r} is not a single token of this VLM's tokenizer (got {len(ids)} tokens)")
        return int(ids[0])

    @torch.no_grad()
    def next_token_probs(self, turns: Sequence[ChatTurn], candidates: Sequence[int]) -> torch.Tensor:
        """(B, C) softmax over the candidate tokens' logits at the position after each row."""
        inputs, last = self.build(turns)
        logits = self.model(**inputs, use_cache=False).logits  # (B, L, V)
        rows = logits[torch.arange(len(turns), device=logits.device), last.to(logits.device)]  # (B, V)
        return torch.softmax(rows[:, list(candidates)].float(), dim=-1).cpu()

    @torch.no_grad()
    def last_hidden(self, turns: Sequence[ChatTurn]) -> torch.Tensor:
        """(B, D) final hidden state at each row's last real token."""
        inputs, last = self.build(turns)
        out = self.model(**inputs, use_cache=False, return_dict=True)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out.hidden_states[-1]
        return h[torch.arange(len(turns), device=h.device), last.to(h.device)].float().cpu()


def _model_class(model_type: str, head: bool) -> Any:
    import transformers as T

    table = {"qwen2_5_vl": (T.Qwen2_5_VLForConditionalGeneration, T.Qwen2_5_VLModel),
             "qwen2_vl": (T.Qwen2VLForConditionalGeneration, T.Qwen2VLModel)}
    if model_type not in table:
        raise InputError(f"unsupported VLM type {model_type!r}: use a Qwen2-VL or Qwen2.5-VL checkpoint")
    return table[model_type][0 if head else 1]


def _image_processor(folder: Path, min_pixels: int | None, max_pixels: int | None) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if (folder / "preprocessor_config.json").is_file():
        return Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True, **kwargs)
    return Qwen2VLImageProcessorPil(**kwargs)


def _rgb(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InputError(f"VLM images must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return arr
