"""A small Llama-style decoder with random weights, for timing prefill and decode.

RMSNorm, rotary position embeddings, grouped-query attention through
``scaled_dot_product_attention`` and a SwiGLU MLP; the output head is tied to
the embedding.  Q/K/V and gate/up projections are fused into one matrix each,
as serving engines do, so a decode step launches few, large matrix products.

The decode step keeps all of its state (next token, position, KV cache) in
device tensors and never synchronises with the host, so it can be captured
once in a CUDA graph and replayed; on the CPU it simply runs eagerly.

A decode step of a small batch moves the weights once and launches dozens of
tiny kernels whose fixed cost moves no bytes, so the step is built to launch
few of them (``Decoder.fusions`` names how): the attention mask is one row of a table made once
(not a bool mask that SDPA turns into a float one in every layer), RMSNorm is
one fused kernel (or three, on a torch that has none), each residual add happens
in its matrix product (``addmm_`` with beta 1), and the next token's argmax runs
in two wide passes instead of one reduction with a block per sequence.

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


def has_fused_rms_norm(torch: Any) -> bool:
    """torch >= 2.9 runs F.rms_norm as one kernel (aten::_fused_rms_norm); before, it decomposes into ~8."""
    try:
        return hasattr(torch.ops.aten, "_fused_rms_norm")
    except Exception:
        return False


def argmax_chunk(vocab: int) -> int:
    """Chunk for the two-pass argmax: the largest divisor of ``vocab`` up to 1024 (0 when it is too small)."""
    for chunk in range(min(1024, vocab // 2), 63, -1):
        if vocab % chunk == 0:
            return chunk
    return 0


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
        # Row p: 0 for the cached positions 0..p, -inf for those not written yet.  One
        # index_select per step gives SDPA a float mask it uses as is in every layer.
        visible = self.positions.view(1, -1) <= self.positions.view(-1, 1)
        self.mask_table = torch.zeros(s.max_len, s.max_len, device=device, dtype=dtype).masked_fill_(
            ~visible, float("-inf")
        )
        self.token = torch.zeros(s.batch, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.enable_gqa = _torch_at_least(torch, 2, 5)
        self.fused_rms_norm = has_fused_rms_norm(torch)
        self.argmax_chunk = argmax_chunk(s.vocab)
        # layer_norm weights for the two-kernel RMSNorm: the norm's scale, then zeros for the mirrored half
        self._ln_weight: dict[int, Any] = {}
        if not self.fused_rms_norm:
            norms = [layer[k] for layer in self.layers for k in ("attn_norm", "mlp_norm")] + [self.final_norm]
            self._ln_weight = {id(w): torch.cat([w, torch.zeros_like(w)]) for w in norms}

    @property
    def fusions(self) -> dict:
        """How this torch runs the decode step's fused parts (recorded in the fingerprint)."""
        return {
            "attention_mask": "one table row per step",
            "rms_norm": "fused kernel" if self.fused_rms_norm else "layer_norm of [x, -x]",
            "residual_add": "accumulated by the matrix product (addmm_, beta 1)",
            "argmax": f"two passes of {self.argmax_chunk}" if self.argmax_chunk else "one pass",
        }

    # -- building blocks -------------------------------------------------------

    def rms_norm(self, x: Any, weight: Any) -> Any:
        """x / sqrt(mean(x^2) + eps) * weight, in as few kernels as this torch allows.

        Without the fused kernel, layer_norm of [x, -x] is the same function: that
        vector's mean is 0 and its variance is mean(x^2), so its first half comes
        out as x / sqrt(mean(x^2) + eps).  Three kernels (neg, cat, layer_norm,
        which computes in fp32) instead of the eight of the decomposed F.rms_norm.
        """
        dim = x.shape[-1]
        if self.fused_rms_norm:
            return self.F.rms_norm(x, (dim,), weight, self.shape.norm_eps)
        doubled = self._ln_weight.get(id(weight))
        if doubled is None:  # a weight made after __init__ (tests)
            doubled = self._ln_weight[id(weight)] = self.torch.cat([weight, self.torch.zeros_like(weight)])
        mirrored = self.torch.cat([x, x.neg()], dim=-1)
        return self.F.layer_norm(mirrored, (2 * dim,), doubled, None, self.shape.norm_eps)[..., :dim]

    def attention_mask(self) -> Any:
        """The additive mask of this step: the table's row for the current position (one kernel)."""
        return self.mask_table.index_select(0, self.pos).view(1, 1, 1, self.shape.max_len)

    def residual_linear(self, x: Any, h: Any, weight: Any) -> Any:
        """x + h @ weight^T, accumulated into x by the matrix product itself (beta = 1): one kernel, not two.

        In place: the out-of-place ``addmm`` first copies x into its result (a
        kernel of its own), which is what this avoids.  x is the step's own
        residual stream, so nothing else sees it change.
        """
        x.view(-1, x.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), weight.t())
        return x

    def next_token(self, logits: Any) -> Any:
        """argmax over the vocabulary in two wide passes (maxima of chunks, then the best chunk).

        One reduction over 128k entries per sequence runs a block per sequence
        (8 blocks for 8 sequences); the chunked maxima fill the GPU.  Ties go to
        the first index either way, so the token is the same.
        """
        chunk = self.argmax_chunk
        if not chunk:
            return logits.argmax(dim=-1)
        best, within = logits.view(logits.shape[0], -1, chunk).max(dim=-1)
        which = best.argmax(dim=-1, keepdim=True)
        return (which * chunk + within.gather(1, which)).view(-1)

    def split_qkv(self, qkv: Any, cis: Any) -> tuple[Any, Any, Any]:
        """(B, T, fused) -> rotated q (B, T, H, hd), rotated k and v (B, T, Hkv, hd)."""
        s = self.shape
        B, T = qkv.shape[0], qkv.shape[1]
        hd, nq, nkv = s.head_dim, s.n_heads, s.n_kv_heads
        qk = apply_rotary(self.torch, qkv[..., : (nq + nkv) * hd].view(B, T, nq + nkv, hd), cis)
        v = qkv[..., (nq + nkv) * hd :].view(B, T, nkv, hd)
        return qk[:, :, :nq], qk[:, :, nq:], v

    def mlp_in(self, x: Any, layer: dict) -> Any:
        """SwiGLU's input to its down projection: silu(gate) * up of the normed x."""
        gate, up = self.F.linear(self.rms_norm(x, layer["mlp_norm"]), layer["w13"]).chunk(2, dim=-1)
        return self.F.silu(gate) * up

    def mlp(self, x: Any, layer: dict) -> Any:
        return self.F.linear(self.mlp_in(x, layer), layer["w2"])

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
        mask = self.attention_mask()
        for i, layer in enumerate(self.layers):
            q, k, v = self.split_qkv(F.linear(self.rms_norm(x, layer["attn_norm"]), layer["wqkv"]), cis)
            self.k_cache[i].index_copy_(2, self.pos, k.transpose(1, 2))
            self.v_cache[i].index_copy_(2, self.pos, v.transpose(1, 2))
            q = q.reshape(B, s.n_kv_heads, s.group, hd)
            attn = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask)
            x = self.residual_linear(x, attn.reshape(B, 1, s.n_heads * hd), layer["wo"])
            x = self.residual_linear(x, self.mlp_in(x, layer), layer["w2"])
        logits = self.logits(x[:, 0])
        self.token.copy_(self.next_token(logits))
        self.pos.add_(1)
        return logits
