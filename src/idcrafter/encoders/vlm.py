"""Qwen2.5-VL grounder: reads the prompt together with the N reference images.

The VLM sees one chat turn in which every reference is introduced by its slot number, then the
prompt, so its hidden states can bind phrases ("the person with red hair") to references:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    Subject 1: <|vision_start|><|image_pad|> x n_1 <|vision_end|>\\n Subject 2: ... \\n
    Prompt: {prompt}<|im_end|>\\n<|im_start|>assistant\\n

Why not `Qwen2_5_VLProcessor`: it needs torchvision (its video processor), which this project
never installs. We build the PIL image processor (`Qwen2VLImageProcessorPil`) and expand every
image placeholder ourselves exactly as the processor does: `grid_t * grid_h * grid_w /
merge_size**2` `<|image_pad|>` tokens between `<|vision_start|>` and `<|vision_end|>`, plus the
`mm_token_type_ids` (1 on image tokens) that transformers 5.x needs to compute the 3-D M-RoPE
positions (without them it silently falls back to 1-D positions).

Batches are **right-padded**: the LM is causal, so real tokens never see the padding and their
states equal the unbatched ones; padded positions of the returned states are zeroed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from idcrafter.encoders.text import DEFAULT_WORDS, build_word_tokenizer
from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.utils.hooks import execution_device

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SYSTEM_PROMPT = "You are a helpful assistant."  # Qwen2.5-VL's default system turn
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
QWEN_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", VISION_START, VISION_END,
                                  IMAGE_PAD, "<|video_pad|>", "<unk>")
TEMPLATE_WORDS = ("subject", "prompt", "system", "user", "assistant", "you", "are", "a", "helpful")


def _template(prompt: str, image_tokens: Sequence[int]) -> str:
    """The chat text of one sample, with each image already expanded to its placeholder tokens."""
    refs = "".join(f"Subject {k + 1}: {VISION_START}{IMAGE_PAD * n}{VISION_END}\n"
                   for k, n in enumerate(image_tokens))
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
            f"{refs}Prompt: {prompt}<|im_end|>\n<|im_start|>assistant\n")


class VLMGrounder(nn.Module):
    """Frozen Qwen2.5-VL (bare `Qwen2_5_VLModel`, no LM head): (prompts, refs) -> (hidden, mask).

    `layer` picks the hidden states to return, indexed like transformers' `hidden_states`
    tuple: 0 = token embeddings, i = output of decoder layer i, -1 = last layer after the final
    RMSNorm (transformers ties hidden_states[-1] to last_hidden_state).
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, image_processor: Any,
                 layer: int = -1):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        n = model.config.text_config.num_hidden_layers
        if not -(n + 1) <= layer <= n:
            raise InputError(f"VLM layer {layer} out of range: the model has {n} layers (use -{n + 1}..{n})")
        self.layer = layer
        self.image_token_id = self._token_id(IMAGE_PAD, model.config.image_token_id)
        self._token_id(VISION_START, model.config.vision_start_token_id)
        self._token_id(VISION_END, model.config.vision_end_token_id)

    def _token_id(self, token: str, expected: int) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid != expected:
            raise InputError(f"tokenizer maps {token} to {tid} but the model config expects {expected}: "
                             "tokenizer and model come from different checkpoints")
        return tid

    @property
    def dim(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @classmethod
    def from_pretrained(cls, folder: str | Path, layer: int = -1, dtype: torch.dtype | None = None,
                        max_pixels: int | None = None) -> "VLMGrounder":
        """Load model, tokenizer and image processor from a local Qwen2.5-VL folder only.

        `max_pixels` caps the resized reference area (default: the folder's processor config).
        A ForConditionalGeneration checkpoint loads into the bare model; its lm_head is dropped.
        """
        from transformers import AutoTokenizer, Qwen2_5_VLModel

        folder = Path(folder)
        hint = ("put a Qwen2.5-VL checkpoint there (config.json, *.safetensors, tokenizer.json, "
                "preprocessor_config.json; e.g. Qwen/Qwen2.5-VL-7B-Instruct)")
        if not folder.is_dir():
            raise MissingWeightsError(f"Qwen2.5-VL folder not found: {folder}: {hint}")
        if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
            raise MissingWeightsError(f"no config.json or tokenizer.json in {folder}: {hint}")
        model = Qwen2_5_VLModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(model, tokenizer, _image_processor(folder, max_pixels), layer=layer)

    @classmethod
    def tiny(cls, hidden: int = 64, layer: int = -1, vocab_words: Iterable[str] | None = None,
             seed: int = 0) -> "VLMGrounder":
        """Random Qwen2.5-VL: text 64 x 2 layers (4 heads of 16, 2 KV heads), vision 32 x 1 block.

        References are resized to 28x28..56x56 (1..4 image tokens each with patch 14, merge 2).
        """
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

        words = list(DEFAULT_WORDS if vocab_words is None else vocab_words) + list(TEMPLATE_WORDS)
        tokenizer = build_word_tokenizer(words, QWEN_SPECIALS, unk_token="<unk>", pad_token="<|endoftext|>",
                                         eos_token="<|im_end|>")
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
        heads = 4
        text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                    num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=2,
                    max_position_embeddings=4096, rope_parameters=dict(
                        rope_type="default", rope_theta=1e6, mrope_section=_mrope_section(hidden // heads)),
                    bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                    pad_token_id=ids["<|endoftext|>"])
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[0])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids[IMAGE_PAD],
                                  video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids[VISION_START],
                                  vision_end_token_id=ids[VISION_END])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLModel(config)
        processor = _image_processor(None, max_pixels=56 * 56, min_pixels=28 * 28)
        return cls(model, tokenizer, processor, layer=layer)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model, tokenizer and image processor so `from_pretrained(folder)` rebuilds this."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        return folder

    def build_inputs(self, prompts: list[str], images: list[list[np.ndarray]]) -> dict[str, torch.Tensor]:
        """Model inputs of a right-padded batch: input_ids / attention_mask / mm_token_type_ids
        (B, L), pixel_values (sum of patches, C*T*P*P) and image_grid_thw (N_images, 3)."""
        if len(prompts) != len(images):
            raise InputError(f"got {len(prompts)} prompts but {len(images)} reference lists: pass one list per prompt")
        for p in prompts:
            if any(tok in p for tok in (VISION_START, VISION_END, IMAGE_PAD, "<|video_pad|>")):
                raise InputError(f"prompt contains a vision placeholder token, remove it: {p[:60]!r}")
        flat = [_as_rgb(im) for refs in images for im in refs]
        vis: dict[str, torch.Tensor] = {}
        counts: list[int] = []
        if flat:
            vis = dict(self.image_processor(images=flat, return_tensors="pt"))
            merge = self.image_processor.merge_size
            counts = [int(g.prod()) // merge ** 2 for g in vis["image_grid_thw"]]
        texts, start = [], 0
        for prompt, refs in zip(prompts, images):
            texts.append(_template(prompt, counts[start:start + len(refs)]))
            start += len(refs)
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)  # (B, L)
        mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
        n_img = int((ids == self.image_token_id).sum())
        if n_img != sum(counts):  # the tokenizer must keep <|image_pad|> as one token
            raise RuntimeError(f"expanded {sum(counts)} image tokens but the tokenizer produced {n_img}")
        out = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == self.image_token_id).long())
        return {**out, **vis}

    @torch.no_grad()
    def encode(self, prompts: list[str], images: list[list[np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of layer `self.layer` (B, L, D) float32, padding zeroed; mask (B, L) bool."""
        device = execution_device(self.model)  # the offload hook's device, if any
        inputs = {k: v.to(device) for k, v in self.build_inputs(list(prompts), list(images)).items()}
        out = self.model(**inputs, use_cache=False, output_hidden_states=True, return_dict=True)
        mask = inputs["attention_mask"].bool()  # (B, L)
        hidden = out.hidden_states[self.layer].float() * mask[..., None]  # (B, L, D)
        return hidden, mask

    def forward(self, prompts: list[str], images: list[list[np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(prompts, images)


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) like Qwen's [16, 24, 24] for 128."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _image_processor(folder: Path | None, max_pixels: int | None, min_pixels: int | None = None):
    """`Qwen2VLImageProcessorPil` from a folder's preprocessor_config.json, or defaults."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True, **kwargs)
    return Qwen2VLImageProcessorPil(**kwargs)


def _as_rgb(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 array; anything else is a clear InputError."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InputError(f"reference images must be (H, W, 3) uint8 arrays, got {arr.shape} {arr.dtype}: "
                         "use idcrafter.encoders.references.prepare_reference")
    return arr
