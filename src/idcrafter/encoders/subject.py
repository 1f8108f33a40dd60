"""Subject encoders: a reference image -> the tokens that enter the subject stream.

Two kinds, chosen by the transformer's config:
- default (`subject_feature_dim=None`): the codec's latent of the reference, patchified by the
  DiT's own patch embedding (done inside the transformer), so subject tokens share the video
  tokens' space;
- `VisionSubjectEncoder` (`subject_feature_dim=D`): patch tokens of a vision backbone (CLIP,
  SigLIP or DINOv2 vision tower) from a local folder, projected to the DiT width by the
  transformer's `subject_in` layer.

The vision encoder preprocesses images itself (resize to the tower's size, normalise with the
folder's `preprocessor_config.json` mean/std, CLIP's by default) because transformers' fast
image processors need torchvision.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.utils.hooks import execution_device

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _vision_class(model_type: str):
    from transformers import CLIPVisionModel, Dinov2Model, SiglipVisionModel

    classes = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel, "siglip": SiglipVisionModel,
               "siglip_vision_model": SiglipVisionModel, "dinov2": Dinov2Model}
    if model_type not in classes:
        raise InputError(f"unsupported vision backbone {model_type!r}: use a CLIP, SigLIP or DINOv2 folder")
    return classes[model_type]


class VisionSubjectEncoder(nn.Module):
    """Frozen vision tower: references (N, H, W, 3) uint8 -> tokens (N, L, D) (CLS + patches)."""

    def __init__(self, model: nn.Module, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def image_size(self) -> int:
        size = self.model.config.image_size
        return int(size if isinstance(size, int) else size[0])

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "VisionSubjectEncoder":
        """A local CLIP / SigLIP / DINOv2 folder (a full CLIP folder loads its vision tower)."""
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MissingWeightsError(f"no vision backbone at {folder}: put a CLIP/SigLIP/DINOv2 folder there "
                                      f"(config.json + model.safetensors [+ preprocessor_config.json])")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
        model = _vision_class(model_type).from_pretrained(folder, local_files_only=True)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        return cls(model, mean, std)

    @classmethod
    def tiny(cls, hidden: int = 32, image_size: int = 32, patch: int = 8, seed: int = 0) -> "VisionSubjectEncoder":
        """A random CLIP vision tower (2 layers) for tests."""
        from transformers import CLIPVisionConfig, CLIPVisionModel

        cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                               num_attention_heads=2, image_size=image_size, patch_size=patch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(CLIPVisionModel(cfg))

    @torch.no_grad()
    def encode(self, images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, L, D) float32 last hidden states."""
        import torch.nn.functional as F

        x = torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).float().div(255)  # (N, 3, H, W)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        device = execution_device(self.model)  # the offload hook's device, if any
        x = ((x - self.mean) / self.std).to(device, next(self.model.parameters()).dtype)
        return self.model(pixel_values=x).last_hidden_state.float()
