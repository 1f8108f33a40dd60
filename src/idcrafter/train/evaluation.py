"""Measurements during training: the reference gap and sample videos (main process only).

Reference gap (DESIGN.md section 8): on a fixed batch of held-out clips, noised at fixed t with
fixed noise, the x0-prediction error x0_hat = z_t - t v_theta with *shuffled* references (sample
b gets the references of sample b + 1, a derangement) minus the error with the true references,
overall and on subject cells (cells weighted by the fraction of their pixels that belong to a
subject: SpriteWorld's masks; on real clips the manifest's optional `boxes`, and without them the
whole frame, so `ref_gap_subject/*` equals `ref_gap/*` there rather than being NaN). Positive = the model uses its references; exactly 0 at initialisation (zero gates).
Logged per t as `ref_gap/t0.6`, `ref_gap_subject/t0.6`, `ref_gap_rel_subject/t0.6` (gap / error
with true references), `x0_err/t0.6`, `x0_err_subject/t0.6`, and `ref_gap/mean`,
`ref_gap_subject/mean` over all t.

Sample videos: the first held-out example is generated with the pipeline (`sample_steps`
Euler steps, guidance `sample_guidance`, seed 0) and written as `samples/step_XXXXXXXX.mp4` plus
a contact sheet (references | generated | ground truth); with `eval.judge`, the SpriteWorld judge
scores it (`judge/<metric>`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from idcrafter.train import losses
from idcrafter.train.data import build_source, collate

if TYPE_CHECKING:
    from idcrafter.train.conditions import ConditionEncoder
    from idcrafter.train.config import Config


class Evaluator:
    def __init__(self, cfg: "Config", pipe, cond: "ConditionEncoder", device: torch.device):
        self.cfg, self.pipe, self.cond, self.device = cfg, pipe, cond, device
        ecfg = cfg.eval
        data_cfg = dataclasses.replace(cfg.data, source=ecfg.source, path=ecfg.path, split=ecfg.split,
                                       seed=ecfg.seed, limit=None, num_subjects=None)
        self.samples = [build_source(data_cfg).get(p) for p in range(max(ecfg.batch_size, 2))]
        self.batch = collate(self.samples)
        self._judge = None
        with torch.no_grad():
            self.z0 = pipe.codec.encode(self.batch.video.to(device)).float()  # (B, C, F', h, w)
        gen = torch.Generator().manual_seed(ecfg.seed)
        self.eps = {t: torch.randn(self.z0.shape, generator=gen).to(device) for t in ecfg.timesteps}
        self.cell_subject = None
        if self.batch.subject is not None:  # (B, 1, F', h, w): fraction of subject pixels per cell
            self.cell_subject = losses.latent_weight_map(self.batch.subject, tuple(self.z0.shape[2:]), 2.0) - 1

    @torch.no_grad()
    def reference_gap(self, model: torch.nn.Module, autocast) -> dict[str, float]:
        b = len(self.batch)
        none = torch.zeros(b, dtype=torch.bool)
        subj = self.cond.references(self.batch)
        true_in = self.cond.model_inputs(self.batch, none, none, subject_latents=subj)
        perm = torch.roll(torch.arange(b), -1)
        shuffled = dataclasses.replace(self.batch, ref_mask=self.batch.ref_mask[perm],
                                       ref_images=[self.batch.ref_images[i] for i in perm.tolist()])
        shuf_in = self.cond.model_inputs(shuffled, none, none, subject_latents=subj[perm.to(subj.device)])
        out: dict[str, float] = {}
        was_training = model.training
        model.eval()
        for t_val in self.cfg.eval.timesteps:
            t = torch.full((b,), float(t_val), device=self.device)
            z_t = losses.interpolate(self.z0, self.eps[t_val], t)
            errs = {}
            for name, inputs in (("true", true_in), ("shuffled", shuf_in)):
                with autocast():
                    v = model(z_t, t * 1000, **inputs).sample.float()
                err = (losses.x0_from_velocity(z_t, v, t) - self.z0) ** 2  # (B, C, F', h, w)
                errs[name] = (err.mean().item(), _subject_error(err, self.cell_subject))
            key = f"t{t_val:g}"
            out[f"x0_err/{key}"], out[f"x0_err_subject/{key}"] = errs["true"]
            out[f"ref_gap/{key}"] = errs["shuffled"][0] - errs["true"][0]
            out[f"ref_gap_subject/{key}"] = errs["shuffled"][1] - errs["true"][1]
            out[f"ref_gap_rel_subject/{key}"] = out[f"ref_gap_subject/{key}"] / max(errs["true"][1], 1e-12)
        model.train(was_training)
        for name in ("ref_gap", "ref_gap_subject"):
            vals = [out[f"{name}/t{t:g}"] for t in self.cfg.eval.timesteps]
            out[f"{name}/mean"] = float(np.mean(vals))
        return out

    @torch.no_grad()
    def sample_video(self, out_dir: Path, step: int) -> dict[str, Any]:
        """Generate the first held-out example; write mp4 + contact sheet; judge it if asked."""
        from idcrafter.generation import Case, GenerationSettings, generate_and_score
        from idcrafter.utils.media import contact_sheet, save_image, write_mp4

        ecfg, s = self.cfg.eval, self.samples[0]
        if ecfg.judge and self._judge is None:
            from idcrafter.scorers import SpritesScorer

            self._judge = SpritesScorer()
        case = Case(key=f"step_{step:08d}", prompt=s.caption, references=list(s.refs), seed=0,
                    size=tuple(s.frames.shape[:3]))
        settings = GenerationSettings(steps=ecfg.sample_steps, guidance=ecfg.sample_guidance)
        (res,) = generate_and_score(self.pipe, [case], settings, self._judge if ecfg.judge else None)
        frames = res.frames  # (T, H, W, 3) uint8
        out_dir.mkdir(parents=True, exist_ok=True)
        # the clip's own size and the pipeline's frame rate; the sheet samples 8 frames at 192 px
        # (utils.media), so a real-size sample costs about what the mp4 encoder does
        mp4 = write_mp4(out_dir / f"step_{step:08d}.mp4", frames, fps=self.pipe.fps)
        sheet = contact_sheet([("references", list(s.refs)), ("generated", list(frames)),
                               ("ground truth", list(s.frames))])
        save_image(out_dir / f"step_{step:08d}_sheet.png", sheet)
        (out_dir / f"step_{step:08d}.txt").write_text(s.caption + "\n")
        metrics: dict[str, Any] = {}
        if res.report is not None:
            metrics = {f"judge/{k}": v for k, v in res.report.metrics.items() if isinstance(v, (int, float))}
        return {"sample_path": str(mp4), **metrics}


def _subject_error(err: torch.Tensor, cell_subject: torch.Tensor | None) -> float:
    """Mean error over subject cells of the whole batch (cells weighted by subject fraction).
    Without any subject mask (real clips whose manifest gives no `boxes`) every cell counts: the
    `*_subject/*` figures then equal the whole-frame ones instead of being NaN."""
    if cell_subject is None:
        return float(err.mean())
    w = cell_subject.to(err.device).expand_as(err)
    return float((w * err).sum() / w.sum().clamp_min(1e-12))
