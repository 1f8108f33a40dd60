"""Rectified-flow training maths as pure functions (no state, no model).

    z_t = (1 - t) z0 + t eps,     target v = eps - z0,     x0_hat = z_t - t v_theta
    L = mean_b [ w(t_b) * sum(W_b * (v_theta - v)^2) / sum(W_b) ]

Departures from the paper's plain E[w(t) ||v_theta - v||^2]:
- a per-pixel weight map W: subject pixels (known from SpriteWorld's ground-truth masks) weigh
  `subject_weight` times the background, downsampled to the latent grid by area (a latent cell
  half covered by a subject weighs 1 + (w - 1) / 2); each sample's loss is normalised by its total
  weight, so the loss scale does not depend on how much of the frame subjects cover (W = 1, no
  masks, gives the plain per-element mean);
- timesteps are logit-normal then *flow-shifted* (SD3's sampler followed by Wan's shift), which
  puts more training mass at high noise, where layout and identity are decided.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from idcrafter.sampling import flow_shift


def logit_normal(normal: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """t = sigmoid(mean + std * n) for standard normal draws n (any shape)."""
    return torch.sigmoid(mean + std * normal)


def sample_timesteps(normal: torch.Tensor, mean: float = 0.0, std: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """Training timesteps in (0, 1) from standard normal draws: logit-normal, then flow-shifted
    t' = s t / (1 + (s - 1) t). The draws are passed in so that each example's t comes from its own
    generator (batch-layout independent, see `sft.example_generator`)."""
    return flow_shift(logit_normal(normal, mean, std), shift)


def interpolate(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - t) z0 + t eps, with t (B,) broadcast over the other dims."""
    tt = t.view(-1, *([1] * (z0.ndim - 1))).to(z0.dtype)
    return (1 - tt) * z0 + tt * eps


def velocity_target(z0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = d z_t / dt = eps - z0."""
    return eps - z0


def x0_from_velocity(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0_hat = z_t - t v (exact when v = eps - z0)."""
    return z_t - t.view(-1, *([1] * (z_t.ndim - 1))).to(z_t.dtype) * v


def timestep_weight(t: torch.Tensor, scheme: str = "none") -> torch.Tensor:
    """w(t), (B,): "none" -> 1; "cosmap" -> 2 / (pi (1 - 2t + 2t^2)) (SD3)."""
    if scheme == "none":
        return torch.ones_like(t)
    if scheme == "cosmap":
        return 2.0 / (math.pi * (1 - 2 * t + 2 * t * t))
    raise ValueError(f"unknown timestep weighting {scheme!r}")


def temporal_groups(num_frames: int, latent_frames: int) -> list[list[int]]:
    """Which pixel frames each latent frame covers: identity when counts match; otherwise Wan's
    causal layout (latent 0 = frame 0, latent j = frames (j-1) f + 1 .. j f, f = temporal factor)."""
    if num_frames == latent_frames:
        return [[i] for i in range(num_frames)]
    factor = (num_frames - 1) // max(latent_frames - 1, 1)
    if latent_frames < 2 or (latent_frames - 1) * factor + 1 != num_frames:
        raise ValueError(f"cannot map {num_frames} frames onto {latent_frames} latent frames")
    return [[0]] + [list(range((j - 1) * factor + 1, j * factor + 1)) for j in range(1, latent_frames)]


def latent_weight_map(subject: torch.Tensor, latent_size: tuple[int, int, int], subject_weight: float) -> torch.Tensor:
    """Per-latent-cell loss weight (B, 1, F', h, w) from subject masks (B, T, H, W) (bool / 0-1).

    W = 1 + (subject_weight - 1) * (fraction of the cell's pixels, over its frames, that are subject).
    """
    b, t, h, w = subject.shape
    f_lat, h_lat, w_lat = latent_size
    if h % h_lat or w % w_lat:
        raise ValueError(f"mask {h}x{w} is not a multiple of the latent grid {h_lat}x{w_lat}")
    m = subject.float()
    frac = torch.stack([m[:, g].mean(1) for g in temporal_groups(t, f_lat)], 1)  # (B, F', H, W)
    frac = F.avg_pool2d(frac, (h // h_lat, w // w_lat))  # (B, F', h, w)
    return (1 + (subject_weight - 1) * frac).unsqueeze(1)  # (B, 1, F', h, w)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None,
                 sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, per-sample (B,) loss): per sample sum(W e^2) / sum(W) over every element
    (W broadcast over channels), times w(t_b), then the batch mean. Computed in float32."""
    err = (pred.float() - target.float()) ** 2  # (B, C, F, h, w)
    dims = tuple(range(1, err.ndim))
    if weight_map is None:
        per = err.mean(dims)
    else:
        wmap = weight_map.float().expand_as(err)
        per = (wmap * err).sum(dims) / wmap.sum(dims)
    if sample_weight is not None:
        per = per * sample_weight.float()
    return per.mean(), per


def masked_mean_error(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of a squared error (B, C, F, h, w) over the cells where mask (B, 1, F, h, w) > 0, per
    sample (B,); NaN for a sample with an empty mask. mask None: the plain per-sample mean."""
    dims = tuple(range(1, err.ndim))
    if mask is None:
        return err.mean(dims)
    m = mask.float().expand_as(err)
    return (m * err).sum(dims) / m.sum(dims)


def condition_dropout(u: torch.Tensor, p_text: float, p_refs: float, p_both: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text (B,), drop_refs (B,)) bool from uniform draws u (B,) in [0, 1):
    u < p_both: both; then p_text: text only; then p_refs: references only; else neither."""
    both = u < p_both
    text_only = (u >= p_both) & (u < p_both + p_text)
    refs_only = (u >= p_both + p_text) & (u < p_both + p_text + p_refs)
    return both | text_only, both | refs_only
