"""`idcrafter train reward-model --recipe NAME`: Bradley-Terry-with-ties training of the learned
reward model (`rl.reward_model`) on preference pairs, on the shared engine.

Pairs (`pairs.source`): "synthetic" (`rl.distortions.synthetic_pairs`: train identities, the
distortion kinds `pairs.kinds`), "file" (a pair file, format in `rl.distortions`), or
"generator" (two samples per train cast of the pipeline in `pairs.path`, ranked by
`pairs.scorer` -- the audit judge by default -- on `pairs.metric`: `rl.pairs.generator_pairs`).
One step: `pairs.batch_size` pairs drawn with a generator seeded by (seed, step), BTT loss
(k = `model.ties_k`) on the two clips' scores.

Evaluation (every `eval_every` steps and at the end, written to `<run>/eval.json` and the log):
pairwise accuracy with ties excluded on `pairs.heldout` pairs of *held-out identities* (the
heldout split) made with the training kinds (`acc/heldout_ids`), and on pairs of the held-out
distortion kind `pairs.heldout_kind`, also on held-out identities (`acc/heldout_kind`). The model
is exported to `<run>/reward_model` (`load_reward_model`); use it in RL with
`reward.name=learned reward.path=<run>/reward_model reward.weights={"learned":1}`.

The embedded backbone's features are frozen, so they are computed once per clip at set-up (and
kept with the pairs' labels in `<run>/features/`). Its head reads them with a transformer
(`model.readout=transformer`) or one linear layer over the judge summary and identity aggregates
(`linear`); `model.summary_dropout` blanks the summary token of a share of the training pairs.
Measured on held-out identities and the held-out kind in docs/rl.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from idcrafter.errors import InputError
from idcrafter.rl import losses as L
from idcrafter.rl.distortions import KINDS, Pair
from idcrafter.rl.reward_model import pairwise_accuracy
from idcrafter.train.config import CheckpointConfig, LogConfig, TrainConfig
from idcrafter.train.engine import Engine
from idcrafter.train.optim import OptimConfig

log = logging.getLogger(__name__)


@dataclass
class RMModelConfig:
    backbone: str = "sprites"  # "sprites" (embedded default) or "qwen" (a local Qwen2.5-VL folder in `path`)
    path: str | None = None
    judge_path: str | None = None  # sprites: the judge parts folder (default assets/judge)
    frames: int = 5
    dim: int = 64
    layers: int = 2
    heads: int = 4
    lora_rank: int = 8
    lora_alpha: int = 8
    ties_k: float = 5.0
    # sprites: the share of training pairs whose judge summary token is blanked (both clips read 0.5,
    # the "unknown" value), so the head must also compare detections with references itself instead
    # of leaning on clip-level readings that only correlate with the training kinds (docs/rl.md)
    summary_dropout: float = 0.0
    readout: str = "transformer"  # sprites: "transformer" or "linear" (`rl.reward_model.READOUTS`)

    def build(self):
        from idcrafter.rl.reward_model import QwenRewardModel, SpriteRewardModel

        if self.backbone == "sprites":
            return SpriteRewardModel(self.frames, self.dim, self.layers, self.heads, self.judge_path, self.readout)
        if self.backbone == "qwen":
            if not self.path:
                raise InputError("model.backbone=qwen needs model.path (a local Qwen2.5-VL folder)")
            return QwenRewardModel.from_pretrained(self.path, self.frames, self.lora_rank, self.lora_alpha)
        raise InputError(f"model.backbone must be sprites or qwen, got {self.backbone!r}")


@dataclass
class PairsConfig:
    source: str = "synthetic"  # "synthetic", "file" or "generator"
    path: str | None = None  # the training pair file (source=file) or the generator pipeline folder (generator)
    scorer: str = "sprites-audit"  # generator: the judge that ranks the two samples of a case
    metric: str = "face_sim_mean"  # generator: the judge metric that decides (higher is better)
    tie_margin: float = 0.02  # generator: closer scores are a tie
    heldout_path: str | None = None  # optional pair file evaluated as well (acc/file)
    train: int = 2000
    heldout: int = 300
    seed: int = 0
    kinds: tuple[str, ...] = ("swap", "blend", "copy_paste")
    heldout_kind: str = "drift"
    tie_fraction: float = 0.15
    frames: int = 5
    size: int = 48
    ref_size: int = 32
    batch_size: int = 32

    def validate(self) -> None:
        if self.source not in ("synthetic", "file", "generator"):
            raise InputError(f"pairs.source must be synthetic, file or generator, got {self.source!r}")
        if self.source in ("file", "generator") and not self.path:
            raise InputError(f"pairs.source={self.source} needs pairs.path (a pair file, or a generator pipeline folder)")
        bad = [k for k in (*self.kinds, self.heldout_kind) if k not in KINDS]
        if bad:
            raise InputError(f"unknown distortion kinds {bad}; choose from {', '.join(KINDS)}")
        if self.heldout_kind in self.kinds:
            raise InputError(f"pairs.heldout_kind={self.heldout_kind} is also a training kind: hold it out")
        if self.train < 1 or self.batch_size < 1 or self.heldout < 0:
            raise InputError("pairs.train and pairs.batch_size must be >= 1, pairs.heldout >= 0")


@dataclass
class RewardModelRunConfig:
    recipe: str = "debug"
    model: RMModelConfig = field(default_factory=RMModelConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, weight_decay=0.0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, mode="full", mixed_precision="no",
                                                                   ema_decay=0.0))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=500, export_pipeline=False))
    log: LogConfig = field(default_factory=lambda: LogConfig(every=25, tensorboard=False))
    eval_every: int = 500

    def validate(self) -> "RewardModelRunConfig":
        self.pairs.validate()
        self.train.validate()
        if self.model.ties_k <= 1:
            raise InputError(f"model.ties_k must be > 1, got {self.model.ties_k}")
        if not 0 <= self.model.summary_dropout < 1:
            raise InputError(f"model.summary_dropout must be in [0, 1), got {self.model.summary_dropout}")
        from idcrafter.rl.reward_model import READOUTS

        if self.model.readout not in READOUTS:
            raise InputError(f"model.readout must be one of {', '.join(READOUTS)}, got {self.model.readout!r}")
        if self.model.summary_dropout and self.model.backbone != "sprites":
            raise InputError("model.summary_dropout applies to the embedded backbone (model.backbone=sprites) only")
        return self


class RewardModelTrainer(Engine):
    """BTT training of a reward model (module docstring)."""

    run_tool: ClassVar[str] = "idcrafter train reward-model"
    progress_name: ClassVar[str] = "reward-model"

    def setup(self) -> None:
        from idcrafter.rl.distortions import read_pairs, synthetic_pairs

        self.begin_setup()
        cfg, pc = self.cfg, self.cfg.pairs
        self.rm = cfg.model.build()
        trainable = self.rm.trainable()
        self.setup_model(None, trainable, wrap=False, model=self.rm)
        common = dict(frames=pc.frames, size=pc.size, ref_size=pc.ref_size, tie_fraction=pc.tie_fraction)
        if pc.source == "synthetic":
            train = synthetic_pairs(pc.train, pc.seed, "train", pc.kinds, **common)
        elif pc.source == "generator":
            train = self._generator_pairs()
        else:
            train = read_pairs(pc.path, pc.ref_size)
        self.sets: dict[str, list[Pair]] = {"train": train}
        if pc.heldout:
            self.sets["heldout_ids"] = synthetic_pairs(pc.heldout, pc.seed + 1, "heldout", pc.kinds, **common)
            self.sets["heldout_kind"] = synthetic_pairs(pc.heldout, pc.seed + 2, "heldout", (pc.heldout_kind,),
                                                        **{**common, "tie_fraction": 0.0})
        if pc.heldout_path:
            self.sets["file"] = read_pairs(pc.heldout_path, pc.ref_size)
        self.features = {name: self._cached_features(name, pairs) for name, pairs in self.sets.items()}
        resumed = self.maybe_resume()
        self.finish_setup(resumed)

    def _generator_pairs(self) -> list[Pair]:
        """`pairs.train` train-split casts, each generated twice by the pipeline in `pairs.path`
        and ranked by `pairs.scorer` on `pairs.metric` (`rl.pairs.generator_pairs`)."""
        from idcrafter.generation import Case
        from idcrafter.pipeline import IDCrafterPipeline
        from idcrafter.rl.pairs import generator_pairs
        from idcrafter.scorers import build_scorer
        from idcrafter.world.dataset import make_example
        from idcrafter.world.scene import WorldConfig

        pc = self.cfg.pairs
        pipe = IDCrafterPipeline.from_pretrained(pc.path)
        pipe.set_progress_bar_config(disable=True)
        world = WorldConfig(frames=pc.frames, height=pc.size, width=pc.size, ref_size=pc.ref_size)
        cases = []
        for i in range(pc.train):
            ex = make_example(pc.seed, i, "train", world)
            cases.append(Case(key=f"train/{pc.seed}/{i}", prompt=ex.caption, references=list(ex.refs), seed=i,
                              size=(pc.frames, pc.size, pc.size)))
        pairs = generator_pairs(pipe, cases, build_scorer(pc.scorer), pc.metric, tie_margin=pc.tie_margin)
        if not pairs:
            raise InputError(f"no pair could be made from {pc.path}: every case failed to generate or score")
        return pairs

    def _cached_features(self, name: str, pairs: list[Pair]):
        """`_featurise`, kept in `<run>/features/<name>-<judge>.safetensors` (a pure function of the
        pairs and the frozen judge, so a resumed run reads it back instead of recomputing it; the
        file name carries a hash of the judge's part fingerprints, so a retrained judge misses it)."""
        import hashlib

        from idcrafter.rl.reward_model import SpriteFeatures
        from idcrafter.train import checkpoint as ckpt

        if self.cfg.model.backbone != "sprites":
            return None
        judge = hashlib.sha256(json.dumps(self.rm.config["judge_sha256"], sort_keys=True).encode()).hexdigest()[:12]
        path = self.run_dir / "features" / f"{name}-{judge}.safetensors"
        if self.resume and path.is_file():
            t = ckpt.load_tensors(path)
            if int(t["a.refs"].shape[0]) == len(pairs):
                return tuple(SpriteFeatures(**{k: t[f"{side}.{k}"] for k in ("refs", "ref_mask", "dets", "det_mask",
                                                                              "summary")}) for side in ("a", "b"))
        feats = self._featurise(pairs)
        if self.is_main:
            from safetensors.torch import save

            from idcrafter.utils.io import atomic_write_bytes, ensure_dir

            ensure_dir(path.parent)
            tensors = {f"{side}.{k}": v.contiguous() for side, f in zip(("a", "b"), feats) for k, v in f.tensors().items()}
            # the labels too, so the frozen features can be studied offline without rendering again
            tensors["target"] = torch.tensor([p.target for p in pairs], dtype=torch.int64)
            atomic_write_bytes(path, save(tensors))
        return feats

    def _featurise(self, pairs: list[Pair]):
        """Frozen features (embedded backbone) of both clips of every pair, else None."""
        if self.cfg.model.backbone != "sprites":
            return None
        refs, prompts = [p.references for p in pairs], [p.prompt for p in pairs]
        return (self.rm.features([p.a for p in pairs], refs, prompts),
                self.rm.features([p.b for p in pairs], refs, prompts))

    def _scores(self, name: str, rows: list[int], blank: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of both clips of the pairs `rows` of set `name`; `blank` (len(rows),) bool: pairs
        whose summary token reads "unknown" (0.5) on both sides (`model.summary_dropout`)."""
        pairs = [self.sets[name][i] for i in rows]
        feats = self.features[name]
        if feats is not None:
            sides = [feats[0].select(rows), feats[1].select(rows)]
            if blank is not None and bool(blank.any()):
                for f in sides:
                    f.summary = torch.where(blank[:, None], torch.full_like(f.summary, 0.5), f.summary)
            return self.rm.score_features(sides[0]), self.rm.score_features(sides[1])
        return (self.rm.score([p.a for p in pairs], [p.references for p in pairs], [p.prompt for p in pairs]),
                self.rm.score([p.b for p in pairs], [p.references for p in pairs], [p.prompt for p in pairs]))

    def run_step(self) -> dict[str, Any]:
        from idcrafter.rl import schedule

        n, bs = len(self.sets["train"]), self.cfg.pairs.batch_size
        gen = schedule.generator(self.cfg.train.seed, self.step, "order")
        rows = torch.randperm(n, generator=gen)[: min(bs, n)].tolist()
        target = torch.tensor([self.sets["train"][i].target for i in rows])
        p = self.cfg.model.summary_dropout
        blank = torch.rand(len(rows), generator=gen) < p if p > 0 else None
        r_a, r_b = self._scores("train", rows, blank)
        loss = L.btt_loss(r_a, r_b, target, self.cfg.model.ties_k).mean()
        loss.backward()
        out = self.optimizer_step(skip_nonfinite=True)
        out.update(loss=float(loss.detach()), acc=pairwise_accuracy(r_a.detach(), r_b.detach(), target))
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        was = self.rm.training
        self.rm.eval()
        out = {}
        for name in self.sets:
            if name == "train":
                continue
            rows = list(range(len(self.sets[name])))
            scores = [self._scores(name, rows[i: i + 64]) for i in range(0, len(rows), 64)]
            r_a, r_b = torch.cat([s[0] for s in scores]), torch.cat([s[1] for s in scores])
            target = torch.tensor([p.target for p in self.sets[name]])
            out[f"acc/{name}"] = pairwise_accuracy(r_a, r_b, target)
            out[f"btt/{name}"] = float(L.btt_loss(r_a, r_b, target, self.cfg.model.ties_k).mean())
        self.rm.train(was)
        return out

    def evaluate_if_due(self, step: int) -> None:
        every = self.cfg.eval_every
        if (every and step % every == 0) or step == self.cfg.train.steps:
            out = self.evaluate()
            self.logger.log(step, out)
            self._fire("on_eval", step, out)
            self.last_eval = out

    def finish(self, last: dict[str, Any]) -> None:
        from idcrafter.utils.io import atomic_write_json

        if self.is_main:
            self.rm.save(self.run_dir / "reward_model")
            atomic_write_json(self.run_dir / "eval.json", {"step": self.step, **getattr(self, "last_eval", {}),
                                                           "pairs": {k: len(v) for k, v in self.sets.items()}})
        self._fire("on_train_end", last)
        self.close()


def run_reward_model(config: RewardModelRunConfig, run_dir, resume: bool = False, overwrite: bool = False):
    """Train with `config` into `run_dir` (the CLI's entry point)."""
    return RewardModelTrainer(config, run_dir, resume=resume, overwrite=overwrite).train()
