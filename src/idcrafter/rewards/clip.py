"""CLIP ViT-L/14 image embeddings and the LAION aesthetic predictor, from local folders only.

The aesthetic predictor is LAION's MLP on L2-normalised CLIP ViT-L/14 image embeddings (the one
OpenS2V-Eval loads as `aesthetic-model.pth`): Linear(768, 1024), Dropout(0.2), Linear(1024, 128),
Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1), no activations,
keys `layers.{0,2,4,6,7}.{weight,bias}`. Its score is on a 1-10 scale.

Folder layout (`weights`): a CLIP checkpoint (`config.json`, `*.safetensors`,
`preprocessor_config.json`) either in the folder itself or in `weights/clip/`, and the MLP in the
folder as `aesthetic_mlp.safetensors` (or LAION's / OpenS2V's `.pth` state dicts, read with
`torch.load(weights_only=True)`, never unpickled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from idcrafter.errors import InputError, MissingWeightsError

MLP_FILES = ("aesthetic_mlp.safetensors", "aesthetic-model.safetensors", "aesthetic-model.pth",
             "sac+logos+ava1-l14-linearMSE.pth")
_HINT = ("put a CLIP ViT-L/14 checkpoint (config.json, model.safetensors, preprocessor_config.json; e.g. "
         "openai/clip-vit-large-patch14) and the LAION aesthetic MLP (aesthetic_mlp.safetensors or "
         "aesthetic-model.pth) there")


class AestheticMLP(nn.Module):
    """LAION's aesthetic head (module docstring); `dim` is CLIP's projection size (768 for L/14)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:  # (N, D) unit vectors -> (N,)
        return self.layers(embeds).squeeze(-1)


def clip_folder(weights: str | Path | None) -> Path:
    if weights is None:
        raise MissingWeightsError(f"the CLIP backend needs a local weights folder: {_HINT}")
    root = Path(weights)
    for cand in (root, root / "clip"):
        if (cand / "config.json").is_file():
            return cand
    raise MissingWeightsError(f"no CLIP checkpoint (config.json) in {root} or {root / 'clip'}: {_HINT}")


def load_aesthetic_mlp(weights: str | Path) -> AestheticMLP:
    """The MLP from `weights` (a file, or a folder holding one of `MLP_FILES`)."""
    root = Path(weights)
    path = root if root.is_file() else next((root / n for n in MLP_FILES if (root / n).is_file()), None)
    if path is None:
        raise MissingWeightsError(f"no aesthetic MLP ({', '.join(MLP_FILES)}) in {root}: {_HINT}")
    from idcrafter.eval.backends import load_state  # safetensors, or torch.load(weights_only=True)

    state = load_state(path)
    if "layers.0.weight" not in state:
        raise InputError(f"{path} is not a LAION aesthetic MLP state dict (no layers.0.weight)")
    mlp = AestheticMLP(int(state["layers.0.weight"].shape[1]))
    try:
        mlp.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path} does not fit the LAION aesthetic MLP layout: {str(exc).splitlines()[0]}") from exc
    return mlp.eval()


def _vision_config(folder: Path):
    """The vision config of a CLIP folder; a full CLIP checkpoint (text + vision, as OpenAI's)
    keeps `projection_dim` at the top level, which the vision tower must inherit."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    if cfg.model_type == "clip":
        vision = cfg.vision_config
        vision.projection_dim = cfg.projection_dim
        return vision
    return cfg


class ClipImageModel:
    """CLIP vision tower + projection: `embed(images)` -> (N, D) L2-normalised image embeddings;
    with the aesthetic MLP, `aesthetic(images)` -> (N,) scores on LAION's 1-10 scale."""

    def __init__(self, weights: str | Path | None, device: str | torch.device = "cpu", with_aesthetic: bool = False,
                 batch_size: int = 32):
        from transformers import CLIPVisionModelWithProjection
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        folder = clip_folder(weights)
        self.device = torch.device(device)
        self.model = CLIPVisionModelWithProjection.from_pretrained(
            folder, config=_vision_config(folder), local_files_only=True).to(self.device).eval()
        self.processor = CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True) \
            if (folder / "preprocessor_config.json").is_file() else CLIPImageProcessorPil()
        self.mlp = load_aesthetic_mlp(Path(weights)).to(self.device) if with_aesthetic else None
        if self.mlp is not None and self.mlp.layers[0].in_features != self.model.config.projection_dim:
            raise InputError(f"the aesthetic MLP reads {self.mlp.layers[0].in_features}-d embeddings but this CLIP "
                             f"projects to {self.model.config.projection_dim}: use CLIP ViT-L/14 with LAION's MLP")
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        from PIL import Image

        out = []
        for i in range(0, len(images), self.batch_size):
            pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images[i:i + self.batch_size]]
            pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
            e = self.model(pixel_values=pixels).image_embeds.float()  # (n, D)
            out.append(e / torch.linalg.vector_norm(e, dim=-1, keepdim=True))
        if not out:
            return torch.zeros(0, self.model.config.projection_dim)
        return torch.cat(out).cpu()

    @torch.no_grad()
    def aesthetic(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        if self.mlp is None:
            raise InputError("this CLIP model was loaded without the aesthetic MLP")
        return self.mlp(self.embed(images).to(self.device)).float().cpu()  # (N,)
