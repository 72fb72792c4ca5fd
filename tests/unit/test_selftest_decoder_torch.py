"""The fused decode step computes what the unfused one did: needs torch, on the CPU.

tests/unit runs without torch (the unit venv has none), so this module skips, visibly
and with its reason, where torch is missing; SELFTEST_REQUIRE_TORCH=1 turns that skip
into a failure, for runs that must prove the decoder. In CI the decoder is also run by
tests/integration/test_selftest_in_image.py::test_cached_decode_equals_full_recompute,
inside the image, against a full recompute of the sequence.
"""

import os

import pytest

try:
    import torch
except ImportError:
    if os.environ.get("SELFTEST_REQUIRE_TORCH") == "1":
        raise
    pytest.skip(
        "needs torch (not in the unit venv; set SELFTEST_REQUIRE_TORCH=1 where torch is installed to make this "
        "a failure instead of a skip)",
        allow_module_level=True,
    )

from selftest import decoder as decoder_mod  # noqa: E402
from selftest.decoder import Decoder  # noqa: E402
from selftest.shapes import DecoderShape  # noqa: E402

SHAPE = DecoderShape(
    dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab=4 * 97, batch=3, prompt_len=9, new_tokens=6
)


def unfused_decode_step(model: Decoder):
    """The decode step as the probe ran it before the fusions (kept here as the reference)."""
    s, F = model.shape, model.F
    B, hd = s.batch, s.head_dim
    x = F.embedding(model.token.view(B, 1), model.embed)
    cis = model.cis.index_select(0, model.pos).view(1, 1, 1, -1)
    visible = (model.positions <= model.pos).view(1, 1, 1, s.max_len)

    def rms_norm(t, weight):
        return F.rms_norm(t, (t.shape[-1],), weight, s.norm_eps)

    for i, layer in enumerate(model.layers):
        q, k, v = model.split_qkv(F.linear(rms_norm(x, layer["attn_norm"]), layer["wqkv"]), cis)
        model.k_cache[i].index_copy_(2, model.pos, k.transpose(1, 2))
        model.v_cache[i].index_copy_(2, model.pos, v.transpose(1, 2))
        q = q.reshape(B, s.n_kv_heads, s.group, hd)
        attn = F.scaled_dot_product_attention(q, model.k_cache[i], model.v_cache[i], attn_mask=visible)
        x = x + F.linear(attn.reshape(B, 1, s.n_heads * hd), layer["wo"])
        gate, up = F.linear(rms_norm(x, layer["mlp_norm"]), layer["w13"]).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, layer["w2"])
    logits = F.linear(rms_norm(x[:, 0], model.final_norm), model.embed)
    model.token.copy_(logits.argmax(dim=-1))
    model.pos.add_(1)
    return logits


def prefilled(dtype, seed=0):
    model = Decoder(torch, SHAPE, "cpu", dtype, seed=seed)
    prompt = torch.randint(0, SHAPE.vocab, (SHAPE.batch, SHAPE.prompt_len), generator=torch.Generator().manual_seed(1))
    first = model.prefill(prompt).argmax(-1)
    model.start_decode(first, SHAPE.prompt_len)
    return model


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("fused_rms_norm", [True, False])
def test_fused_decode_step_gives_the_unfused_logits_cpu(dtype, tolerance, fused_rms_norm):
    with torch.inference_mode():
        fused, reference = prefilled(dtype), prefilled(dtype)
        fused.fused_rms_norm = fused_rms_norm and decoder_mod.has_fused_rms_norm(torch)
        for _ in range(SHAPE.new_tokens):
            got, want = fused.decode_step(), unfused_decode_step(reference)
            scale = want.float().abs().max().item()
            assert (got.float() - want.float()).abs().max().item() <= tolerance * scale
            assert torch.equal(fused.pos, reference.pos)
            if dtype == torch.float32:
                assert torch.equal(fused.token, reference.token)  # the same tokens, so the same next step
            else:  # bf16 rounding may flip a near-tie: feed both the same token so errors cannot compound
                fused.token.copy_(reference.token)


def test_rms_norm_without_the_fused_kernel_is_rms_norm_cpu():
    model = Decoder(torch, SHAPE, "cpu", torch.float32, seed=0)
    model.fused_rms_norm = False
    x = torch.randn(5, 7, SHAPE.dim, generator=torch.Generator().manual_seed(3)) * 3 + 0.5
    weight = torch.rand(SHAPE.dim, generator=torch.Generator().manual_seed(4)) + 0.5
    want = torch.nn.functional.rms_norm(x, (SHAPE.dim,), weight, SHAPE.norm_eps)
    torch.testing.assert_close(model.rms_norm(x, weight), want, rtol=1e-5, atol=1e-5)


def test_two_pass_argmax_is_argmax_ties_included_cpu():
    model = Decoder(torch, SHAPE, "cpu", torch.float32, seed=0)
    assert model.argmax_chunk and SHAPE.vocab % model.argmax_chunk == 0
    logits = torch.randn(SHAPE.batch, SHAPE.vocab, generator=torch.Generator().manual_seed(5))
    logits[0, 10] = logits[0, 300] = 50.0  # a tie across chunks: the first index wins
    logits[1, 200] = logits[1, 201] = 50.0  # a tie inside one chunk
    assert torch.equal(model.next_token(logits), logits.argmax(dim=-1))
    assert model.next_token(logits).tolist()[:2] == [10, 200]


def test_cached_decode_equals_full_recompute_cpu():
    with torch.inference_mode():
        model = Decoder(torch, SHAPE, "cpu", torch.float32, seed=0)
        prompt = torch.randint(0, SHAPE.vocab, (SHAPE.batch, SHAPE.prompt_len), generator=torch.Generator().manual_seed(1))
        first = model.prefill(prompt).argmax(-1)
        model.start_decode(first, SHAPE.prompt_len)
        sequence = torch.cat([prompt, first[:, None]], dim=1)
        for _ in range(SHAPE.new_tokens - 1):
            cached = model.decode_step()
            reference = Decoder(torch, SHAPE, "cpu", torch.float32, seed=0).prefill(sequence)
            torch.testing.assert_close(cached, reference, rtol=1e-4, atol=1e-4)
            sequence = torch.cat([sequence, cached.argmax(-1)[:, None]], dim=1)


def test_each_fusion_undone_gives_the_same_logits_and_is_restored_cpu():
    """selftest.profile --ablate times the step with each fusion undone: each variant must compute the same step."""
    from selftest.profile import ablations

    with torch.inference_mode():
        model = prefilled(torch.float32)
        token, pos = model.token.clone(), int(model.pos.item())
        want = model.decode_step()
        variants = ablations(torch, model)
        assert len(variants) >= 4
        for name, apply in variants.items():
            restore = apply()
            model.start_decode(token, pos)
            torch.testing.assert_close(model.decode_step(), want, rtol=1e-5, atol=1e-5, msg=name)
            restore()
        assert model.fusions == prefilled(torch.float32).fusions
        model.start_decode(token, pos)
        torch.testing.assert_close(model.decode_step(), want)


def test_prefill_through_the_three_kernel_rms_norm_gives_the_same_logits_cpu():
    """torch < 2.9 (the images' 2.8) has no fused RMSNorm: prefill and decode take the layer_norm path."""
    prompt = torch.randint(0, SHAPE.vocab, (SHAPE.batch, SHAPE.prompt_len), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fused = Decoder(torch, SHAPE, "cpu", torch.float32, seed=0)
        mirrored = Decoder(torch, SHAPE, "cpu", torch.float32, seed=0)
        mirrored.fused_rms_norm = False
        torch.testing.assert_close(mirrored.prefill(prompt), fused.prefill(prompt), rtol=1e-5, atol=1e-5)
