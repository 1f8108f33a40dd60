"""Train a small Wan VAE (diffusers' `AutoencoderKLWan`, the class of the real Wan2.1 VAE) on
SpriteWorld, so the embedded DiT works in latents as the real stack does.

    idcrafter train vae --run-dir runs/sprites-vae [--resume] [key=value ...]
    idcrafter train export-vae --run-dir runs/sprites-vae --out assets/checkpoints/sprites-vae

One step: `data.clips` clips (5 x 48 x 48) at stream positions [s C, (s + 1) C) of the procedural
train stream, plus every reference image of those clips as a one-frame video (the causal VAE
encodes a first frame alone, which is also how references and each clip's first frame are
encoded); encode, sample the posterior with a generator seeded by (seed, step), decode, and
minimise a subject-weighted L1 + MSE reconstruction loss plus a small KL.

How it departs from Wan's VAE training (which is not published in full):
- no GAN or LPIPS term: SpriteWorld's flat colours need none to stay sharp, and an LPIPS net is
  not available offline; instead, pixels of subjects (ground-truth masks; for references, the
  pixels that differ from the canvas) weigh `loss.subject_weight` times the background, because
  identity lives in 1-2 px details (eyes, glasses, hair) that an unweighted loss averages away;
- the per-channel `latents_mean` / `latents_std` are measured at export on training clips'
  posterior means (Wan ships its own fixed lists), and written into the VAE's config, where
  `WanVAECodec` reads them.

Resume is exact: the data is a pure function of the step, the posterior noise of (seed, step),
and the checkpoint holds weights, optimizer and schedule.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from idcrafter.errors import InputError
from idcrafter.train import checkpoint as ckpt
from idcrafter.train.config import OptimConfig
from idcrafter.utils.io import append_line, atomic_write_json, atomic_write_text, check_writable_dir, mark_dir

log = logging.getLogger(__name__)
TOOL = "idcrafter train vae"


@dataclass
class VAEModelConfig:
    """`AutoencoderKLWan` sizes. dim_mult of length n gives a spatial factor 2^(n-1); each True in
    `temporal_downsample` halves time (two: 4k+1 frames -> k+1 latent frames, as Wan)."""

    base_dim: int = 32
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    temporal_downsample: tuple[bool, ...] = (True, True)
    seed: int = 0
    init: str | None = None  # start from these weights (a run's checkpoint folder or vae.safetensors)

    def build(self):
        from diffusers import AutoencoderKLWan

        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise InputError("model.temporal_downsample needs len(model.dim_mult) - 1 entries")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return AutoencoderKLWan(base_dim=self.base_dim, z_dim=self.z_dim, dim_mult=list(self.dim_mult),
                                    num_res_blocks=self.num_res_blocks,
                                    temperal_downsample=list(self.temporal_downsample),
                                    latents_mean=[0.0] * self.z_dim, latents_std=[1.0] * self.z_dim)


@dataclass
class VAEDataConfig:
    split: str = "train"
    seed: int = 0
    frames: int = 5
    height: int = 48
    width: int = 48
    ref_size: int = 36
    clips: int = 6  # clips per step; their references (1-4 each) join as one-frame videos


@dataclass
class VAELossConfig:
    subject_weight: float = 3.0
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    kl_weight: float = 1e-6
    # identity-perceptual terms (`train.vae_identity`): 1 - cos of the judge's frozen face / subject
    # embeddings of ground-truth head / body windows, clip vs reconstruction; 0 turns a term off
    face_weight: float = 0.0
    subject_embed_weight: float = 0.0
    # adversarial term (`train.vae_gan`): a per-frame patch discriminator, hinge loss; 0 = off
    gan_weight: float = 0.0
    gan_lr: float = 2e-4


@dataclass
class VAETrainConfig:
    steps: int = 4000
    mixed_precision: str = "bf16"  # "bf16" | "no"
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 200
    keep_last: int = 2
    eval_every: int = 500
    eval_clips: int = 32
    eval_seed: int = 1234
    log_every: int = 10


@dataclass
class VAEConfig:
    recipe: str = "sprites-vae"
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=100, weight_decay=0.0))
    train: VAETrainConfig = field(default_factory=VAETrainConfig)

    def validate(self) -> "VAEConfig":
        if self.data.clips < 1 or self.train.steps < 1:
            raise InputError("data.clips and train.steps must be >= 1")
        if (self.data.frames - 1) % 4 or self.data.frames < 1:
            raise InputError(f"data.frames must be 4k+1 for the Wan VAE, got {self.data.frames}")
        if not (self.optim.lr > 0 and math.isfinite(self.optim.lr)):
            raise InputError(f"optim.lr must be a positive number, got {self.optim.lr}")
        if self.train.checkpoint_every < 1:
            raise InputError("train.checkpoint_every must be >= 1")
        return self


# ---------------------------------------------------------------------------------- data
def _world(cfg: VAEDataConfig):
    from idcrafter.world.scene import WorldConfig

    return WorldConfig(frames=cfg.frames, height=cfg.height, width=cfg.width, ref_size=cfg.ref_size)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> (N, 3, T, H, W) float in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)


def vae_examples(cfg: VAEDataConfig, positions: range, split: str | None = None, seed: int | None = None) -> list:
    """The SpriteWorld examples at `positions` of (split, seed), default the data config's."""
    from idcrafter.world.dataset import make_example

    world = _world(cfg)
    return [make_example(cfg.seed if seed is None else seed, p, split or cfg.split, world) for p in positions]


def vae_batch(cfg: VAEDataConfig, positions: range, split: str | None = None, seed: int | None = None,
              examples: list | None = None):
    """Clips (N, 3, T, H, W), their subject masks (N, 1, T, H, W), references (M, 3, 1, R, R)
    and their masks, all of SpriteWorld examples at `positions` (or of `examples`)."""
    from idcrafter.world.scene import subject_mask

    exs = examples if examples is not None else vae_examples(cfg, positions, split, seed)
    clips = np.stack([e.clip.frames for e in exs])  # (N, T, H, W, 3)
    masks = np.stack([e.clip.masks > 0 for e in exs])  # (N, T, H, W): any subject
    refs = np.concatenate([e.refs for e in exs])  # (M, R, R, 3)
    rmask = np.stack([subject_mask(r) for r in refs])  # (M, R, R)
    return (_to_tensor(clips), torch.from_numpy(masks)[:, None].float(),
            _to_tensor(refs[:, None]), torch.from_numpy(rmask)[:, None, None].float())


# ---------------------------------------------------------------------------------- losses
def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, cfg: VAELossConfig):
    """Subject-weighted L1 + MSE, each normalised by the total weight: (loss, l1, mse)."""
    w = 1.0 + (cfg.subject_weight - 1.0) * mask  # (N, 1, T, H, W), broadcast over channels
    diff = recon.float() - target
    denom = w.expand_as(diff).sum()
    l1 = (w * diff.abs()).sum() / denom
    mse = (w * diff.square()).sum() / denom
    return cfg.l1_weight * l1 + cfg.mse_weight * mse, l1, mse


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.float().square() + logvar.float().exp() - 1.0 - logvar.float()).mean()


def psnr(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of [-1, 1] videos (peak-to-peak 2), over the pixels where mask is 1."""
    sq = (recon.float() - target).square().mean(1, keepdim=True)  # (N, 1, T, H, W)
    mse = float(sq.mean()) if mask is None else float((sq * mask).sum() / mask.sum().clamp_min(1))
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


def _init_weights(path: str) -> dict[str, torch.Tensor]:
    """VAE weights from a run's checkpoint folder, a `vae.safetensors` file or an exported folder."""
    p = Path(path)
    for cand in (p, p / "vae.safetensors", p / "diffusion_pytorch_model.safetensors"):
        if cand.is_file():
            return ckpt.load_tensors(cand)
    raise InputError(f"model.init={path!r} holds no VAE weights (vae.safetensors or "
                     "diffusion_pytorch_model.safetensors): pass a VAE checkpoint folder or file")


# ---------------------------------------------------------------------------------- trainer
class VAETrainer:
    """The loop of the module docstring; `run_dir` gets config.json, metrics.jsonl, checkpoints/."""

    def __init__(self, cfg: VAEConfig, run_dir: str | Path, resume: bool = False):
        from idcrafter.config import config_to_dict

        self.cfg = cfg.validate()
        self.run_dir = Path(run_dir)
        owned = check_writable_dir(self.run_dir, TOOL, fix="--resume")
        if owned and not resume:
            raise InputError(f"{self.run_dir} already holds a VAE run: pass --resume to continue it or "
                             "choose a new --run-dir")
        init = _init_weights(cfg.model.init) if cfg.model.init and not resume else None  # refused before any write
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mark_dir(self.run_dir, TOOL)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.vae = cfg.model.build().train()
        if init is not None:
            self.vae.load_state_dict(init)
        self.identity = None
        if cfg.loss.face_weight > 0 or cfg.loss.subject_embed_weight > 0:
            from idcrafter.train.vae_identity import IdentityLoss

            self.identity = IdentityLoss.load()
        self.disc = self.disc_opt = None
        if cfg.loss.gan_weight > 0:
            from idcrafter.train.vae_gan import PatchDiscriminator

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.model.seed + 1)
                self.disc = PatchDiscriminator()
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.loss.gan_lr, betas=(0.5, 0.9),
                                              weight_decay=0.0)
        self.opt, self.sched = cfg.optim.build(list(self.vae.parameters()), cfg.train.steps)
        self.step = 0
        last = ckpt.latest_checkpoint(self.run_dir / "checkpoints") if resume else None
        if last is not None:
            self._load(last)
        atomic_write_json(self.run_dir / "config.json", config_to_dict(cfg))

    def _load(self, path: Path) -> None:
        self.vae.load_state_dict(ckpt.load_tensors(path / "vae.safetensors"))
        self.opt.load_state_dict(ckpt.load_torch_state(path / "optimizer.pt"))
        self.sched.load_state_dict(ckpt.load_torch_state(path / "scheduler.pt"))
        if self.disc is not None and (path / "disc.safetensors").is_file():
            self.disc.load_state_dict(ckpt.load_tensors(path / "disc.safetensors"))
            self.disc_opt.load_state_dict(ckpt.load_torch_state(path / "disc_optimizer.pt"))
        self.step = int(ckpt.read_json(path / "state.json")["step"])
        log.info("resumed %s at step %d", path, self.step)

    def save(self) -> Path:
        tmp = ckpt.begin(self.run_dir / "checkpoints", self.step)
        ckpt.save_tensors(tmp / "vae.safetensors", self.vae.state_dict())
        ckpt.save_torch_state(tmp / "optimizer.pt", self.opt.state_dict())
        ckpt.save_torch_state(tmp / "scheduler.pt", self.sched.state_dict())
        if self.disc is not None:
            ckpt.save_tensors(tmp / "disc.safetensors", self.disc.state_dict())
            ckpt.save_torch_state(tmp / "disc_optimizer.pt", self.disc_opt.state_dict())
        atomic_write_json(tmp / "state.json", {"step": self.step})
        final = ckpt.commit(tmp)
        ckpt.prune(self.run_dir / "checkpoints", self.cfg.train.keep_last)
        return final

    def _autocast(self):
        from contextlib import nullcontext

        if self.cfg.train.mixed_precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        n = cfg.data.clips
        exs = vae_examples(cfg.data, range(self.step * n, (self.step + 1) * n))
        clips, cmask, refs, rmask = vae_batch(cfg.data, range(0), examples=exs)
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.step)
        losses = {}
        total = 0.0
        for name, x, m in (("clip", clips, cmask), ("ref", refs, rmask)):
            with self._autocast():
                post = self.vae.encode(x).latent_dist
                z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(post.mean.dtype)
                recon = self.vae.decode(z).sample
            rec, l1, mse = reconstruction_loss(recon, x, m, cfg.loss)
            kl = kl_loss(post.mean, post.logvar)
            total = total + rec + cfg.loss.kl_weight * kl
            losses.update({f"{name}/l1": l1.item(), f"{name}/mse": mse.item(), f"{name}/kl": kl.item()})
            if name == "clip" and self.identity is not None:
                from idcrafter.train.vae_identity import Windows

                face, subj = self.identity(recon, x, Windows.from_clips([e.clip for e in exs]))
                total = total + cfg.loss.face_weight * face + cfg.loss.subject_embed_weight * subj
                losses.update({"clip/face": face.item(), "clip/subject_embed": subj.item()})
            if name == "clip" and self.disc is not None:
                from idcrafter.train.vae_gan import frames_of, generator_loss

                fake = recon.float()
                gl = generator_loss(self.disc(frames_of(fake)))
                total = total + cfg.loss.gan_weight * gl
                losses["clip/gan_g"] = gl.item()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.vae.parameters(), cfg.optim.grad_clip or float("inf"))
        if torch.isfinite(gn):
            self.opt.step()
        self.sched.step()
        if self.disc is not None:
            losses["clip/gan_d"] = self._disc_step(clips, fake.detach())
        self.step += 1
        return {"loss": total.item(), "grad_norm": float(gn), "lr": self.sched.get_last_lr()[0], **losses}

    def _disc_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One hinge step of the discriminator on this step's clips and their reconstructions."""
        from idcrafter.train.vae_gan import frames_of, hinge_d_loss

        d = hinge_d_loss(self.disc(frames_of(real)), self.disc(frames_of(fake)))
        self.disc_opt.zero_grad(set_to_none=True)  # drops what the generator's backward left
        d.backward()
        if torch.isfinite(d):
            self.disc_opt.step()
        return d.item()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.vae.eval()
        d = self.cfg.data
        out: dict[str, list[float]] = {}
        for start in range(0, self.cfg.train.eval_clips, 8):
            pos = range(start, min(start + 8, self.cfg.train.eval_clips))
            exs = vae_examples(d, pos, split="heldout", seed=self.cfg.train.eval_seed)
            clips, cmask, refs, rmask = vae_batch(d, pos, examples=exs)
            for name, x, m in (("clip", clips, cmask), ("ref", refs, rmask)):
                recon = self.vae.decode(self.vae.encode(x).latent_dist.mode()).sample.float()
                out.setdefault(f"eval/{name}_psnr", []).append(psnr(recon, x))
                out.setdefault(f"eval/{name}_psnr_subject", []).append(psnr(recon, x, m))
                if name == "clip" and self.identity is not None:
                    from idcrafter.train.vae_identity import Windows

                    face, subj = self.identity(recon, x, Windows.from_clips([e.clip for e in exs]))
                    out.setdefault("eval/face_cos", []).append(1 - face.item())
                    out.setdefault("eval/subject_cos", []).append(1 - subj.item())
        self.vae.train()
        return {k: float(np.mean(v)) for k, v in out.items()}

    def train(self, progress: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.cfg.train
        window: list[dict[str, float]] = []
        bar = tqdm(total=cfg.steps, initial=self.step, desc="vae", disable=not progress)
        t0 = time.time()
        last: dict[str, Any] = {}
        while self.step < cfg.steps:
            window.append(self.train_step())
            bar.update()
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                last = {"step": self.step, "s_per_step": (time.time() - t0) / len(window),
                        **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    last.update(self.evaluate())
                append_line(self.run_dir / "metrics.jsonl", json.dumps(last))
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                window, t0 = [], time.time()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        return last


# ---------------------------------------------------------------------------------- export
@torch.no_grad()
def latent_stats(vae, cfg: VAEDataConfig, clips: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior means over `clips` training clips and their references."""
    acc = []
    for start in range(0, clips, 8):
        c, _, r, _ = vae_batch(cfg, range(10_000_000 + start, 10_000_000 + start + 8))
        for x in (c, r):
            mu = vae.encode(x).latent_dist.mode().float()  # (N, C, F', H', W')
            acc.append(mu.transpose(0, 1).reshape(mu.shape[1], -1))
    allmu = torch.cat(acc, 1)  # (C, n)
    return allmu.mean(1).tolist(), allmu.std(1).clamp_min(1e-3).tolist()


def export_vae(run_dir: str | Path, out: str | Path, checkpoint: int | None = None, overwrite: bool = False) -> dict:
    """Write the VAE of a run's checkpoint as a diffusers folder with latent statistics and a card."""
    import shutil

    from idcrafter.config import load_config
    from idcrafter.utils.io import replace_dir, temp_dir_beside

    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise InputError(f"--out {out} is inside the run folder {run_dir}: choose a folder outside it")
    tool = "idcrafter train export-vae"
    if check_writable_dir(out, tool) and not overwrite:
        raise InputError(f"{out} already holds an exported VAE: pass --overwrite to replace it")
    cfg = load_config(VAEConfig, run_dir / "config.json")
    found = dict(ckpt.list_checkpoints(run_dir / "checkpoints"))
    if not found:
        raise InputError(f"{run_dir} has no complete checkpoint to export")
    step = checkpoint if checkpoint is not None else max(found)
    if step not in found:
        raise InputError(f"no checkpoint at step {step} in {run_dir}; have {sorted(found)}")
    vae = cfg.model.build()
    vae.load_state_dict(ckpt.load_tensors(found[step] / "vae.safetensors"))
    vae.eval()
    mean, std = latent_stats(vae, cfg.data)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    trainer_eval = _eval_exported(vae, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        vae.save_pretrained(str(tmp), safe_serialization=True)
        mark_dir(tmp, tool)
        card = _card(cfg, run_dir, step, trainer_eval)
        atomic_write_text(tmp / "README.md", card)
        atomic_write_json(tmp / "metrics.json", {"step": step, **trainer_eval})
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"step": step, **trainer_eval}


@torch.no_grad()
def _eval_exported(vae, cfg: VAEConfig) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for start in range(0, cfg.train.eval_clips, 8):
        clips, cmask, refs, rmask = vae_batch(cfg.data, range(start, start + 8), split="heldout",
                                              seed=cfg.train.eval_seed)
        for name, x, m in (("clip", clips, cmask), ("ref", refs, rmask)):
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.float()
            out.setdefault(f"{name}_psnr", []).append(psnr(recon, x))
            out.setdefault(f"{name}_psnr_subject", []).append(psnr(recon, x, m))
    return {k: round(float(np.mean(v)), 3) for k, v in out.items()}


def _card(cfg: VAEConfig, run_dir: Path, step: int, figures: dict[str, float]) -> str:
    from idcrafter.config import config_to_dict

    m = cfg.model
    sf = 2 ** (len(m.dim_mult) - 1)
    tf = 2 ** sum(m.temporal_downsample)
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in figures.items())
    return f"""# sprites-vae: a Wan VAE (AutoencoderKLWan) trained on SpriteWorld

diffusers' `AutoencoderKLWan` at base_dim {m.base_dim}, z_dim {m.z_dim}, dim_mult {list(m.dim_mult)},
{m.num_res_blocks} res block(s): {tf}x in time (4k+1 frames -> k+1 latent frames, causal), {sf}x in space.
Load it with `idcrafter.models.codecs.WanVAECodec.from_pretrained(folder)` (or `load_codec`); the
per-channel `latents_mean` / `latents_std` in `config.json` were measured on training clips.

## How it was made
- Command: `idcrafter train vae --run-dir {run_dir}` (recipe `{cfg.recipe}`), exported at step {step}
  with `idcrafter train export-vae --run-dir {run_dir} --checkpoint {step}`.
- Data: SpriteWorld `train` split, seed {cfg.data.seed}, rendered on the fly ({cfg.data.frames} x
  {cfg.data.height} x {cfg.data.width} clips, {cfg.data.clips} per step, plus their {cfg.data.ref_size} px references).
- Loss: L1 + MSE with subject pixels x{cfg.loss.subject_weight}, KL weight {cfg.loss.kl_weight}; identity terms
  (`train.vae_identity`, the main judge's frozen embedders): face x{cfg.loss.face_weight}, subject
  x{cfg.loss.subject_embed_weight}; adversarial (`train.vae_gan`, patch discriminator, hinge) x{cfg.loss.gan_weight}.
  {f"Started from the weights of `{m.init}`." if m.init else ""}

## Held-out reconstruction ({cfg.train.eval_clips} clips of unseen identities, seed {cfg.train.eval_seed}, posterior mean)
| figure | dB |
|---|---|
{rows}

Judge figures on reconstructions (the gate of issue 13) are in `docs/sprites.md`.

## Config
```json
{json.dumps(config_to_dict(cfg), indent=1)}
```
"""
