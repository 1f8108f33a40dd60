"""Tiny random real-backend models written to folders, for tests of rewards and `idcrafter eval`:
nothing here is downloaded, every model is built from a config in code."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

WORDS = ("judge how real this video looks from the frames above in order weigh common sense physics appearance "
         "generation artefacts people faces bodies answer with one number clearly generated probably unsure "
         "real reply the only find an image that matches given text quality of is rate would you excellent "
         "good fair poor bad man woman person dog cat a on beach walks waves")


def clip_folder(root: Path, mlp: str | None = "safetensors", seed: int = 0) -> Path:
    """A full CLIPModel checkpoint (text + vision, like OpenAI's) at ViT-L/14's 224 px input
    with a 16-d projection, plus a random LAION-layout aesthetic MLP (`mlp`: safetensors, pth
    or None)."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from idcrafter.rewards.clip import AestheticMLP

    root.mkdir(parents=True, exist_ok=True)
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=224,
              patch_size=32)
    tc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
              max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPModel(CLIPConfig(text_config=tc, vision_config=vc, projection_dim=16)).save_pretrained(root)
        head = AestheticMLP(16)
        with torch.no_grad():  # spread the random scores over the 1-10 scale
            head.layers[-1].bias.fill_(5.5)
    CLIPImageProcessorPil().save_pretrained(root)
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    if mlp == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(root / "aesthetic_mlp.safetensors"))
    elif mlp == "pth":
        torch.save(state, root / "aesthetic-model.pth")
    return root


def qwen_folder(root: Path, kind: str = "qwen2_5_vl", head: bool = True, seed: int = 0) -> Path:
    """A random Qwen2.5-VL (or Qwen2-VL) of hidden 64 with a word-level tokenizer knowing `WORDS`
    and digits, images resized to 28..56 px (1..4 image tokens)."""
    import transformers as T

    from idcrafter.encoders.vlm import VLMGrounder

    root.mkdir(parents=True, exist_ok=True)
    g = VLMGrounder.tiny(vocab_words=WORDS.split(), seed=seed)
    cfg25 = g.model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "qwen2_5_vl":
            model = (T.Qwen2_5_VLForConditionalGeneration if head else T.Qwen2_5_VLModel)(cfg25)
        else:
            text = cfg25.text_config.to_dict()
            vision = dict(depth=1, embed_dim=32, hidden_size=text["hidden_size"], mlp_ratio=2, num_heads=2,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
            cfg = T.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=cfg25.image_token_id,
                                  video_token_id=cfg25.video_token_id,
                                  vision_start_token_id=cfg25.vision_start_token_id,
                                  vision_end_token_id=cfg25.vision_end_token_id)
            model = (T.Qwen2VLForConditionalGeneration if head else T.Qwen2VLModel)(cfg)
    model.save_pretrained(root)
    g.tokenizer.save_pretrained(root)
    g.image_processor.save_pretrained(root)
    return root


def face_onnx(path: Path, dim: int = 16, size: int = 112, seed: int = 0) -> Path:
    """A random ArcFace-shaped ONNX (1, 3, S, S) -> (1, dim) that insightface routes to ArcFaceONNX."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(8 * (size // 8) ** 2, dim)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), str(path), input_names=["data"],
                          output_names=["fc1"], dynamo=False)
    return path


def astronaut_video(frames: int = 4, shift: int = 0) -> np.ndarray:
    """(T, 256, 256, 3) uint8: skimage's astronaut photo (a real face) downsampled, optionally
    shifted by `shift` px per frame."""
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    return np.stack([np.roll(img, shift * t, axis=1) for t in range(frames)])


def owlv2_folder(root: Path, seed: int = 0) -> Path:
    """A random OWLv2 (64 px input, patch 16) with its PIL image processor."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    root.mkdir(parents=True, exist_ok=True)
    vc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64,
              patch_size=16)
    tc = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
              max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Owlv2ForObjectDetection(Owlv2Config(text_config=tc, vision_config=vc, projection_dim=16)).save_pretrained(root)
    Owlv2ImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(root)
    return root
