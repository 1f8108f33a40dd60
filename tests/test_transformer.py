"""IDCrafterTransformer3DModel: parity with Wan, subject stream properties, cache, round trip."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from idcrafter.errors import InputError
from idcrafter.models.presets import preset, wan_config
from idcrafter.models.transformer import IDCrafterTransformer3DModel, collapse_padding

VARIANTS = ["hierarchical", "intra_only", "concat"]


def tiny_wan(seed=0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    wan = WanTransformer3DModel(**wan_config("debug")).eval()
    for p in wan.parameters():  # far from init, so parity is not a coincidence of zeros
        p.data.normal_(0, 0.2)
    return wan


def inputs(b=2, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 3, 8, 8, generator=g)
    t = torch.tensor([700.0, 30.0][:b])
    txt = torch.randn(b, 7, 32, generator=g)
    refs = torch.randn(b, k, 4, 1, 8, 8, generator=g)
    return x, t, txt, refs


def perturb_new(model, scale=0.3):
    """Simulate training: move the zero-initialised gates so subjects matter."""
    torch.manual_seed(5)
    for name, p in model.new_parameters().items():
        if name.endswith("gate") or name.endswith("sink_k"):
            p.data.normal_(0, scale)


@pytest.mark.parametrize("variant,attention", [(v, "self") for v in VARIANTS] + [("hierarchical", "cross"),
                                                                                  ("hierarchical", "layered")])
def test_parity_with_wan_at_initialisation(variant, attention):
    wan = tiny_wan()
    model = IDCrafterTransformer3DModel.from_wan(wan, subject_variant=variant, max_ref_tokens=64,
                                                 subject_attention=attention).eval()
    x, t, txt, refs = inputs()
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        ref_out = wan(x, t, txt).sample
        assert (model(x, t, txt).sample - ref_out).abs().max() <= 1e-6
        out = model(x, t, txt, subject_latents=refs, subject_mask=mask).sample
        assert (out - ref_out).abs().max() <= 1e-6
        tok_t = torch.full((2, 3 * 4 * 4), 400.0)  # per-token timesteps (Wan 2.2 style) pass through
        assert (model(x, tok_t, txt, subject_latents=refs).sample - wan(x, tok_t, txt).sample).abs().max() <= 1e-6


def test_collapse_padding_by_hand():
    a, p = [1.0, 2.0], [0.0, 0.0]
    tokens = torch.tensor([[a, [3.0, 1.0], p, p, p], [a, p, p, p, p]])  # (2, 5, 2): runs of 3 and 4
    kept, bias = collapse_padding(tokens)
    assert kept == 3  # row 0 keeps a, b, one pad; row 1 keeps a, one pad (+ one masked slot)
    inf = float("inf")
    expected = torch.tensor([[0.0, 0.0, torch.tensor(3.0).log()], [0.0, torch.tensor(4.0).log(), -inf]])
    assert torch.equal(bias[:, 0, 0], expected)
    assert collapse_padding(torch.randn(2, 5, 2)) == (5, None)  # nothing to collapse
    # attention over the collapsed keys equals attention over all of them
    q, k, v = torch.randn(2, 1, 4, 2), torch.randn(2, 1, 5, 2), torch.randn(2, 1, 5, 3)
    k[0, :, 2:], k[1, :, 1:] = k[0, :, 2:3], k[1, :, 1:2]
    v[0, :, 2:], v[1, :, 1:] = v[0, :, 2:3], v[1, :, 1:2]
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    short = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :kept], v[:, :, :kept], attn_mask=bias)
    assert (full - short).abs().max() < 1e-6


def test_parity_with_wan_on_zero_padded_prompts():
    """Wan pads prompts with zeros to the encoder length; the collapsed keys give Wan's output."""
    wan = tiny_wan()
    model = IDCrafterTransformer3DModel.from_wan(wan, max_ref_tokens=64).eval()
    x, t, txt, refs = inputs()
    txt[0, 3:], txt[1, 5:] = 0, 0  # prompts of 3 and 5 tokens
    with torch.no_grad():
        ref_out = wan(x, t, txt).sample
        assert (model(x, t, txt).sample - ref_out).abs().max() <= 1e-5
        assert (model(x, t, txt, subject_latents=refs).sample - ref_out).abs().max() <= 1e-5
        assert model.build_condition_cache(txt).text_kv[0][0].shape[2] == 6  # 5 tokens + one pad key


def test_from_wan_folder_and_missing_folder(tmp_path):
    wan = tiny_wan()
    wan.save_pretrained(tmp_path / "transformer")
    model = IDCrafterTransformer3DModel.from_wan(tmp_path).eval()
    x, t, txt, _ = inputs()
    with torch.no_grad():
        assert (model(x, t, txt).sample - wan(x, t, txt).sample).abs().max() <= 1e-6
    with pytest.raises(InputError, match="no Wan transformer"):
        IDCrafterTransformer3DModel.from_wan(tmp_path / "nowhere")


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_to_n_subjects_in_one_batch_and_padding_is_invisible(variant):
    model = IDCrafterTransformer3DModel(**preset("debug", subject_variant=variant)).eval()
    perturb_new(model)
    x, t, txt, refs = inputs(b=2, k=3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, txt, subject_latents=refs, subject_mask=mask).sample
        assert out.shape == x.shape
        # sample 1 with its single subject, alone and unpadded, gives the same output
        alone = model(x[1:], t[1:], txt[1:], subject_latents=refs[1:, :1]).sample
        assert torch.allclose(out[1:], alone, atol=1e-5)
        # garbage in a padded slot changes nothing
        refs2 = refs.clone()
        refs2[1, 2] = 100.0
        assert torch.allclose(out, model(x, t, txt, subject_latents=refs2, subject_mask=mask).sample, atol=1e-6)


def test_intra_stage_of_a_is_unchanged_when_b_changes_but_inter_stage_mixes():
    model = IDCrafterTransformer3DModel(**preset("debug")).eval()
    x, t, txt, refs = inputs(b=1, k=2)
    refs_b = refs.clone()
    refs_b[0, 1].normal_()

    def stages(r):
        tok = model.patch_embedding(r.flatten(0, 1)).flatten(2).transpose(1, 2).unflatten(0, (1, 2))
        tok = model.subject_embed(tok)
        intra = model.subject_stream.run_intra(tok)
        ctx = model.condition_embedder.text_embedder(txt)
        full = model.subject_stream(tok, torch.ones(1, 2, dtype=torch.bool), ctx, torch.ones(1, 7, dtype=torch.bool))
        return intra, full

    with torch.no_grad():
        (i1, f1), (i2, f2) = stages(refs), stages(refs_b)
    n = i1.shape[2]
    assert torch.equal(i1[:, 0], i2[:, 0])  # subject A's intra-subject tokens: untouched
    assert not torch.allclose(f1[:, :n], f2[:, :n])  # inter-subject stage lets A see B


@pytest.mark.parametrize("attention", ["self", "layered", "joint", "cross"])
def test_gradients_reach_every_new_parameter(attention):
    model = IDCrafterTransformer3DModel(**preset("debug", text_mode="t5+vlm", vlm_dim=24, subject_attention=attention))
    perturb_new(model)
    x, t, txt, refs = inputs()
    vlm = torch.randn(2, 5, 24)
    out = model(x, t, txt, subject_latents=refs, grounded_hidden_states=vlm).sample
    out.square().mean().backward()
    missing = [n for n, p in model.new_parameters().items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_condition_cache_matches_uncached_path():
    model = IDCrafterTransformer3DModel(**preset("debug")).eval()
    perturb_new(model)
    x, t, txt, refs = inputs()
    with torch.no_grad():
        cache = model.build_condition_cache(txt, refs)
        a = model(x, t, condition_cache=cache).sample
        b = model(x, t, txt, subject_latents=refs).sample
        c = model(x * 0.5, t * 0.3, condition_cache=cache).sample  # reused at another step
        d = model(x * 0.5, t * 0.3, txt, subject_latents=refs).sample
    assert torch.equal(a, b) and torch.equal(c, d)
    # a row without subjects (guidance's unconditional branch) is skipped by the branch: exactly Wan
    none = torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        cache = model.build_condition_cache(txt, refs, none)
        mixed = model(x, t, condition_cache=cache).sample
        assert torch.equal(mixed, model(x, t, txt, subject_latents=refs, subject_mask=none).sample)
        assert torch.allclose(mixed[1], model(x[1:], t[1:], txt[1:]).sample[0], atol=1e-6)
        assert torch.allclose(mixed[0], b[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["t5", "t5+vlm"])
def test_subject_stream_runs_only_over_rows_with_subjects(mode):
    kw = dict(text_mode=mode, vlm_dim=24) if mode != "t5" else {}
    model = IDCrafterTransformer3DModel(**preset("debug", **kw)).eval()
    perturb_new(model)
    x, t, txt, refs = inputs(b=2)
    extra = dict(grounded_hidden_states=torch.randn(2, 5, 24)) if mode != "t5" else {}
    seen = []
    model.subject_stream.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    none = torch.tensor([[0, 0, 0], [1, 1, 0]], dtype=torch.bool)  # row 0 has no subject
    with torch.no_grad():
        out = model(x, t, txt, subject_latents=refs, subject_mask=none, **extra).sample
        alone = model(x[1:], t[1:], txt[1:], subject_latents=refs[1:], subject_mask=none[1:],
                      **{k: v[1:] for k, v in extra.items()}).sample
        wan_row = model(x[:1], t[:1], txt[:1], **{k: v[:1] for k, v in extra.items()}).sample
    assert seen[0] == 1  # the stream never saw the row without subjects
    assert torch.allclose(out[1:], alone, atol=1e-6) and torch.allclose(out[:1], wan_row, atol=1e-6)


@pytest.mark.parametrize("mode", ["vlm", "t5+vlm"])
def test_text_modes(mode):
    model = IDCrafterTransformer3DModel(**preset("debug", text_mode=mode, vlm_dim=24)).eval()
    perturb_new(model)
    x, t, txt, refs = inputs()
    vlm = torch.randn(2, 5, 24)
    with torch.no_grad():
        out = model(x, t, None if mode == "vlm" else txt, subject_latents=refs, grounded_hidden_states=vlm,
                    grounded_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    if mode == "vlm":  # VLM tokens replace T5: without them there is no prompt
        with pytest.raises(InputError, match="grounded_hidden_states"):
            model(x, t, txt)


def test_save_load_round_trip(tmp_path):
    model = IDCrafterTransformer3DModel(**preset("debug", subject_variant="intra_only")).eval()
    perturb_new(model)
    model.save_pretrained(tmp_path)
    back = IDCrafterTransformer3DModel.from_pretrained(tmp_path).eval()
    assert back.config.subject_variant == "intra_only"
    x, t, txt, refs = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, txt, subject_latents=refs).sample, back(x, t, txt, subject_latents=refs).sample)


def test_bad_subject_inputs_fail_clearly():
    model = IDCrafterTransformer3DModel(**preset("debug")).eval()
    x, t, txt, _ = inputs()
    with pytest.raises(InputError, match="at most 4"):
        model(x, t, txt, subject_latents=torch.randn(2, 5, 4, 1, 8, 8))
    with pytest.raises(InputError, match=r"\(B, K, C, 1, h, w\)"):
        model(x, t, txt, subject_latents=torch.randn(2, 4, 1, 8, 8))


@pytest.mark.parametrize("name,billions", [("wan2.1-1.3b", 1.42), ("wan2.1-14b", 14.29)])
def test_real_presets_on_meta_device(name, billions):
    with torch.device("meta"):
        model = IDCrafterTransformer3DModel(**preset(name))
        wan = WanTransformer3DModel(**wan_config(name))
    base = sum(p.numel() for p in wan.parameters())
    assert abs(base / 1e9 - billions) < 0.01
    total = sum(p.numel() for p in model.parameters())
    new = sum(p.numel() for p in model.new_parameters().values())
    assert total == base + new
    assert set(wan.state_dict()) <= set(model.state_dict())


def test_layered_subject_states_ignore_the_video_and_rows_without_subjects():
    model = IDCrafterTransformer3DModel(**preset("debug", subject_attention="layered", subject_gate_init=1.0)).eval()
    x, t, txt, refs = inputs()
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)  # row 1: no subjects
    with torch.no_grad():
        cache = model.build_condition_cache(txt, refs, mask)
        out = model(x, t, condition_cache=cache).sample
        assert torch.equal(out, model(x, t, txt, subject_latents=refs, subject_mask=mask).sample)
        assert (out[1] - model(x, t, txt).sample[1]).abs().max() < 1e-6  # no subjects: no branch
        assert (out[0] - model(x, t, txt).sample[0]).abs().max() > 1e-3  # subjects matter
        again = model.build_condition_cache(txt, refs, mask)  # deterministic: one cache serves every step
        assert all(torch.equal(a[0], b[0]) for a, b in zip(cache.subject_kv, again.subject_kv))


def test_joint_attention_is_one_softmax_over_video_and_rotated_subject_keys():
    """"joint" by hand: block 0's self-attention equals softmax over [video keys (RoPE at their
    positions); subject keys (RoPE at frame -(k+1), their grid cell)], and rows without subjects
    get plain self-attention."""
    from idcrafter.models.attention import apply_rope

    model = IDCrafterTransformer3DModel(**preset("debug", subject_attention="joint")).eval()
    x, t, txt, refs = inputs(k=2)
    mask = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)  # row 0: one reference; row 1: none
    with torch.no_grad():
        cache = model.build_condition_cache(txt, refs, mask)
        assert torch.equal(model(x, t, condition_cache=cache).sample,
                           model(x, t, txt, subject_latents=refs, subject_mask=mask).sample)
        blk, a = model.blocks[0], model.blocks[0].attn1
        hid = torch.randn(2, 3 * 4 * 4, 24)  # (B, L, C) block input
        cos, sin = model.rope(x)
        got = blk.self_attention(hid, (cos, sin), cache.subject_kv[0])
        q = apply_rope(a.norm_q(a.to_q(hid)).unflatten(2, (2, -1)), cos, sin)
        k = apply_rope(a.norm_k(a.to_k(hid)).unflatten(2, (2, -1)), cos, sin)
        v = a.to_v(hid).unflatten(2, (2, -1))
        s = model.subject_tokens(refs[:1], mask[:1], *model._grounding(model.text_context(txt[:1], None),
                                                                     None, None, None, None, None))[0]
        ks = a.norm_k(a.to_k(s)).unflatten(2, (2, -1))  # (1, 2*16, H, D): reference 0 then the absent 1
        f = model.rope.freqs_cos.shape[1]
        pos = [(-(kk + 1), i, j) for kk in range(2) for i in range(4) for j in range(4)]
        angle = lambda p, d0, d1, r: p * r.freqs_cos.new_tensor(  # noqa: E731 - the table's angle by hand
            [1.0 / 10000 ** (2 * (m // 2) / (d1 - d0)) for m in range(d1 - d0)])
        r = model.rope
        ang = torch.stack([torch.cat([angle(pt, 0, r.t_dim, r), angle(ph, 0, r.h_dim, r), angle(pw, 0, r.w_dim, r)])
                           for pt, ph, pw in pos])  # (32, D)
        assert ang.shape[1] == f
        ks = apply_rope(ks, ang.cos()[None, :, None], ang.sin()[None, :, None])
        vs = a.to_v(s).unflatten(2, (2, -1))
        outs = []
        for row in range(2):
            kk, vv = k[row], v[row]  # (L, H, D)
            if row == 0:  # only reference 0's 16 tokens are valid keys
                kk, vv = torch.cat([kk, ks[0, :16]]), torch.cat([vv, vs[0, :16]])
            w = torch.einsum("lhd,mhd->hlm", q[row], kk) / q.shape[-1] ** 0.5
            outs.append(torch.einsum("hlm,mhd->lhd", w.softmax(-1), vv).flatten(1))
        want = a.to_out[0](torch.stack(outs))
        assert torch.allclose(got, want, atol=1e-5)
        # row 1 (no subjects) is plain Wan self-attention; row 0 reads its reference
        plain = blk.self_attention(hid, (cos, sin), None)
        assert torch.allclose(got[1], plain[1], atol=1e-6) and (got[0] - plain[0]).abs().max() > 1e-3


def test_joint_subject_positions_for_latent_grids_feature_tokens_and_text():
    """`subject_rope`: reference k at temporal position -(k+1); latent tokens on their grid,
    vision-feature tokens (no grid) at spatial 0; grounded text tokens unrotated."""
    model = IDCrafterTransformer3DModel(**preset("debug", subject_attention="joint"))
    r = model.rope
    cos, sin = model.subject_rope(torch.zeros(1, 2, 4, 1, 4, 6), context_length=2 * 2 * 3 + 5)  # 2 x 3 grid
    assert cos.shape == (1, 17, 1, r.freqs_cos.shape[1])
    t = slice(0, r.t_dim)
    hw = slice(r.t_dim, None)
    # token 7 = reference 1, row 0, column 1: time -2, h 0, w 1
    assert torch.allclose(cos[0, 7, 0, t], r.freqs_cos[2, t]) and torch.allclose(sin[0, 7, 0, t], -r.freqs_sin[2, t])
    w_part = slice(r.t_dim + r.h_dim, None)
    assert torch.allclose(sin[0, 7, 0, w_part], r.freqs_sin[1, w_part])
    assert torch.equal(cos[0, 12:], torch.ones_like(cos[0, 12:])) and torch.equal(sin[0, 12:], torch.zeros_like(sin[0, 12:]))
    feat_cos, feat_sin = model.subject_rope(torch.zeros(1, 3, 5, 16), context_length=15)  # (B, K, L, D) features
    assert torch.equal(feat_sin[0, :, 0, hw], torch.zeros_like(feat_sin[0, :, 0, hw]))  # no grid: spatial 0
    assert torch.allclose(feat_sin[0, 10, 0, t], -r.freqs_sin[3, t])  # reference 2: time -3
    with pytest.raises(InputError, match="rope_max_seq_len"):
        model.subject_rope(torch.zeros(1, 2, 4, 1, 80, 2), context_length=2 * 40)
