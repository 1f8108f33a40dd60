"""Which samples, steps and seeds an RL iteration uses: pure functions of (config, iteration).

Everything random in an iteration comes from generators seeded by (train.seed, iteration, what,
index) (`seed_for`), never from a global RNG, so an iteration is the same function of its inputs
after a resume and whatever the number of processes.

Sample layout: the iteration's S = groups * G samples are numbered s = g * G + k (group g, member
k); process r takes the samples with s % W == r, in order, so every group is spread across the
processes (as flow_grpo's repeat sampler does) and rewards must be gathered before advantages.

SDE window (Flow-GRPO-Fast / MixGRPO): stochastic steps only on a window of `size` consecutive
steps, Euler elsewhere. Fixed, or sliding: the window starts at `start + (i // every) * stride`
(wrapping around), moving from high noise toward low as training proceeds. The last step (ending
at sigma 0) is never stochastic, so windows live in steps 0 .. N - 2.
"""

from __future__ import annotations

import numpy as np
import torch

from idcrafter.errors import InputError

SALTS = {"noise": 1, "shared_noise": 2, "sde": 3, "steps": 4, "order": 5, "nft_t": 6, "nft_eps": 7, "monitor": 8}


def seed_for(seed: int, iteration: int, what: str, index: int = 0) -> int:
    """A 63-bit seed for (run seed, iteration, purpose, index); independent across purposes."""
    ss = np.random.SeedSequence([int(seed), int(iteration), SALTS[what], int(index)])
    return int(ss.generate_state(2, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, iteration: int, what: str, index: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(seed, iteration, what, index))


def local_samples(groups: int, group_size: int, world_size: int, rank: int) -> list[tuple[int, int, int]]:
    """This process's (sample, group, member) triples of an iteration (module docstring)."""
    return [(s, s // group_size, s % group_size) for s in range(groups * group_size) if s % world_size == rank]


def sde_window(iteration: int, num_steps: int, size: int, start: int = 0, slide_every: int = 0,
               stride: int = 1) -> tuple[int, int]:
    """(start, end) half-open step range of the iteration's stochastic steps (module docstring);
    size 0 = every step that can be stochastic."""
    last = num_steps - 1  # steps 0 .. N - 2 may be stochastic
    if size == 0:
        return 0, last
    if size > last:
        raise InputError(f"rollout.window_size={size} is more than the {last} steps that can be stochastic "
                         f"with rollout.steps={num_steps}")
    positions = last - size + 1
    if start >= positions:
        raise InputError(f"rollout.window_start={start} leaves no room for a window of {size} in {last} steps")
    offset = (iteration // slide_every) * stride if slide_every > 0 else 0
    s = (start + offset) % positions
    return s, s + size


def trained_steps(sde_steps: list[int], fraction: float, gen: torch.Generator) -> list[int]:
    """The iteration's trained steps: floor(fraction * n) (at least 1) of the n stochastic steps,
    a random subset drawn with `gen`, in step order; the same for every sample (so every row of
    a micro-batch sits at the same step, which GRPO-Guard's per-step re-centring needs)."""
    n = len(sde_steps)
    if n == 0:
        raise InputError("no stochastic step to train: widen rollout.window_size or raise rollout.steps")
    k = max(1, int(fraction * n + 1e-9))
    pick = torch.randperm(n, generator=gen)[:k].sort().values.tolist()
    return [sde_steps[i] for i in pick]


def old_policy_decay(iteration: int, rate: float, cap: float) -> float:
    """DiffusionNFT's old-policy EMA decay at an iteration: min(rate * iteration, cap)."""
    return min(rate * iteration, cap)
