"""Speed benchmarks: ratios measured side by side in one run (never timed assertions).

`bench_model` (`idcrafter bench model`) on a fixed size: dim 256 (2 heads x 128), 6 layers,
ffn 1024, 768 video tokens (latents 16 x 3 x 32 x 32, patch 1x2x2), batch 2, fp32; a T5 context
as Wan's pipeline makes it (a 48-token prompt zero-padded to 512 x 4096), and 3 references of
26 x 26 latents (169 tokens each: 0.66 of a frame's tokens, as the real recipe's 512 px
references are beside 480 x 832 frames, 1024 / 1560 tokens). Both models get the same inputs; guidance's unconditional branch has an empty (all-zero)
prompt and no references.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from idcrafter import sampling


def gemm_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    """fp32 matmul throughput (GFLOP/s) on this machine with the current thread count: the best
    of `repeats` timed products (a peak is what the machine can do, so a slow outlier caused by
    another process must not lower it)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function, runs interleaved so drifts in machine load hit all alike."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _cpu_attention_flops() -> dict:
    """FLOP formulas for CPU attention kernels. torch's FlopCounterMode knows the CUDA flash /
    memory-efficient / cuDNN kernels but not `_scaled_dot_product_flash_attention_for_cpu`, which
    SDPA dispatches to on CPU, and it silently counts that kernel (forward and backward) as zero
    FLOPs. Same formulas as torch's for the CUDA kernels (two matmuls forward, five backward)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions and attention, including CPU attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        fn()
    return counter.get_total_flops()


PROMPT_TOKENS = 48


def bench_inputs(batch: int = 2, refs: int = 3, seed: int = 0, ref_latent: int = 26) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, 16, 3, 32, 32, generator=g),  # 3 x 16 x 16 = 768 tokens
        "t": torch.full((batch,), 500.0),
        "txt": torch.cat([torch.randn(batch, PROMPT_TOKENS, 4096, generator=g),  # Wan zero-pads to 512
                          torch.zeros(batch, 512 - PROMPT_TOKENS, 4096)], 1),
        "refs": torch.randn(batch, refs, 16, 1, ref_latent, ref_latent, generator=g),  # (ref_latent/2)^2 tokens each
    }


def _models(seed: int = 0):
    from diffusers import WanTransformer3DModel

    from idcrafter.models.presets import preset, wan_config
    from idcrafter.models.transformer import IDCrafterTransformer3DModel

    torch.manual_seed(seed)
    wan = WanTransformer3DModel(**wan_config("bench")).eval()
    cfg = {k: v for k, v in preset("bench").items() if k not in wan_config("bench")}
    model = IDCrafterTransformer3DModel.from_wan(wan, **cfg).eval()
    with torch.no_grad():  # trained-looking gates so the subject branch really runs
        for blk in model.blocks:
            blk.subject_branch.gate.normal_(0, 0.1)
    return wan, model


@torch.no_grad()
def _sampling_speedup(model, inp: dict, steps: int, guidance: float) -> dict[str, float]:
    """50-step CFG sampling, with the condition cache (the pipeline's path) vs recomputing all."""
    from idcrafter.pipeline import Conditions, make_velocity_fn

    b = inp["x"].shape[0]
    txt2 = torch.cat([inp["txt"], torch.zeros_like(inp["txt"])])
    refs2 = torch.cat([inp["refs"], torch.zeros_like(inp["refs"])])
    mask2 = torch.cat([torch.ones(b, inp["refs"].shape[1], dtype=torch.bool),
                       torch.zeros(b, inp["refs"].shape[1], dtype=torch.bool)])
    sigmas = sampling.sigma_schedule(steps, shift=3.0)

    def cached():
        cond = Conditions(model.build_condition_cache(txt2, refs2, mask2), b, True)
        return sampling.sample(make_velocity_fn(model, cond, guidance), inp["x"], sigmas).latents

    def uncached():
        def model_fn(x, sigma, branches):
            return model(x, sampling.sigma_to_timestep(sigma), txt2, subject_latents=refs2, subject_mask=mask2).sample
        return sampling.sample(lambda x, s: sampling.guided_velocity(model_fn, x, s, guidance), inp["x"], sigmas).latents

    t = _interleaved({"cached": cached, "uncached": uncached}, repeats=2)
    diff = (cached() - uncached()).abs().max().item()
    # the speed-up the cache could give if every FLOP ran at the same rate: one guided step's
    # FLOPs recomputing the conditions over its FLOPs reading them from the cache
    x2, t2 = torch.cat([inp["x"]] * 2), torch.cat([inp["t"]] * 2)
    cache = model.build_condition_cache(txt2, refs2, mask2)
    step_flops = {"cached": count_flops(lambda: model(x2, t2, condition_cache=cache)),
                  "uncached": count_flops(lambda: model(x2, t2, txt2, subject_latents=refs2, subject_mask=mask2))}
    return {"cache_speedup": t["uncached"] / t["cached"], "cache_max_abs_diff": diff,
            "cache_flop_ratio": step_flops["uncached"] / step_flops["cached"],
            "sampling_s_cached": t["cached"], "sampling_s_uncached": t["uncached"], "sampling_steps": steps}


@torch.no_grad()
def bench_model(steps: int = 50, repeats: int = 10, guidance: float = 2.5, ref_latent: int = 26) -> dict[str, float]:
    """All figures of `idcrafter bench model` (see the module docstring for the size;
    `ref_latent` is the side of each reference's latent: 26 by default, 32 = the frame's)."""
    wan, model = _models()
    inp = bench_inputs(ref_latent=ref_latent)
    peak = gemm_peak_gflops()
    wan_fwd = lambda: wan(inp["x"], inp["t"], inp["txt"]).sample  # noqa: E731
    ours_fwd = lambda: model(inp["x"], inp["t"], inp["txt"], subject_latents=inp["refs"]).sample  # noqa: E731
    cache = model.build_condition_cache(inp["txt"], inp["refs"])
    ours_step = lambda: model(inp["x"], inp["t"], condition_cache=cache).sample  # noqa: E731
    t = _interleaved({"wan": wan_fwd, "ours": ours_fwd, "ours_cached": ours_step}, repeats)
    peak = max(peak, gemm_peak_gflops())  # before and after the timed forwards
    flops = count_flops(ours_fwd)
    out = {
        "forward_ratio_vs_wan": t["ours"] / t["wan"],
        "cached_step_ratio_vs_wan": t["ours_cached"] / t["wan"],
        "forward_ms_wan": 1e3 * t["wan"], "forward_ms_ours": 1e3 * t["ours"],
        "forward_gflop": flops / 1e9, "gemm_peak_gflops": peak,
        "gemm_fraction": flops / t["ours"] / 1e9 / peak,
        "wan_gemm_fraction": count_flops(wan_fwd) / t["wan"] / 1e9 / peak,
        "threads": torch.get_num_threads(), "ref_tokens_each": (ref_latent // 2) ** 2,
    }
    out.update(_sampling_speedup(model, inp, steps, guidance))
    return out


# ---------------------------------------------------------------------- training speed
def _step_figures(step: Callable[[], object], batch: int, repeats: int, peak: float) -> dict[str, float]:
    """samples/s and achieved fraction of the fp32 GEMM peak of one training step (forward,
    backward, optimizer); FLOPs are counted by torch's FlopCounterMode (matmuls, convolutions,
    attention), so the fraction is an honest lower bound."""
    t = _median_time(step, repeats)
    flops = count_flops(step)
    return {"samples_per_s": batch / t, "step_s": t, "step_gflop": flops / 1e9,
            "gemm_fraction": flops / t / 1e9 / peak}


def _bench_train_recipe(name: str, repeats: int, overrides: list[str]) -> dict[str, float]:
    import tempfile

    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train.sft import Trainer

    cfg = apply_overrides(recipe(name), ["eval.every=0", "eval.sample_every=0", "log.progress=false",
                                         "log.tensorboard=false", "data.prefetch=0", "checkpoint.every=0",
                                         "train.threads=0", *overrides])
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tr = Trainer(cfg, tmp)
        tr.setup()
        micro = tr.stream.next()
        out = _step_figures(lambda: tr.train_step(micro), tr.global_batch, repeats, gemm_peak_gflops())
        tr.close()
    return {**out, "batch": tr.global_batch, "mixed_precision": cfg.train.mixed_precision}


def _bench_train_size(repeats: int) -> dict[str, float]:
    """The `bench model` size (fp32, batch 2): rectified-flow loss, backward, AdamW step."""
    _, model = _models()
    model.train()
    inp = bench_inputs()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(inp["x"].shape, generator=g)
    t = torch.rand(inp["x"].shape[0], generator=g)
    z_t = (1 - t.view(-1, 1, 1, 1, 1)) * inp["x"] + t.view(-1, 1, 1, 1, 1) * eps

    def step() -> None:
        v = model(z_t, t * 1000, inp["txt"], subject_latents=inp["refs"]).sample
        torch.nn.functional.mse_loss(v, eps - inp["x"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = _step_figures(step, inp["x"].shape[0], repeats, gemm_peak_gflops())
    return {**out, "batch": inp["x"].shape[0], "mixed_precision": "no"}


def _bench_train_child(which: str, repeats: int, threads: int, overrides: list[str], queue) -> None:
    import resource

    torch.set_num_threads(threads)
    out = _bench_train_size(repeats) if which == "bench" else _bench_train_recipe(which, repeats, overrides)
    # peak resident memory of this (fresh) process: model, optimizer, activations, data, torch itself
    out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(out)


def bench_train(targets: tuple[str, ...] = ("sprites", "bench"), repeats: int = 5,
                threads: int | None = None, overrides: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """`idcrafter bench train`: samples/s, achieved GEMM fraction and peak memory of a training
    step for each target (a recipe name, or `bench` for the `bench model` size). Each target runs
    in a fresh process, so its peak memory is its own."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    threads = threads or torch.get_num_threads()
    results = {}
    for which in targets:
        q = ctx.Queue()
        p = ctx.Process(target=_bench_train_child, args=(which, repeats, threads, list(overrides), q))
        p.start()
        results[which] = q.get()
        p.join()
        results[which]["threads"] = threads
    return results
