"""Roofline arithmetic for the reference decoder, and datasheet peaks of known GPUs.

Decode is bandwidth-bound: each step must stream every weight once plus the KV
cache read so far, so its efficiency is bytes moved / (step time x bandwidth).
Prefill is compute-bound: its efficiency is FLOPs / (time x FLOP rate).  Both
are reported against what this machine measured (copy bandwidth, GEMM rate)
and, for GPUs in the table below, against the vendor's datasheet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .shapes import DecoderShape


def layer_params(shape: DecoderShape) -> int:
    """Weights of one decoder layer: fused QKV, output projection, SwiGLU, two norms."""
    hd = shape.head_dim
    qkv = shape.dim * (shape.n_heads + 2 * shape.n_kv_heads) * hd
    out = shape.n_heads * hd * shape.dim
    mlp = 3 * shape.dim * shape.ffn_dim
    norms = 2 * shape.dim
    return qkv + out + mlp + norms


def decoder_params(shape: DecoderShape) -> int:
    """All weights; the embedding is tied to the output head (as in Llama 3.2 1B)."""
    return shape.n_layers * layer_params(shape) + shape.vocab * shape.dim + shape.dim


def weight_bytes_per_decode_step(shape: DecoderShape, bytes_per_param: int) -> int:
    """Weights one decode step must read: every layer, the final norm, the output head.

    The embedding lookup reads only ``batch`` rows, counted as well.
    """
    head = shape.vocab * shape.dim
    lookup = shape.batch * shape.dim
    return (shape.n_layers * layer_params(shape) + head + shape.dim + lookup) * bytes_per_param


def kv_cache_bytes(shape: DecoderShape, context_len: float, bytes_per_elem: int) -> float:
    """Keys and values for ``context_len`` positions, all layers, whole batch."""
    return 2.0 * shape.n_layers * shape.batch * context_len * shape.n_kv_heads * shape.head_dim * bytes_per_elem


def mean_decode_context(shape: DecoderShape) -> float:
    """Average number of cached positions a decode step attends to.

    Step i (1-based) attends to prompt_len + i positions (its own key included).
    """
    return shape.prompt_len + (shape.new_tokens + 1) / 2.0


def decode_bytes_per_step(shape: DecoderShape, bytes_per_elem: int) -> float:
    """Bytes that must move per decode step, averaged over the generated tokens."""
    return weight_bytes_per_decode_step(shape, bytes_per_elem) + kv_cache_bytes(
        shape, mean_decode_context(shape), bytes_per_elem
    )


def prefill_flops(shape: DecoderShape) -> float:
    """Multiply-adds x 2 of one prefill over batch x prompt_len tokens.

    Matmuls with the layer weights, causal attention (QK^T and PV over the
    T(T+1)/2 visible pairs per head), and the output head for the last position
    only (the one token a prefill must produce).
    """
    tokens = shape.batch * shape.prompt_len
    matmul_params = layer_params(shape) - 2 * shape.dim  # norms are not matmuls
    linear = 2.0 * tokens * shape.n_layers * matmul_params
    t = shape.prompt_len
    attention = shape.n_layers * shape.batch * shape.n_heads * 2.0 * shape.head_dim * t * (t + 1)
    head = 2.0 * shape.batch * shape.dim * shape.vocab
    return linear + attention + head


def gemm_flops(n: int) -> float:
    """An n x n x n matrix product does 2 n^3 floating-point operations."""
    return 2.0 * n * n * n


def copy_bytes_moved(nbytes: int) -> int:
    """A device-to-device copy reads and writes every byte."""
    return 2 * nbytes


def bandwidth_efficiency(bytes_moved: float, seconds: float, bandwidth_bytes_per_s: float) -> Optional[float]:
    """Achieved fraction of a bandwidth: bytes / (time x bandwidth)."""
    if not seconds or seconds <= 0 or not bandwidth_bytes_per_s or bandwidth_bytes_per_s <= 0:
        return None
    return bytes_moved / (seconds * bandwidth_bytes_per_s)


def compute_efficiency(flops: float, seconds: float, flops_per_s: float) -> Optional[float]:
    """Achieved fraction of a FLOP rate: FLOPs / (time x rate)."""
    if not seconds or seconds <= 0 or not flops_per_s or flops_per_s <= 0:
        return None
    return flops / (seconds * flops_per_s)


@dataclass(frozen=True)
class GpuPeak:
    """Vendor datasheet numbers: HBM bandwidth and dense (not sparse) bf16 rate."""

    name: str
    pattern: str
    memory_bandwidth_bytes_per_s: float
    bf16_dense_flops: float

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
            "bf16_dense_flops": self.bf16_dense_flops,
        }


# Patterns are matched against the name the driver reports ("NVIDIA H100 80GB
# HBM3", "NVIDIA A100-SXM4-40GB"...).  Order matters: more specific first.
DATASHEET = (
    GpuPeak("H200", r"(?<![A-Z0-9])H200(?![0-9])", 4.8e12, 989e12),
    GpuPeak("H100 NVL", r"(?<![A-Z0-9])H100 NVL", 3.9e12, 835e12),
    GpuPeak("H100 PCIe", r"(?<![A-Z0-9])H100 PCIE", 2.0e12, 756e12),
    GpuPeak("H100 SXM", r"(?<![A-Z0-9])H100(?![0-9])", 3.35e12, 989e12),
    GpuPeak("A100 80GB SXM", r"(?<![A-Z0-9])A100-SXM4-80GB", 2.039e12, 312e12),
    GpuPeak("A100 80GB PCIe", r"(?<![A-Z0-9])A100 80GB PCIE", 1.935e12, 312e12),
    GpuPeak("A100 40GB", r"(?<![A-Z0-9])A100(?![0-9])", 1.555e12, 312e12),
    GpuPeak("L40S", r"(?<![A-Z0-9])L40S", 0.864e12, 362e12),
    GpuPeak("L4", r"(?<![A-Z0-9])L4(?![0-9A-Z])", 0.3e12, 121e12),
    GpuPeak("B200", r"(?<![A-Z0-9])B200(?![0-9])", 8.0e12, 2250e12),
)


def datasheet_peak(gpu_name: Optional[str]) -> Optional[GpuPeak]:
    """Datasheet entry for a GPU name; None for unknown GPUs and MIG slices."""
    if not gpu_name:
        return None
    name = gpu_name.upper()
    if re.search(r"\bMIG\b", name):
        return None  # a MIG slice has a fraction of the chip: the datasheet does not apply
    for peak in DATASHEET:
        if re.search(peak.pattern, name):
            return peak
    return None
