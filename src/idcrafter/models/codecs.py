"""Video codecs: one interface for the Wan VAE (real) and a pixel codec (SpriteWorld).

A codec maps videos (B, 3, F, H, W) in [-1, 1] to the latents the DiT denoises and back.
Latents are *normalised* (roughly zero-mean, unit-variance per channel), so the rectified-flow
noise scale fits them without further scaling.

Frame and size rules follow diffusers' `WanPipeline`: a temporal factor of 4 needs F = 4k + 1
frames; other counts are rounded to `n // 4 * 4 + 1` with a warning (this rounds 6 and 7 down
to 5 but 8 *up* to 9: diffusers' formula, despite its "nearest" message). Height and width are
rounded down to a multiple of the spatial factor (times the DiT patch, if given), as the
pipeline does. `encode` itself does not round: it raises on an invalid shape, because the Wan
VAE would otherwise silently drop trailing frames.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from idcrafter.errors import InputError, MissingWeightsError


class Codec(nn.Module):
    """Video <-> normalised latents. Subclasses set the three factors and the two maps."""

    latent_channels: int
    temporal_factor: int
    spatial_factor: int
    in_channels: int = 3

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> normalised latents (B, C, F', H', W')."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, F', H', W') -> video (B, 3, F, H, W) in [-1, 1]."""
        raise NotImplementedError

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, 1, H', W'): a reference as a one-frame video."""
        if image.ndim != 4:
            raise InputError(f"encode_image expects (B, 3, H, W), got {tuple(image.shape)}")
        return self.encode(image[:, :, None])  # (B, 3, 1, H, W) -> (B, C, 1, H', W')

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latents of a valid (frames, height, width) video."""
        return (self.latent_channels, (frames - 1) // self.temporal_factor + 1,
                height // self.spatial_factor, width // self.spatial_factor)

    def valid_frames(self, n: int) -> int:
        """A frame count the codec accepts, rounded as diffusers' WanPipeline does (with a warning)."""
        tf = self.temporal_factor
        if tf > 1 and n % tf != 1:
            rounded = n // tf * tf + 1
            warnings.warn(f"num_frames - 1 must be divisible by {tf}; using {rounded} frames instead of {n}",
                          stacklevel=2)
            n = rounded
        return max(int(n), 1)

    def valid_size(self, height: int, width: int, patch: int = 1) -> tuple[int, int]:
        """(height, width) rounded down to multiples of spatial_factor * patch (with a warning)."""
        m = self.spatial_factor * patch
        h, w = max(m, height // m * m), max(m, width // m * m)
        if (h, w) != (height, width):
            warnings.warn(f"height and width must be multiples of {m}; adjusting ({height}, {width}) -> ({h}, {w})",
                          stacklevel=2)
        return h, w

    def check_video(self, video: torch.Tensor) -> None:
        """Raise a one-line InputError unless video is (B, in_channels, F, H, W) with a valid F, H, W."""
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise InputError(f"{type(self).__name__} expects (B, {self.in_channels}, F, H, W), "
                             f"got {tuple(video.shape)}")
        f, h, w = video.shape[2:]
        if (self.temporal_factor > 1 and f % self.temporal_factor != 1) or h % self.spatial_factor \
                or w % self.spatial_factor:
            raise InputError(f"{type(self).__name__} cannot encode {f} frames of {h}x{w}: frames must be "
                             f"{self.temporal_factor}k+1 and sides multiples of {self.spatial_factor} "
                             "(see valid_frames / valid_size)")


def _config_folder(folder: str | Path, what: str, hint: str, subfolder: str | None = None) -> Path:
    """The folder holding config.json: `folder/subfolder` if present, else `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingWeightsError(f"{what} folder not found: {folder}: {hint}")
    if subfolder and (folder / subfolder / "config.json").is_file():
        return folder / subfolder
    if (folder / "config.json").is_file():
        return folder
    raise MissingWeightsError(f"no config.json in {folder}: {hint}")


class WanVAECodec(Codec):
    """diffusers' `AutoencoderKLWan` with Wan's per-channel latent normalisation.

    z = (mu - latents_mean) / latents_std, mu = posterior mean (deterministic; diffusers'
    Wan I2V pipeline encodes conditions with `sample_mode="argmax"`, the same thing), and the
    inverse before decoding, as `WanPipeline` does after its last step.
    The VAE is frozen (requires_grad False, so encoding builds no autograd graph of the VAE);
    gradients still flow to inputs that require them, e.g. latents through `decode`.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        # factors from the architecture (config.scale_factor_* are informative only)
        self.temporal_factor = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1) * int(cfg.patch_size or 1)
        self.in_channels = int(cfg.in_channels)
        shape = (1, self.latent_channels, 1, 1, 1)
        if len(cfg.latents_mean) != self.latent_channels or len(cfg.latents_std) != self.latent_channels:
            raise InputError(f"Wan VAE config has {len(cfg.latents_mean)} latents_mean / {len(cfg.latents_std)} "
                             f"latents_std entries but z_dim {self.latent_channels}: they must match")
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(shape),
                             persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(shape),
                             persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None) -> "WanVAECodec":
        """Local only: a Wan VAE folder or a diffusers Wan pipeline folder holding vae/."""
        from diffusers import AutoencoderKLWan

        hint = ("put the diffusers Wan2.1 VAE there (config.json + diffusion_pytorch_model.safetensors, "
                "e.g. the vae/ folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers) or pass the pipeline folder")
        path = _config_folder(folder, "Wan VAE", hint, subfolder="vae")
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        return cls(AutoencoderKLWan.from_pretrained(path, local_files_only=True, **kwargs))

    @classmethod
    def tiny(cls, z_dim: int = 16, base_dim: int = 3, seed: int = 0) -> "WanVAECodec":
        """Random Wan VAE (base_dim 3, dim_mult [1,1,1,1], 1 res block): factors 4 x 8 x 8.

        With z_dim 16 the real Wan2.1 latents_mean/std are kept (a non-trivial normalisation to
        test); other z_dim get mean 0 / std 1, since the lists must have z_dim entries.
        """
        from diffusers import AutoencoderKLWan

        stats = {} if z_dim == 16 else {"latents_mean": [0.0] * z_dim, "latents_std": [1.0] * z_dim}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   **stats)
        return cls(vae)

    def save_pretrained(self, folder: str | Path) -> Path:
        """diffusers layout: config.json + diffusion_pytorch_model.safetensors."""
        self.vae.save_pretrained(str(folder), safe_serialization=True)
        return Path(folder)

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Posterior mean mu (B, z_dim, F', H', W') of (B, 3, F, H, W) in [-1, 1], not normalised."""
        self.check_video(video)
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(video.to(dtype)).latent_dist.mode().float()

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        return (mu.float() - self.latents_mean) / self.latents_std  # (B, C, F', H', W')

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self.latents_std + self.latents_mean  # (B, C, F', H', W')

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.encode_raw(video))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        video = self.vae.decode(self.denormalize(latents).to(dtype)).sample  # clamped to [-1, 1]
        return video.float()  # (B, 3, F, H, W)


class PixelCodec(ModelMixin, Codec, ConfigMixin):
    """Identity codec for SpriteWorld: latents are the pixels in [-1, 1].

    A diffusers `ModelMixin`/`ConfigMixin`, so a pipeline saves and loads it like any model.

    With `patch` > 1 each frame is folded space-to-depth (channel order of
    `torch.nn.functional.pixel_unshuffle`): a (3, 48, 48) frame becomes (12, 24, 24) at patch 2.
    Temporal factor 1: any frame count is valid. No parameters; decode(encode(x)) == x exactly.
    """

    @register_to_config
    def __init__(self, channels: int = 3, patch: int = 1, scale: float = 1.0):
        super().__init__()
        if channels < 1 or patch < 1:
            raise InputError(f"PixelCodec needs channels >= 1 and patch >= 1, got {channels}, {patch}")
        self.in_channels, self.patch = int(channels), int(patch)
        self.latent_channels = self.in_channels * self.patch ** 2
        self.temporal_factor, self.spatial_factor = 1, self.patch
        # latents = scale * pixels; a (persistent) buffer so the codec has a weights file like
        # every pipeline component. scale 1 keeps decode(encode(x)) == x exact.
        self.register_buffer("latent_scale", torch.tensor(float(scale)))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.check_video(video)
        b, c, f, h, w = video.shape
        p = self.patch
        x = video.reshape(b, c, f, h // p, p, w // p, p)
        x = x.permute(0, 1, 4, 6, 2, 3, 5)  # (B, C, p, p, F, H/p, W/p)
        x = x.reshape(b, c * p * p, f, h // p, w // p)
        return x if float(self.latent_scale) == 1.0 else x * self.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, cpp, f, hp, wp = latents.shape
        p, c = self.patch, self.in_channels
        if cpp != self.latent_channels:
            raise InputError(f"PixelCodec expects {self.latent_channels} latent channels, got {cpp}")
        if float(self.latent_scale) != 1.0:
            latents = latents / self.latent_scale
        x = latents.reshape(b, c, p, p, f, hp, wp).permute(0, 1, 4, 5, 2, 6, 3)  # (B, C, F, H/p, p, W/p, p)
        return x.reshape(b, c, f, hp * p, wp * p)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "PixelCodec":
        """diffusers' loader, local only, with a clear error for a missing folder."""
        path = _config_folder(folder, "pixel codec", "write one with PixelCodec(...).save_pretrained(folder)")
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(path, **kwargs)


def load_codec(folder: str | Path, dtype: torch.dtype | None = None) -> Codec:
    """The codec saved in `folder` (a PixelCodec, a Wan VAE, or a pipeline folder with vae/)."""
    path = _config_folder(folder, "codec", "save a codec there or point to a Wan VAE / pipeline folder",
                          subfolder="vae")
    name = json.loads((path / "config.json").read_text()).get("_class_name")
    if name == "PixelCodec":
        return PixelCodec.from_pretrained(path, local_files_only=True)
    if name == "AutoencoderKLWan":
        return WanVAECodec.from_pretrained(path, dtype=dtype)
    raise InputError(f"{path / 'config.json'} holds a {name}; known codecs: PixelCodec, AutoencoderKLWan")
