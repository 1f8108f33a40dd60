"""Ours against the Phantom-style peer (issue 15): sampling time measured side by side, the FLOP
bound, and the one table (`scripts/peer_compare.py` prints it).

Timing on a shared CPU is noisy, so the compared pipelines are run interleaved (the order
alternates every repeat: A B, B A, ...), each repeat gives one ratio of two runs made seconds
apart, and the table reports medians with their spread (min-max). A fp32 GEMM probe runs in the
same rounds, so every repeat also gives the machine's attainable FLOP rate at that moment.

FLOP bound: `torch.utils.flop_counter` counts the matmul / attention FLOPs of one guided
velocity evaluation as the sampler calls it: for ours the cached two-row step ([cond; uncond]
over video tokens, subject keys/values read from the cache), for the peer three rows over video
+ reference tokens. The predicted ratio is peer FLOPs / ours; each model's efficiency is its
FLOPs per second over the GEMM probe's (1.0 = running at the bound).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from idcrafter.errors import InputError


@dataclass
class Timed:
    """Seconds per run of each name over the repeats, and the probe's GFLOP/s per repeat."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    gemm_gflops: list[float] = field(default_factory=list)

    def ratios(self, num: str, den: str) -> list[float]:
        """Per repeat, time(num) / time(den) of the two runs made in that repeat."""
        return [a / b for a, b in zip(self.seconds[num], self.seconds[den])]


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max (the table's "median [min-max]")."""
    if not values:
        raise InputError("no measurement to summarise")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def gemm_probe(n: int = 256, reps: int = 20) -> float:
    """Attainable fp32 GFLOP/s right now on this process's threads (an n^3 matmul, best of reps)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int, probe: Callable[[], float] | None = gemm_probe,
                warmup: bool = True) -> Timed:
    """Time each callable once per repeat, alternating the order every repeat (module docstring)."""
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    names = list(runs)
    if warmup:
        for n in names:
            runs[n]()
    out = Timed({n: [] for n in names})
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            runs[n]()
            out.seconds[n].append(time.perf_counter() - t0)
        if probe is not None:
            out.gemm_gflops.append(probe())
    return out


class _Flops:
    """Matmul FLOPs from `FlopCounterMode` plus attention FLOPs counted at the Python call: torch
    2.13's counter sees no FLOPs in CPU `scaled_dot_product_attention` (its fused CPU kernel has
    no formula), so the call is wrapped and 4 B H Lq Lk D (QK^T and AV) added per call."""

    def __init__(self) -> None:
        self.attention = 0

    def __enter__(self) -> "_Flops":
        from torch.utils.flop_counter import FlopCounterMode

        self._orig = F.scaled_dot_product_attention

        def counted(q, k, v, *args, **kwargs):
            self.attention += 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]
            return self._orig(q, k, v, *args, **kwargs)

        F.scaled_dot_product_attention = counted
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        F.scaled_dot_product_attention = self._orig

    @property
    def total(self) -> int:
        return int(self._mode.get_total_flops()) + self.attention


def velocity_flops(pipe, prompt: str, references: list, guidance_scale: float, size: tuple[int, int, int]) -> dict[str, int]:
    """FLOPs of one guided velocity evaluation (what each sampler step costs) and of the one-time
    condition encoding (`_Flops`: matmuls and attention)."""
    f, h, w = size
    with torch.no_grad():
        with _Flops() as once:
            cond = pipe.encode_conditions([prompt], [references], guidance_scale)
        v = pipe.velocity_fn(cond, guidance_scale)
        x = torch.randn(1, *pipe.codec.latent_shape(f, h, w))
        with _Flops() as step:
            v(x, torch.full((1,), 0.5))
    return {"step": step.total, "once": once.total}


def sampler_run(pipe, prompt: str, references: list, steps: int, guidance_scale: float,
                size: tuple[int, int, int], seed: int = 0) -> Callable[[], Any]:
    """One full sampling of `steps` steps (latents out: the same decode for both is left out)."""
    f, h, w = size

    def run():
        return pipe(prompt, references, num_frames=f, height=h, width=w, num_inference_steps=steps,
                    guidance_scale=guidance_scale, output_type="latent",
                    generator=torch.Generator().manual_seed(seed)).frames

    return run


def speed_table(timed: Timed, flops: dict[str, dict[str, int]], steps: int, base: str) -> list[dict[str, Any]]:
    """Per model: seconds per sample, ratio to `base` (per-repeat pairs), FLOPs per step, the
    predicted ratio (FLOPs / base FLOPs) and the efficiency (achieved FLOP/s over the probe's)."""
    peak = statistics.median(timed.gemm_gflops) * 1e9 if timed.gemm_gflops else None
    rows = []
    for name, secs in timed.seconds.items():
        fl = flops[name]["step"] * steps + flops[name]["once"]
        rows.append({
            "model": name, "seconds": spread(secs), "ratio": spread(timed.ratios(name, base)),
            "step_gflop": flops[name]["step"] / 1e9, "predicted_ratio": flops[name]["step"] / flops[base]["step"],
            "efficiency": None if peak is None else spread([fl / s / peak for s in secs]),
            "bound_seconds": None if peak is None else fl / peak,
        })
    return rows


def quality_columns(results: dict[str, Any], prefixes: tuple[str, ...] = ("judge", "audit")) -> dict[str, float | None]:
    """The judge / audit averages of an `idcrafter eval` results.json."""
    keys = ("total", "face_sim_mean", "face_sim_min", "leakage", "copy_paste", "attr_acc_mean")
    avg = results.get("averages", {})
    return {f"{p}/{k}": avg.get(f"{p}/{k}") for p in prefixes for k in keys}


def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, dict):
        return f"{v['median']:.3g} [{v['min']:.3g}-{v['max']:.3g}]"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows of dicts -> a markdown table over `columns` (missing values "n/a")."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


@torch.no_grad()
def bench_size_flops(refs: int = 3, seed: int = 0) -> dict[str, Any]:
    """The FLOP prediction at the `idcrafter bench model` size (dim 256 x 6 layers, 768 video
    tokens, a 48-token prompt padded to 512, `refs` references; `idcrafter.bench`): one cached
    two-row step of ours (references 26 x 26 latents, 169 tokens each, as the bench) against one
    three-row step of the peer (references at the frame's 32 x 32 latents, 256 tokens each, as
    Phantom pads them to the video size). Random weights: FLOPs do not depend on them."""
    from idcrafter.bench import bench_inputs
    from idcrafter.models.phantom import PhantomTransformer3DModel
    from idcrafter.models.presets import preset
    from idcrafter.models.transformer import IDCrafterTransformer3DModel

    torch.manual_seed(seed)
    out: dict[str, Any] = {}
    for name, cls, rows, side in (("ours", IDCrafterTransformer3DModel, 2, 26), ("peer", PhantomTransformer3DModel, 3, 32)):
        model = cls(**preset("bench")).eval()
        inp = bench_inputs(batch=1, refs=refs, seed=seed, ref_latent=side)
        txt = torch.cat([inp["txt"]] + [torch.zeros_like(inp["txt"])] * (rows - 1))  # [prompt; negative (; negative)]
        subj = torch.cat([inp["refs"]] * rows)
        mask = torch.ones(rows, refs, dtype=torch.bool)
        mask[-1] = False  # the last row has no references (guidance's unconditional branch)
        with _Flops() as once:
            cache = model.build_condition_cache(txt, subj, mask)
        with _Flops() as step:
            model(torch.cat([inp["x"]] * rows), torch.full((rows,), 500.0), condition_cache=cache)
        out[name] = {"step": step.total, "once": once.total, "rows": rows, "ref_tokens_each": (side // 2) ** 2}
    out["predicted_ratio"] = out["peer"]["step"] / out["ours"]["step"]
    return out
