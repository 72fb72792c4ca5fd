"""A small Llama-style decoder with random weights, for timing prefill and decode.

RMSNorm, rotary position embeddings, grouped-query attention through
``scaled_dot_product_attention`` and a SwiGLU MLP; the output head is tied to
the embedding.  Q/K/V and gate/up projections are fused into one matrix each,
as serving engines do, so a decode step launches few, large matrix products.

The decode step keeps all of its state (next token, position, KV cache) in
device tensors and never synchronises with the host, so it can be captured
once in a CUDA graph and replayed; on the CPU it simply runs eagerly.

torch is passed in rather than imported at module level so that importing the
package does not need torch.
"""

from __future__ import annotations

from typing import Any

from .shapes import DecoderShape


def _torch_at_least(torch: Any, major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def rotary_table(torch: Any, shape: DecoderShape, device: Any) -> Any:
    """Complex rotations e^(i * pos * theta^(-2j/d)) for every cached position."""
    hd = shape.head_dim
    inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    angles = torch.outer(torch.arange(shape.max_len, device=device, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)  # (max_len, hd/2) complex64


def apply_rotary(torch: Any, x: Any, cis: Any) -> Any:
    """Rotate pairs of features of x (..., heads, head_dim) by cis (broadcast over heads)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * cis).flatten(-2).to(x.dtype)


class Decoder:
    """Weights, KV cache and decode state of the reference model on one device."""

    def __init__(self, torch: Any, shape: DecoderShape, device: str, dtype: Any, seed: int):
        self.torch = torch
        self.F = torch.nn.functional
        self.shape = shape
        self.device = device
        self.dtype = dtype
        s = shape
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

        def weight(out_features: int, in_features: int) -> Any:
            w = torch.randn(out_features, in_features, generator=gen, device=device, dtype=dtype)
            return w.mul_(in_features**-0.5)  # keeps activations O(1) through the layers

        def ones(n: int) -> Any:
            return torch.ones(n, device=device, dtype=dtype)

        hd = s.head_dim
        self.embed = torch.randn(s.vocab, s.dim, generator=gen, device=device, dtype=dtype)
        self.layers = [
            {
                "attn_norm": ones(s.dim),
                "wqkv": weight((s.n_heads + 2 * s.n_kv_heads) * hd, s.dim),
                "wo": weight(s.dim, s.n_heads * hd),
                "mlp_norm": ones(s.dim),
                "w13": weight(2 * s.ffn_dim, s.dim),
                "w2": weight(s.dim, s.ffn_dim),
            }
            for _ in range(s.n_layers)
        ]
        self.final_norm = ones(s.dim)
        self.cis = rotary_table(torch, s, device)
        cache_shape = (s.batch, s.n_kv_heads, s.max_len, hd)
        self.k_cache = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in range(s.n_layers)]
        self.v_cache = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in range(s.n_layers)]
        self.positions = torch.arange(s.max_len, device=device)
        self.token = torch.zeros(s.batch, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.enable_gqa = _torch_at_least(torch, 2, 5)

    # -- building blocks -------------------------------------------------------

    def rms_norm(self, x: Any, weight: Any) -> Any:
        if hasattr(self.F, "rms_norm"):
            return self.F.rms_norm(x, (x.shape[-1],), weight, self.shape.norm_eps)
        xf = x.float()
        xf = xf * self.torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.shape.norm_eps)
        return xf.to(x.dtype) * weight

    def split_qkv(self, qkv: Any, cis: Any) -> tuple[Any, Any, Any]:
        """(B, T, fused) -> rotated q (B, T, H, hd), rotated k and v (B, T, Hkv, hd)."""
        s = self.shape
        B, T = qkv.shape[0], qkv.shape[1]
        hd, nq, nkv = s.head_dim, s.n_heads, s.n_kv_heads
        qk = apply_rotary(self.torch, qkv[..., : (nq + nkv) * hd].view(B, T, nq + nkv, hd), cis)
        v = qkv[..., (nq + nkv) * hd :].view(B, T, nkv, hd)
        return qk[:, :, :nq], qk[:, :, nq:], v

    def mlp(self, x: Any, layer: dict) -> Any:
        gate, up = self.F.linear(self.rms_norm(x, layer["mlp_norm"]), layer["w13"]).chunk(2, dim=-1)
        return self.F.linear(self.F.silu(gate) * up, layer["w2"])

    def logits(self, x_last: Any) -> Any:
        return self.F.linear(self.rms_norm(x_last, self.final_norm), self.embed)

    # -- prefill ---------------------------------------------------------------

    def prefill(self, tokens: Any) -> Any:
        """Run the prompt (B, T), fill the KV cache, return the last position's logits."""
        s, F = self.shape, self.F
        B, T = tokens.shape
        x = F.embedding(tokens, self.embed)
        cis = self.cis[:T].view(1, T, 1, -1)
        for i, layer in enumerate(self.layers):
            q, k, v = self.split_qkv(F.linear(self.rms_norm(x, layer["attn_norm"]), layer["wqkv"]), cis)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
            self.k_cache[i][:, :, :T].copy_(k)
            self.v_cache[i][:, :, :T].copy_(v)
            if self.enable_gqa:
                attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:  # torch < 2.5: repeat each KV head for its group of query heads
                k = k.repeat_interleave(s.group, dim=1)
                v = v.repeat_interleave(s.group, dim=1)
                attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + F.linear(attn.transpose(1, 2).reshape(B, T, s.n_heads * s.head_dim), layer["wo"])
            x = x + self.mlp(x, layer)
        return self.logits(x[:, -1])

    # -- decode ----------------------------------------------------------------

    def start_decode(self, first_token: Any, position: int) -> None:
        """Set the decode state: the token to feed next and its position."""
        self.token.copy_(first_token)
        self.pos.fill_(position)

    def decode_step(self) -> Any:
        """Generate one token per sequence from the KV cache; returns the logits.

        Grouped-query attention for a single new position: the ``group`` query
        heads that share a KV head are laid along SDPA's query-length axis, so
        each KV head is read once and never copied (the same result as
        ``enable_gqa``).  The cache has a fixed length; a mask hides the
        positions not yet written, which keeps shapes static for graph capture.
        """
        s, F = self.shape, self.F
        B, hd = s.batch, s.head_dim
        x = F.embedding(self.token.view(B, 1), self.embed)
        cis = self.cis.index_select(0, self.pos).view(1, 1, 1, -1)
        visible = (self.positions <= self.pos).view(1, 1, 1, s.max_len)
        for i, layer in enumerate(self.layers):
            q, k, v = self.split_qkv(F.linear(self.rms_norm(x, layer["attn_norm"]), layer["wqkv"]), cis)
            self.k_cache[i].index_copy_(2, self.pos, k.transpose(1, 2))
            self.v_cache[i].index_copy_(2, self.pos, v.transpose(1, 2))
            q = q.reshape(B, s.n_kv_heads, s.group, hd)
            attn = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=visible)
            x = x + F.linear(attn.reshape(B, 1, s.n_heads * hd), layer["wo"])
            x = x + self.mlp(x, layer)
        logits = self.logits(x[:, 0])
        self.token.copy_(logits.argmax(dim=-1))
        self.pos.add_(1)
        return logits
