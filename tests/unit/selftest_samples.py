"""Shared helpers for the selftest unit tests: sample fingerprints."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

from selftest import cost, fingerprint
from selftest.stats import summarize

ROOT = Path(__file__).resolve().parents[2]


def sample_fingerprint(decode_tps: float = 9000.0, gpu: str = "NVIDIA H200") -> dict:
    """A realistic GPU fingerprint built from made-up numbers."""
    decoder = {
        "dim": 4096,
        "n_layers": 3,
        "n_heads": 32,
        "n_kv_heads": 8,
        "head_dim": 128,
        "ffn_dim": 14336,
        "vocab": 128256,
        "batch": 8,
        "prompt_len": 512,
        "new_tokens": 256,
        "rope_theta": 500000.0,
        "norm_eps": 1e-5,
        "max_len": 768,
        "dtype": "bfloat16",
        "params": 1179676672,
        "weight_bytes": 2359353344,
        "prefill_iters": 10,
        "decode_runs": 5,
        "cuda_graph": True,
    }
    runs = [decoder["batch"] * decoder["new_tokens"] / decode_tps * f for f in (0.99, 1.0, 1.01)]
    results = {
        "gemm": {
            "n": 8192,
            "dtype": "bfloat16",
            "flops": 2 * 8192**3,
            "seconds": summarize([0.0014, 0.00141, 0.00139]),
            "tflops": summarize([785.0, 780.0, 790.0]),
            "rel_error": 2.1e-3,
            "tolerance": 1e-2,
            "correct": True,
            "sm_clock_mhz": {"mean": 1980.0, "min": 1980, "max": 1980},
            "sustained": {
                "seconds": 2.05,
                "iters": 1290,
                "chunk_iters": 62,
                "tflops": 752.0,
                "tflops_second_half": 745.0,
                "chunk_tflops": summarize([770.0, 760.0, 748.0, 744.0]),
                "sm_clock_mhz": {"mean": 1830.0, "min": 1755, "max": 1980},
                "power_w": 690.0,
                "energy_j": 1414.5,
                "energy_note": None,
            },
            "sweep": {
                "sizes": [8192],
                "iters": 10,
                "shapes": [{"m": 8192, "n": 8192, "k": 8192, "seconds": 0.0014, "tflops": 785.0}],
                "best": {"m": 8192, "n": 8192, "k": 8192, "seconds": 0.0014, "tflops": 785.0},
            },
        },
        "copy": {
            "bytes": 2**31,
            "bytes_moved": 2**32,
            "seconds": summarize([0.001, 0.001]),
            "gb_per_s": summarize([4300.0, 4290.0]),
            "correct": True,
        },
        "prefill": {
            "tokens": 4096,
            "seconds": summarize([0.012, 0.0121]),
            "tokens_per_second": 341000.0,
            "time_to_first_token_s": 0.012,
        },
        "decode": {
            "tokens_per_run": 2048,
            "run_seconds": summarize(runs),
            "tokens_per_second": summarize([2048 / r for r in runs]),
            "time_per_output_token_s": runs[1] / 256,
            "cuda_graph": True,
            "note": None,
        },
        "roofline": {
            "datasheet": {"name": "H200", "memory_bandwidth_bytes_per_s": 4.8e12, "bf16_dense_flops": 989e12},
            "decode_bandwidth_efficiency": 0.66,
            "decode_bandwidth_efficiency_datasheet": 0.6,
            "prefill_compute_efficiency": 0.8,
            "prefill_compute_efficiency_datasheet": 0.63,
        },
        "seconds": 20.0,
    }
    costs = {
        "gpu_hour_usd": 3.5,
        "price_source": "argument",
        "price_key": None,
        "note": None,
        "input_output_ratio": 3.0,
    }
    costs.update(cost.token_costs(3.5, 341000.0, decode_tps, 3.0, 0.002, 0.05))
    return fingerprint.build(
        mode="gpu",
        quick=False,
        status="pass",
        exit_code=0,
        checks=[{"id": "cuda.available", "status": "pass", "message": f"1 CUDA device(s): {gpu}", "remedy": None}],
        environment={
            "image": {
                "inside_image": True,
                "info_path": "/etc/pytorch-cuda/image.json",
                "tag": "2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime",
                "labels": {"pytorch-cuda.torch": "2.8.0", "pytorch-cuda.cuda": "12.8"},
            },
            "host": {"platform": "Linux", "machine": "x86_64", "cpu_count": 16},
            "versions": {
                "python": "3.12.3",
                "torch": "2.8.0+cu128",
                "torch_cuda": "12.8",
                "cudnn": "9.10.2",
                "nccl": "2.27.3",
                "triton": "3.4.0",
                "numpy": "2.3.2",
            },
            "driver": {
                "driver_version": "570.133.20",
                "cuda_driver_version": "12.8",
                "cuda_driver_version_code": 12080,
            },
            "devices": [
                {
                    "index": 0,
                    "name": gpu,
                    "uuid": "GPU-1234",
                    "ecc_enabled": True,
                    "ecc_uncorrected_volatile": 0,
                    "throttle_reasons": [],
                }
            ],
            "torch_devices": [
                {
                    "index": 0,
                    "name": gpu,
                    "compute_capability": "9.0",
                    "memory_total_bytes": 150_000_000_000,
                    "multiprocessors": 132,
                }
            ],
            "env_flags": {},
        },
        workload={
            "device": "cuda:0",
            "device_name": gpu,
            "dtype": "bfloat16",
            "seed": 1234,
            "quick": False,
            "threads": 16,
            "gemm": {"n": 8192, "iters": 100},
            "copy": {"bytes": 2**31, "iters": 50},
            "decoder": decoder,
        },
        results=results,
        telemetry={
            "available": True,
            "note": None,
            "energy_j": 9000.0,
            "energy_method": "counter",
            "phases": {
                "decode": {
                    "seconds": 1.1,
                    "tokens": 10240,
                    "energy_j": 512.0,
                    "energy_method": "counter",
                    "joules_per_token": 0.05,
                }
            },
        },
        cost=costs,
        stability={"decode_tokens_per_second_cv": 0.01, "decode_runs": 3, "decode_stable": True},
        created=dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.timezone.utc),
        duration_s=30.0,
    )


def variant(doc: dict, **changes) -> dict:
    """A deep copy of ``doc`` with dotted-path keys replaced: variant(d, **{"mode": "cpu"})."""
    out = copy.deepcopy(doc)
    for dotted, value in changes.items():
        node = out
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return out
