"""The side-by-side timing and FLOP accounting of `idcrafter.eval.peer_bench` (issue 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from idcrafter.errors import InputError
from idcrafter.eval import peer_bench as pb


def test_interleaved_alternates_order_and_pairs_ratios(monkeypatch):
    order, clock = [], [0.0]
    cost = {"a": 1.0, "b": 3.0}

    def make(name):
        def run():
            order.append(name)
            clock[0] += cost[name]
        return run

    monkeypatch.setattr(pb.time, "perf_counter", lambda: clock[0])
    timed = pb.interleaved({"a": make("a"), "b": make("b")}, repeats=3, probe=lambda: 100.0, warmup=False)
    assert order == ["a", "b", "b", "a", "a", "b"]  # ABBA...: neither always runs first
    assert timed.seconds == {"a": [1.0, 1.0, 1.0], "b": [3.0, 3.0, 3.0]}
    assert timed.ratios("b", "a") == [3.0, 3.0, 3.0] and timed.gemm_gflops == [100.0] * 3
    with pytest.raises(InputError):
        pb.interleaved({"a": make("a")}, repeats=0)


def test_spread_and_speed_table_by_hand():
    assert pb.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    timed = pb.Timed({"ours": [1.0, 2.0], "peer": [3.0, 4.0]}, gemm_gflops=[10.0, 10.0])
    flops = {"ours": {"step": 10**9, "once": 0}, "peer": {"step": 3 * 10**9, "once": 10**9}}
    rows = {r["model"]: r for r in pb.speed_table(timed, flops, steps=2, base="ours")}
    assert rows["peer"]["ratio"]["median"] == pytest.approx((3 / 1 + 4 / 2) / 2)  # per-repeat pairs
    assert rows["peer"]["predicted_ratio"] == 3.0 and rows["ours"]["predicted_ratio"] == 1.0
    # peer: 2 steps x 3 GFLOP + 1 GFLOP once = 7 GFLOP; at 3 s that is 7/3 GFLOP/s of a 10 GFLOP/s probe
    assert rows["peer"]["efficiency"]["max"] == pytest.approx(7 / 3 / 10)
    assert rows["peer"]["bound_seconds"] == pytest.approx(0.7)


def test_flop_count_includes_attention_by_hand():
    q = torch.randn(2, 3, 5, 4)  # (B, H, Lq, D)
    k = torch.randn(2, 3, 7, 4)
    w = torch.randn(4, 6)
    with pb._Flops() as f:
        F.scaled_dot_product_attention(q, k, k)
        q @ w
    # attention 4 B H Lq Lk D = 4 * 2 * 3 * 5 * 7 * 4; matmul 2 * (2 * 3 * 5) * 4 * 6
    assert f.total == 4 * 2 * 3 * 5 * 7 * 4 + 2 * 30 * 4 * 6
    assert F.scaled_dot_product_attention is f._orig  # restored


def test_markdown_table_formats_missing_and_spreads():
    table = pb.markdown_table([{"m": "x", "v": {"median": 2.0, "min": 1.0, "max": 3.0}, "w": None}], ["m", "v", "w"])
    assert table.splitlines()[2] == "| x | 2 [1-3] | n/a |"
