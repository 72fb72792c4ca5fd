"""The reference workloads, kept as data: one table for GPU and CPU, default and quick.

Why the GPU decoder is wide and shallow: a 1.18B-parameter Llama-style model
(Llama 3.2 1B has 1.24B) with Llama-3-8B-wide layers (dim 4096, 32 query / 8
KV heads, SwiGLU 14336), Llama 3's 128256-token vocabulary with tied
embeddings, but only 3 layers.  At decode every layer adds a couple of dozen
tiny kernels whose fixed cost moves no bytes; few wide layers and one large
output head keep the step dominated by streaming the weights, which is what
the decode roofline measures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DecoderShape:
    """Shape of the Llama-style decoder and of the request it serves."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab: int
    batch: int
    prompt_len: int
    new_tokens: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError("dim must be a multiple of n_heads")
        if self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("head_dim must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def group(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def max_len(self) -> int:
        """KV-cache length, rounded up to 16 so attention kernels see aligned masks."""
        n = self.prompt_len + self.new_tokens
        return (n + 15) // 16 * 16

    def to_dict(self) -> dict:
        d = asdict(self)
        d["head_dim"] = self.head_dim
        d["max_len"] = self.max_len
        return d


@dataclass(frozen=True)
class Workload:
    """Everything the kernel module runs, with its repetition counts."""

    gemm_n: int
    gemm_iters: int
    copy_bytes: int
    copy_iters: int
    decoder: DecoderShape
    prefill_iters: int
    decode_runs: int
    warmup_iters: int
    warmup_seconds: float
    # Energy windows are stretched to this length (repeating the phase's work) so
    # that NVML's energy counter can measure them; 0 leaves them as timed (--quick,
    # where energy is then reported as null with the reason).
    energy_window_s: float = 0.0
    # Sustained GEMM: the reference product back to back for at least this long
    # (clocks settle under the power and thermal limits); 0 skips it.
    gemm_sustain_s: float = 0.0
    # MAMF-style sweep: every (m, n, k) with each dimension from these sizes,
    # ``gemm_sweep_iters`` timed products each; empty skips it.
    gemm_sweep: tuple[int, ...] = ()
    gemm_sweep_iters: int = 10

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder"] = self.decoder.to_dict()
        return d


MIB = 1024 * 1024

WORKLOADS = {
    ("gpu", False): Workload(
        gemm_n=8192,
        gemm_iters=100,
        copy_bytes=2048 * MIB,
        copy_iters=50,
        decoder=DecoderShape(
            dim=4096,
            n_layers=3,
            n_heads=32,
            n_kv_heads=8,
            ffn_dim=14336,
            vocab=128256,
            batch=8,
            prompt_len=512,
            new_tokens=256,
        ),
        prefill_iters=10,
        decode_runs=5,
        warmup_iters=5,
        warmup_seconds=0.5,
        energy_window_s=1.1,  # NVML's 1 s minimum with a margin for the sampler's own clock reads
        gemm_sustain_s=2.0,
        gemm_sweep=(7168, 8192, 9216),  # 27 shapes around 8192, about a second on an H200
        gemm_sweep_iters=10,
    ),
    ("gpu", True): Workload(
        gemm_n=4096,
        gemm_iters=30,
        copy_bytes=512 * MIB,
        copy_iters=20,
        decoder=DecoderShape(
            dim=2048,
            n_layers=4,
            n_heads=16,
            n_kv_heads=4,
            ffn_dim=5632,
            vocab=32768,
            batch=4,
            prompt_len=128,
            new_tokens=32,
        ),
        prefill_iters=3,
        decode_runs=3,
        warmup_iters=3,
        warmup_seconds=0.1,
    ),
    ("cpu", False): Workload(
        gemm_n=1024,
        gemm_iters=10,
        copy_bytes=64 * MIB,
        copy_iters=10,
        decoder=DecoderShape(
            dim=512,
            n_layers=6,
            n_heads=8,
            n_kv_heads=4,
            ffn_dim=1536,
            vocab=4096,
            batch=2,
            prompt_len=128,
            new_tokens=48,
        ),
        prefill_iters=5,
        decode_runs=3,
        warmup_iters=2,
        warmup_seconds=0.0,
        gemm_sustain_s=1.0,
        gemm_sweep=(896, 1024),
        gemm_sweep_iters=2,
    ),
    ("cpu", True): Workload(
        gemm_n=512,
        gemm_iters=5,
        copy_bytes=16 * MIB,
        copy_iters=5,
        decoder=DecoderShape(
            dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=768, vocab=1024, batch=1, prompt_len=32, new_tokens=16
        ),
        prefill_iters=3,
        decode_runs=3,
        warmup_iters=1,
        warmup_seconds=0.0,
    ),
}


def workload_for(mode: str, quick: bool) -> Workload:
    return WORKLOADS[(mode, quick)]
