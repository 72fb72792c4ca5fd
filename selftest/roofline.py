"""Roofline arithmetic for the reference decoder, and datasheet peaks of known GPUs.

Decode is bandwidth-bound: each step must stream every weight once plus the KV
cache read so far, so its efficiency is bytes moved / (step time x bandwidth).
Prefill is compute-bound: its efficiency is FLOPs / (time x FLOP rate).  Both
are reported against what the probe measured (copy bandwidth, GEMM rate)
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
    """Vendor datasheet numbers: HBM bandwidth and dense (not sparse) tensor-core rates.

    Datasheets quote tensor rates "with sparsity" (2:4 structured sparsity,
    twice the dense rate) in their headline column; a dense GEMM can never
    reach those, so every rate here is the dense one, and ``source`` says which
    datasheet it comes from.  ``bf16_dense_flops`` is None where the GPU has no
    bf16 tensor cores (Volta, Turing).  ``memory_gib`` is the range of memory
    sizes an entry covers, for names that exist in several memory sizes.
    """

    name: str
    pattern: str
    memory_bandwidth_bytes_per_s: float
    bf16_dense_flops: Optional[float]
    fp16_dense_flops: float
    source: str
    memory_gib: Optional[tuple[float, float]] = None

    def dense_flops(self, dtype: str) -> Optional[float]:
        """The datasheet rate for a GEMM in ``dtype`` ('bfloat16' or 'float16'), else None."""
        return {"bfloat16": self.bf16_dense_flops, "float16": self.fp16_dense_flops}.get(dtype)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
            "bf16_dense_flops": self.bf16_dense_flops,
            "fp16_dense_flops": self.fp16_dense_flops,
            "source": self.source,
        }


_NOT = r"(?<![A-Z0-9])"  # the model number starts a word: 'H100' but not 'GH100'

# Matched against the name the driver reports ("NVIDIA H100 80GB HBM3",
# "NVIDIA A100-SXM4-40GB"...), upper-cased.  Order matters: more specific first.
DATASHEET = (
    # Hopper
    GpuPeak("H200 NVL", _NOT + r"H200\s*NVL", 4.8e12, 835e12, 835e12,
            "NVIDIA H200 datasheet (H200 NVL column): BF16/FP16 1,671 TFLOPS with sparsity = 835 dense; 4.8 TB/s"),
    GpuPeak("H200 SXM", _NOT + r"H200(?![0-9])", 4.8e12, 989e12, 989e12,
            "NVIDIA H200 datasheet (H200 SXM column): BF16/FP16 1,979 TFLOPS with sparsity = 989 dense; 4.8 TB/s"),
    GpuPeak("GH200 144GB HBM3e", _NOT + r"GH200.*(144G|HBM3E)", 4.9e12, 989e12, 989e12,
            "NVIDIA GH200 Grace Hopper Superchip datasheet: BF16/FP16 1,979 TFLOPS with sparsity = 989 dense; "
            "144GB HBM3e at 4.9 TB/s"),
    GpuPeak("GH200 96GB HBM3", _NOT + r"GH200", 4.0e12, 989e12, 989e12,
            "NVIDIA GH200 Grace Hopper Superchip datasheet: BF16/FP16 1,979 TFLOPS with sparsity = 989 dense; "
            "96GB HBM3 at 4 TB/s (the '480GB' in the name is the Grace CPU's memory)"),
    GpuPeak("H100 NVL", _NOT + r"H100\s*NVL", 3.9e12, 835e12, 835e12,
            "NVIDIA H100 datasheet (H100 NVL column): BF16/FP16 1,671 TFLOPS with sparsity = 835 dense; 3.9 TB/s"),
    GpuPeak("H100 PCIe", _NOT + r"H100\s*PCIE", 2.0e12, 756e12, 756e12,
            "NVIDIA H100 datasheet (H100 PCIe column): BF16/FP16 1,513 TFLOPS with sparsity = 756 dense; 2 TB/s"),
    GpuPeak("H100 SXM", _NOT + r"H100(?![0-9])", 3.35e12, 989e12, 989e12,
            "NVIDIA H100 datasheet (H100 SXM column): BF16/FP16 1,979 TFLOPS with sparsity = 989 dense; 3.35 TB/s"),
    GpuPeak("H800 PCIe", _NOT + r"H800\s*PCIE", 2.0e12, 756e12, 756e12,
            "NVIDIA H800 datasheet (PCIe 80GB): BF16/FP16 1,513 TFLOPS with sparsity = 756 dense; 2 TB/s"),
    GpuPeak("H800 SXM", _NOT + r"H800(?![0-9])", 3.35e12, 989e12, 989e12,
            "NVIDIA H800 datasheet (SXM): BF16/FP16 1,979 TFLOPS with sparsity = 989 dense; 3.35 TB/s"),
    GpuPeak("H20", _NOT + r"H20(?![0-9])", 4.0e12, 148e12, 148e12,
            "NVIDIA H20 datasheet: BF16/FP16 148 TFLOPS dense (296 with sparsity); 96GB HBM3 at 4.0 TB/s",
            memory_gib=(80, 110)),
    # Ampere: the name may or may not carry the memory size; the memory decides when it does not
    GpuPeak("A100 80GB PCIe", _NOT + r"A100.*PCIE", 1.935e12, 312e12, 312e12,
            "NVIDIA A100 datasheet (80GB PCIe): BF16/FP16 312 TFLOPS dense (624 with sparsity); 1,935 GB/s",
            memory_gib=(60, 100)),
    GpuPeak("A100 80GB SXM", _NOT + r"A100", 2.039e12, 312e12, 312e12,
            "NVIDIA A100 datasheet (80GB SXM): BF16/FP16 312 TFLOPS dense (624 with sparsity); 2,039 GB/s",
            memory_gib=(60, 100)),
    GpuPeak("A100 40GB", _NOT + r"A100", 1.555e12, 312e12, 312e12,
            "NVIDIA A100 datasheet (40GB PCIe and SXM): BF16/FP16 312 TFLOPS dense (624 with sparsity); 1,555 GB/s",
            memory_gib=(30, 60)),
    GpuPeak("A800 80GB PCIe", _NOT + r"A800.*PCIE", 1.935e12, 312e12, 312e12,
            "NVIDIA A800 datasheet (80GB PCIe): BF16/FP16 312 TFLOPS dense (624 with sparsity); 1,935 GB/s",
            memory_gib=(60, 100)),
    GpuPeak("A800 80GB SXM", _NOT + r"A800", 2.039e12, 312e12, 312e12,
            "NVIDIA A800 datasheet (80GB SXM): BF16/FP16 312 TFLOPS dense (624 with sparsity); 2,039 GB/s",
            memory_gib=(60, 100)),
    GpuPeak("A800 40GB", _NOT + r"A800", 1.555e12, 312e12, 312e12,
            "NVIDIA A800 datasheet (40GB PCIe): BF16/FP16 312 TFLOPS dense (624 with sparsity); 1,555 GB/s",
            memory_gib=(30, 60)),
    # Ada
    GpuPeak("L40S", _NOT + r"L40S", 0.864e12, 362e12, 362e12,
            "NVIDIA L40S datasheet: BF16/FP16 tensor 362 TFLOPS dense (733 with sparsity); 864 GB/s"),
    GpuPeak("L40", _NOT + r"L40(?![0-9A-Z])", 0.864e12, 181e12, 181e12,
            "NVIDIA L40 datasheet: BF16/FP16 tensor 181 TFLOPS dense (362 with sparsity); 864 GB/s"),
    GpuPeak("L4", _NOT + r"L4(?![0-9A-Z])", 0.3e12, 121e12, 121e12,
            "NVIDIA L4 datasheet: BF16/FP16 tensor 242 TFLOPS with sparsity = 121 dense; 300 GB/s"),
    # Blackwell
    GpuPeak("B200", _NOT + r"B200(?![0-9])", 7.7e12, 2250e12, 2250e12,
            "NVIDIA HGX B200 datasheet (per GPU): BF16/FP16 4.5 PFLOPS with sparsity = 2.25 dense; 7.7 TB/s"),
    # Volta and Turing: fp16 tensor cores only (Volta and Turing have no sparsity: the figures are dense)
    GpuPeak("V100S PCIe", _NOT + r"V100S", 1.134e12, None, 130e12,
            "NVIDIA V100 datasheet (V100S PCIe): tensor 130 TFLOPS dense FP16, no BF16; 1,134 GB/s"),
    GpuPeak("V100 PCIe", _NOT + r"V100.*PCIE", 0.9e12, None, 112e12,
            "NVIDIA V100 datasheet (PCIe): tensor 112 TFLOPS dense FP16, no BF16; 900 GB/s"),
    GpuPeak("V100 SXM2", _NOT + r"V100.*SXM2", 0.9e12, None, 125e12,
            "NVIDIA V100 datasheet (SXM2): tensor 125 TFLOPS dense FP16, no BF16; 900 GB/s"),
    GpuPeak("T4", _NOT + r"T4(?![0-9A-Z])", 0.32e12, None, 65e12,
            "NVIDIA T4 datasheet: mixed-precision FP16/FP32 tensor 65 TFLOPS dense, no BF16; 320 GB/s"),
)

_SIZE_IN_NAME = re.compile(r"(?<![0-9])([0-9]{2,3})\s?GB\b")


def datasheet_peak(gpu_name: Optional[str], memory_bytes: Optional[int] = None) -> Optional[GpuPeak]:
    """Datasheet entry for a GPU name; None for unknown GPUs and MIG slices.

    Entries that exist in several memory sizes match only when the size is
    known, from the name ('A100-SXM4-80GB') or else from ``memory_bytes``: a
    guess would put an 80GB card's bandwidth in the 40GB one's place.
    """
    if not gpu_name:
        return None
    name = gpu_name.upper()
    if re.search(r"\bMIG\b", name):
        return None  # a MIG slice has a fraction of the chip: the datasheet does not apply
    sized = _SIZE_IN_NAME.search(name)
    memory_gib = float(sized.group(1)) if sized else (memory_bytes / 2**30 if memory_bytes else None)
    for peak in DATASHEET:
        if not re.search(peak.pattern, name):
            continue
        if peak.memory_gib is not None:
            if memory_gib is None or not peak.memory_gib[0] <= memory_gib <= peak.memory_gib[1]:
                continue
        return peak
    return None
