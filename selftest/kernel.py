"""The reference workload: GEMM, copy bandwidth, and a Llama-style decoder.

Fixed seed; warm-up, then repeated timed runs summarised as median, p10/p90
and coefficient of variation.  bf16 on a GPU, fp32 on a CPU.  Each part is
guarded on its own so that one failure (out of memory, a broken kernel)
becomes a failed check and the others still report.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from . import roofline
from .check import FAIL, PASS, WARN, Check
from .decoder import Decoder
from .shapes import MIB, Workload, workload_for
from .stats import summarize
from .timing import Timer

SEED = 1234

# Relative Frobenius error allowed against a float64 reference, by input dtype:
# a few units of the output's rounding error (bf16 keeps 8 bits of mantissa).
GEMM_TOLERANCE = {"bfloat16": 1e-2, "float16": 2e-3, "float32": 1e-4}
GEMM_CHECK_SLICE = 256

# Performance below this fraction of the datasheet usually means clocks held
# down, a shared GPU or a misconfiguration rather than a slower image.
DATASHEET_WARN_FRACTION = 0.5
DECODE_CV_WARN = 0.03


@dataclass
class KernelRun:
    """Results of the workload, and the checks it produced."""

    workload: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    stability: dict = field(default_factory=dict)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _error_check(check_id: str, what: str, exc: BaseException) -> Check:
    text = " ".join(str(exc).split())[:300]
    remedy = "re-run; if it persists, check `nvidia-smi` and the driver"
    if "out of memory" in text.lower():
        remedy = "free GPU memory (other processes show in `nvidia-smi`) or run `selftest --quick`"
    if os.environ.get("SELFTEST_DEBUG"):
        traceback.print_exc()
    return Check(check_id, FAIL, f"{what} failed: {type(exc).__name__}: {text}", remedy)


def sweep_shapes(sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Every (m, n, k) with each dimension taken from ``sizes`` (a MAMF-finder-style grid)."""
    return [(m, n, k) for m in sizes for n in sizes for k in sizes]


def gemm_sweep(
    torch: Any, timer: Timer, device: str, dtype: Any, sizes: tuple[int, ...], iters: int
) -> Optional[dict]:
    """The best rate over a small grid of shapes: the maximum achievable matmul FLOP/s (MAMF).

    One shape's rate depends on how its tiles fit the SMs (wave quantisation);
    the best of a few nearby shapes is what the hardware and library can do.
    """
    if not sizes:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(SEED + 2)
    rows = []
    for m, n, k in sweep_shapes(sizes):
        a = torch.randn(m, k, generator=gen, device=device, dtype=dtype)
        b = torch.randn(k, n, generator=gen, device=device, dtype=dtype)
        c = torch.empty(m, n, device=device, dtype=dtype)

        def op() -> None:
            torch.mm(a, b, out=c)

        timer.warmup(op, 2)
        seconds = summarize(timer.time_each(op, iters))["median"]
        rows.append({"m": m, "n": n, "k": k, "seconds": seconds, "tflops": 2.0 * m * n * k / seconds / 1e12})
        del a, b, c
    best = max(rows, key=lambda r: r["tflops"])
    return {"sizes": list(sizes), "iters": iters, "shapes": rows, "best": dict(best)}


def gemm_sustained(
    timer: Timer, op: Callable[[], Any], flops: float, burst_seconds: float, min_seconds: float, telemetry: Any
) -> Optional[dict]:
    """The reference GEMM held back to back for ``min_seconds``: its rate once clocks settle under load.

    A short burst can run at boost clocks a GPU cannot hold at its power
    limit; the sustained rate (and the SM clock sampled during it) is what a
    long job gets.  Chunks of ~0.1 s are timed with events; the GPU never idles.
    """
    if min_seconds <= 0:
        return None
    per_chunk = max(1, round(0.1 / burst_seconds)) if burst_seconds > 0 else 1
    telemetry.begin_phase("gemm_sustained")
    chunks = timer.time_chunks(op, per_chunk, min_seconds, during=telemetry.sample_once)
    telemetry.end_phase("gemm_sustained", 0)
    phase = telemetry.phases.get("gemm_sustained") or {}
    total = sum(chunks)
    rates = [flops * per_chunk / c / 1e12 for c in chunks]
    second_half = rates[len(rates) // 2 :]
    return {
        "seconds": total,
        "iters": per_chunk * len(chunks),
        "chunk_iters": per_chunk,
        "tflops": flops * per_chunk * len(chunks) / total / 1e12,
        "tflops_second_half": sum(second_half) / len(second_half),
        "chunk_tflops": summarize(rates),
        "sm_clock_mhz": phase.get("sm_clock_mhz"),
        "power_w": phase.get("power_w"),
        "energy_j": phase.get("energy_j"),
        "energy_note": phase.get("energy_note"),
    }


def measure_gemm(
    torch: Any, timer: Timer, device: str, dtype: Any, w: Workload, telemetry: Any
) -> tuple[dict, Check]:
    """n x n x n matrix product: burst and sustained FLOP rate, a shape sweep, and correctness against float64."""
    n = w.gemm_n
    gen = torch.Generator(device=device)
    gen.manual_seed(SEED)
    a = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def op() -> None:
        torch.mm(a, b, out=c)

    timer.warmup(op, w.warmup_iters, w.warmup_seconds)
    telemetry.begin_phase("gemm_burst")
    seconds = timer.time_each(op, w.gemm_iters, during=telemetry.sample_once)
    telemetry.end_phase("gemm_burst", 0)
    flops = roofline.gemm_flops(n)
    k = min(GEMM_CHECK_SLICE, n)
    reference = a[:k].double() @ b[:, :k].double()
    error = ((c[:k, :k].double() - reference).norm() / reference.norm()).item()
    tolerance = GEMM_TOLERANCE.get(_dtype_name(dtype), 1e-2)
    correct = error == error and error <= tolerance  # error == error is False for NaN
    result = {
        "n": n,
        "dtype": _dtype_name(dtype),
        "flops": flops,
        "seconds": summarize(seconds),
        "tflops": summarize([flops / s / 1e12 for s in seconds]),
        "rel_error": error if error == error else None,
        "tolerance": tolerance,
        "correct": correct,
        "sm_clock_mhz": (telemetry.phases.get("gemm_burst") or {}).get("sm_clock_mhz"),
    }
    # The sweep and the sustained run add figures; their failure (out of memory, say) must not lose the burst's.
    for key, extra in (
        ("sweep", lambda: gemm_sweep(torch, timer, device, dtype, w.gemm_sweep, w.gemm_sweep_iters)),
        ("sustained", lambda: gemm_sustained(timer, op, flops, result["seconds"]["median"], w.gemm_sustain_s, telemetry)),
    ):
        try:
            result[key] = extra()
        except Exception as exc:
            result[key] = None
            result[f"{key}_error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            timer.sync()
    if correct:
        check = Check(
            "kernel.gemm", PASS, f"GEMM {n}^3 {_dtype_name(dtype)}: relative error {error:.2e} <= {tolerance:.0e}"
        )
    else:
        check = Check(
            "kernel.gemm",
            FAIL,
            f"GEMM {n}^3 {_dtype_name(dtype)} gives wrong results: relative error {error:.2e} > {tolerance:.0e}",
            "the GPU or its math libraries compute wrong results: "
            "drain the node and check the GPU (ECC, `nvidia-smi -q`)",
        )
    return result, check


# A copy buffer must dwarf the L2 cache, or the repeated copies are served from
# it and the GB/s exceed what the memory can do (a 64 MiB buffer on a GPU with a
# 50-60 MiB L2 did).  Where torch does not say the L2's size, assume one larger
# than any current GPU's.
L2_FLOOR_FACTOR = 16
UNKNOWN_L2_BYTES = 128 * MIB
# src + dst, plus the bool tensor of the full-buffer comparison (a quarter of a float32 buffer)
COPY_MEMORY_FACTOR = 2.25


@dataclass
class DeviceSetup:
    """What the GPU allows: the workload's dtype, and the copy buffer that measures memory, not cache."""

    dtype: str
    dtype_note: Optional[str]
    memory_bytes: Optional[int]
    free_bytes: Optional[int]
    l2_bytes: Optional[int]
    copy_bytes: Optional[int]
    copy_note: Optional[str]


def gpu_dtype(name: str, capability: tuple[int, int]) -> tuple[str, Optional[str]]:
    """bf16 where the GPU has bf16 tensor cores (compute capability 8.0, Ampere, and newer), else fp16.

    torch.cuda.is_bf16_supported() says yes on a T4 or V100 too (emulated, and
    far slower), so the capability decides.
    """
    if tuple(capability) >= (8, 0):
        return "bfloat16", None
    cc = f"{capability[0]}.{capability[1]}"
    return "float16", f"{name} (compute capability {cc}) has no bf16 tensor cores: the workload runs in float16"


def copy_buffer_bytes(want: int, l2_bytes: Optional[int], free_bytes: int) -> tuple[Optional[int], Optional[str]]:
    """Bytes of the copy buffer: the workload's size, at least 16x the L2, and fitting in free memory.

    None, with the reason, when a buffer that large does not fit: a smaller one
    would measure the cache.
    """
    floor = L2_FLOOR_FACTOR * (l2_bytes or UNKNOWN_L2_BYTES)
    floor = -(-floor // MIB) * MIB
    size = min(want, free_bytes // 8 // MIB * MIB)  # leave most of the memory to the rest of the workload
    if size >= floor:
        note = None if size == want else f"buffer {size // MIB} MiB instead of {want // MIB} MiB: little free memory"
        return size, note
    if floor * COPY_MEMORY_FACTOR <= free_bytes * 0.75:
        why = "little free memory" if want >= floor else "a smaller one would measure the cache"
        return floor, (
            f"buffer {floor // MIB} MiB instead of {want // MIB} MiB ({why}): {L2_FLOOR_FACTOR}x the L2 cache"
        )
    return None, (
        f"copy skipped: {free_bytes / 2**30:.1f} GiB free is too little for a {floor // MIB} MiB buffer "
        f"({L2_FLOOR_FACTOR}x the {(l2_bytes or UNKNOWN_L2_BYTES) // MIB} MiB L2); a smaller one would measure the cache"
    )


def gpu_setup(torch: Any, index: int = 0, want_copy_bytes: int = 0) -> DeviceSetup:
    """Read the device's properties once: dtype, memory, L2 and the copy buffer they allow."""
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    dtype, dtype_note = gpu_dtype(props.name, (props.major, props.minor))
    l2 = getattr(props, "L2_cache_size", None) or None
    copy_bytes, copy_note = copy_buffer_bytes(want_copy_bytes, l2, free)
    return DeviceSetup(dtype, dtype_note, int(total), int(free), l2, copy_bytes, copy_note)


def _verified(torch: Any, op: Callable[[], Any], src: Any, dst: Any) -> bool:
    """Poison the destination, copy once, compare every element (not a sample of them)."""
    dst.fill_(-1.0)
    op()
    return bool(torch.equal(dst, src))


def measure_copy(
    torch: Any, timer: Timer, device: str, nbytes: int, w: Workload, note: Optional[str] = None
) -> tuple[dict, Check]:
    """Device-to-device copy bandwidth, two ways, and the contents verified in full.

    ``copy_`` is cudaMemcpyAsync (the driver picks copy engines or its own
    kernel); the SM copy is an elementwise kernel (a multiply by 1) that reads
    and writes with the SMs, like nvbandwidth's SM copy.  The higher of the two
    is the GPU's copy bandwidth.  GB/s count bytes read plus bytes written; the
    nvbandwidth convention (bytes copied, counted once) is half of that.
    """
    count = nbytes // 4
    src = torch.arange(count, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    methods = {
        "copy_": lambda: dst.copy_(src),
        "sm_kernel": lambda: torch.mul(src, 1, out=dst),
    }
    moved = roofline.copy_bytes_moved(count * 4)
    measured: dict = {}
    for name, op in methods.items():
        timer.warmup(op, w.warmup_iters, w.warmup_seconds)
        seconds = timer.time_each(op, w.copy_iters)
        measured[name] = {
            "seconds": summarize(seconds),
            "gb_per_s": summarize([moved / s / 1e9 for s in seconds]),
            "correct": _verified(torch, op, src, dst),
        }
    best = max(measured, key=lambda k: measured[k]["gb_per_s"]["median"])
    correct = all(m["correct"] for m in measured.values())
    result = {
        "bytes": count * 4,
        "bytes_moved": moved,
        "bytes_counted": "read + write",
        "method": best,
        "seconds": measured[best]["seconds"],
        "gb_per_s": measured[best]["gb_per_s"],
        "gb_per_s_bytes_once": measured[best]["gb_per_s"]["median"] / 2,
        "methods": measured,
        "correct": correct,
        "note": note,
    }
    if correct:
        check = Check(
            "kernel.copy",
            PASS,
            f"copied {count * 4 / MIB:.0f} MiB {w.copy_iters} times each with copy_ and an SM kernel, "
            "every element verified",
        )
    else:
        wrong = ", ".join(k for k, m in measured.items() if not m["correct"])
        check = Check(
            "kernel.copy",
            FAIL,
            f"device copy produced different bytes ({wrong})",
            "the GPU corrupts memory: drain the node and check ECC (`nvidia-smi -q -d ECC`)",
        )
    return result, check


def extend_window(
    timer: Any,
    fn: Callable[[], Any],
    started: float,
    min_seconds: float,
    max_calls: int = 100_000,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Repeat ``fn`` (synchronised) until ``min_seconds`` have passed since ``started``; the calls it made.

    An energy window must last long enough for NVML's energy counter (refreshed
    every 20-100 ms) to measure it: a prefill of ~10 ms repeated ten times is
    far too short, so the same work is repeated inside the window.
    """
    calls = 0
    while clock() - started < min_seconds and calls < max_calls:
        fn()
        timer.sync()
        calls += 1
    return calls


def _capture_graph(torch: Any, model: Decoder) -> tuple[Any, Any]:
    """Capture one decode step in a CUDA graph; returns the graph and its logits tensor.

    CUDA requires the warm-up before capture to run on a side stream.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model.decode_step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model.decode_step()
    torch.cuda.synchronize()
    return graph, logits


def _graph_for_decode(torch: Any, model: Decoder, first: Any, position: int) -> tuple[Any, Optional[str]]:
    """A verified CUDA graph of the decode step, or None and the reason."""
    try:
        model.start_decode(first, position)
        eager = model.decode_step().float().clone()
        graph, logits = _capture_graph(torch, model)
        model.start_decode(first, position)
        graph.replay()
        replayed = logits.float()
        scale = float(eager.abs().max().item()) or 1.0
        diff = float((replayed - eager).abs().max().item())
        if not diff <= 2e-2 * scale:
            return None, f"CUDA graph replay disagrees with eager decode (max diff {diff:.3g}); decode timed eagerly"
        return graph, None
    except Exception as exc:
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return None, f"CUDA graph capture failed, decode timed eagerly: {type(exc).__name__}: {exc}"[:300]


def measure_decoder(
    torch: Any, timer: Timer, device: str, dtype: Any, w: Workload, telemetry: Any
) -> tuple[dict, dict, dict, list[Check]]:
    """Prefill and decode of the reference decoder; returns (workload, prefill, decode, checks)."""
    s = w.decoder
    checks: list[Check] = []
    model = Decoder(torch, s, device, dtype, SEED)
    gen = torch.Generator(device=device)
    gen.manual_seed(SEED + 1)
    prompt = torch.randint(0, s.vocab, (s.batch, s.prompt_len), generator=gen, device=device)

    def prefill() -> Any:
        return model.prefill(prompt)

    # Energy windows: the timed repetitions, then the same work again until the
    # window is long enough for the energy counter (none on the CPU or in --quick).
    window_s = w.energy_window_s if telemetry.measures_energy else 0.0
    timer.warmup(prefill, max(1, w.warmup_iters // 2), w.warmup_seconds)
    timer.sync()
    started = time.perf_counter()
    telemetry.begin_phase("prefill")
    prefill_seconds = timer.time_each(prefill, w.prefill_iters)
    timer.sync()
    extra = extend_window(timer, prefill, started, window_s)
    telemetry.end_phase("prefill", (w.prefill_iters + extra) * s.batch * s.prompt_len)
    first = model.prefill(prompt).argmax(dim=-1)

    # Decode: a CUDA graph on the GPU removes per-kernel launch cost, which
    # would otherwise dominate a small model's step; eager on the CPU.
    graph, graph_note = None, None
    if timer.cuda and not os.environ.get("SELFTEST_NO_CUDA_GRAPH"):
        graph, graph_note = _graph_for_decode(torch, model, first, s.prompt_len)

    def step() -> None:
        if graph is not None:
            graph.replay()
        else:
            model.decode_step()

    def decode_run() -> None:
        for _ in range(s.new_tokens):
            step()

    # warm-up run, then the timed runs, each from the same prefilled state
    model.start_decode(first, s.prompt_len)
    decode_run()
    timer.sync()

    def fresh_decode_run() -> None:
        model.start_decode(first, s.prompt_len)
        decode_run()

    run_seconds = []
    started = time.perf_counter()
    telemetry.begin_phase("decode")
    for _ in range(w.decode_runs):
        model.start_decode(first, s.prompt_len)
        run_seconds.append(timer.time_once(decode_run))
    timer.sync()
    extra = extend_window(timer, fresh_decode_run, started, window_s)
    telemetry.end_phase("decode", (w.decode_runs + extra) * s.batch * s.new_tokens)

    model.start_decode(first, s.prompt_len)
    last_logits = model.decode_step()
    finite = bool(torch.isfinite(last_logits.float()).all().item())
    in_range = bool(((model.token >= 0) & (model.token < s.vocab)).all().item())

    params = roofline.decoder_params(s)
    workload = dict(
        s.to_dict(),
        dtype=_dtype_name(dtype),
        params=params,
        weight_bytes=params * torch.tensor([], dtype=dtype).element_size(),
        prefill_iters=w.prefill_iters,
        decode_runs=w.decode_runs,
        cuda_graph=graph is not None,
    )
    prefill_tokens = s.batch * s.prompt_len
    prefill_median = summarize(prefill_seconds)["median"]
    prefill_result = {
        "tokens": prefill_tokens,
        "seconds": summarize(prefill_seconds),
        "tokens_per_second": prefill_tokens / prefill_median,
        "time_to_first_token_s": prefill_median,
    }
    decode_tokens = s.batch * s.new_tokens
    decode_result = {
        "tokens_per_run": decode_tokens,
        "run_seconds": summarize(run_seconds),
        "tokens_per_second": summarize([decode_tokens / t for t in run_seconds]),
        "time_per_output_token_s": summarize(run_seconds)["median"] / s.new_tokens,
        "cuda_graph": graph is not None,
        "note": graph_note,
        "fusions": model.fusions,
    }
    if finite and in_range:
        checks.append(
            Check(
                "kernel.decoder",
                PASS,
                f"decoder {params / 1e6:.0f}M params ran prefill {s.batch}x{s.prompt_len} and decode "
                f"{s.batch}x{s.new_tokens}" + (" (CUDA graph)" if graph is not None else ""),
            )
        )
    else:
        checks.append(
            Check(
                "kernel.decoder",
                FAIL,
                "decoder produced non-finite logits or invalid tokens",
                "the GPU computes wrong results: drain the node and check the GPU",
            )
        )
    if graph_note:
        checks.append(
            Check(
                "kernel.cuda_graph",
                WARN,
                graph_note,
                "decode throughput is understated; report this with the fingerprint",
            )
        )
    return workload, prefill_result, decode_result, checks


def roofline_results(
    w: Workload,
    dtype_bytes: int,
    results: dict,
    device_name: Optional[str],
    dtype: Optional[str],
    memory_bytes: Optional[int] = None,
) -> dict:
    """Decode against bandwidth, prefill against FLOP rate: measured and datasheet ceilings.

    ``dtype`` is the GPU workload's dtype (None on the CPU): the datasheet rate
    compared with is the dense one of that dtype.
    """
    s = w.decoder
    gemm, copy = results.get("gemm"), results.get("copy")
    prefill, decode = results.get("prefill"), results.get("decode")
    copy_bw = copy["gb_per_s"]["median"] * 1e9 if copy else None
    gemm_rate = gemm["tflops"]["median"] * 1e12 if gemm else None
    peak = roofline.datasheet_peak(device_name, memory_bytes)
    peak_flops = peak.dense_flops(dtype) if peak and dtype else None
    out: dict = {"datasheet": peak.to_dict() if peak else None}
    step_bytes = roofline.decode_bytes_per_step(s, dtype_bytes)
    out["decode_bytes_per_step"] = step_bytes
    out["decode_context_mean"] = roofline.mean_decode_context(s)
    if decode:
        step_s = decode["time_per_output_token_s"]
        out["decode_achieved_bytes_per_s"] = step_bytes / step_s
        out["decode_bandwidth_efficiency"] = roofline.bandwidth_efficiency(step_bytes, step_s, copy_bw)
        out["decode_bandwidth_efficiency_datasheet"] = (
            roofline.bandwidth_efficiency(step_bytes, step_s, peak.memory_bandwidth_bytes_per_s) if peak else None
        )
    flops = roofline.prefill_flops(s)
    out["prefill_flops"] = flops
    if prefill:
        t = prefill["seconds"]["median"]
        out["prefill_achieved_flops_per_s"] = flops / t
        out["prefill_compute_efficiency"] = roofline.compute_efficiency(flops, t, gemm_rate)
        out["prefill_compute_efficiency_datasheet"] = (
            roofline.compute_efficiency(flops, t, peak_flops) if peak_flops else None
        )
    if peak_flops and gemm:
        out["gemm_efficiency_datasheet"] = gemm_rate / peak_flops
    if peak and copy:
        out["copy_efficiency_datasheet"] = copy_bw / peak.memory_bandwidth_bytes_per_s
    return out


def datasheet_checks(roof: dict) -> list[Check]:
    """Compare with the datasheet: far below warns (clocks, sharing, MIG...); above 100% fails.

    No GPU beats its datasheet's dense peak: a figure above it means the
    measurement is wrong (a buffer served from the L2 cache, broken timing, a
    wrong datasheet entry), so it must never read as a pass.
    """
    peak = roof.get("datasheet")
    if not peak:
        return []
    checks = []
    for key, what in (
        ("gemm_efficiency_datasheet", "GEMM rate"),
        ("copy_efficiency_datasheet", "copy bandwidth"),
        ("decode_bandwidth_efficiency_datasheet", "decode step's bandwidth"),
    ):
        frac = roof.get(key)
        if frac is None:
            continue
        cid = f"perf.{key.split('_')[0]}"
        if frac > 1.0:
            checks.append(
                Check(
                    cid,
                    FAIL,
                    f"{what} is {frac:.0%} of the {peak['name']} datasheet: more than the hardware can do, "
                    "so this measurement is wrong",
                    "report the fingerprint: a buffer served from cache, broken timing or a wrong datasheet entry",
                )
            )
        elif key.startswith("decode"):
            continue  # below the datasheet: the roofline row reports it
        elif frac < DATASHEET_WARN_FRACTION:
            checks.append(
                Check(
                    cid,
                    WARN,
                    f"{what} is {frac:.0%} of the {peak['name']} datasheet",
                    "check clocks and throttling (`nvidia-smi -q -d PERFORMANCE`) and other processes on the GPU",
                )
            )
        else:
            checks.append(Check(cid, PASS, f"{what} is {frac:.0%} of the {peak['name']} datasheet"))
    return checks


def stability_section(results: dict, mode: str) -> tuple[dict, list[Check]]:
    def cv(section: str, key: str) -> Optional[float]:
        part = results.get(section)
        return part[key]["cv"] if part else None

    decode_cv = cv("decode", "tokens_per_second")
    stability = {
        "decode_tokens_per_second_cv": decode_cv,
        "prefill_seconds_cv": cv("prefill", "seconds"),
        "gemm_tflops_cv": cv("gemm", "tflops"),
        "copy_gb_per_s_cv": cv("copy", "gb_per_s"),
        "decode_runs": results["decode"]["tokens_per_second"]["n"] if results.get("decode") else 0,
        "decode_cv_limit": DECODE_CV_WARN,
        "decode_stable": None if decode_cv is None else decode_cv <= DECODE_CV_WARN,
    }
    checks = []
    if mode == "gpu" and decode_cv is not None and decode_cv > DECODE_CV_WARN:
        checks.append(
            Check(
                "stability.decode",
                WARN,
                f"decode tokens/s varies by {decode_cv:.1%} across runs (limit {DECODE_CV_WARN:.0%})",
                "another process may share the GPU, or clocks are not steady: compare with `nvidia-smi`",
            )
        )
    return stability, checks


def run(mode: str, quick: bool, telemetry: Any, device_name: Optional[str]) -> KernelRun:
    """Run the whole workload on cuda:0 (mode 'gpu') or the CPU (mode 'cpu')."""
    import torch  # noqa: PLC0415 - lazily: the package imports without torch

    gpu = mode == "gpu"
    device = "cuda:0" if gpu else "cpu"
    w = workload_for(mode, quick)
    setup = gpu_setup(torch, 0, w.copy_bytes) if gpu else None
    dtype = getattr(torch, setup.dtype) if setup else torch.float32
    dtype_bytes = torch.tensor([], dtype=dtype).element_size()
    copy_note = setup.copy_note if setup else None
    if setup and setup.copy_bytes:
        w = replace(w, copy_bytes=setup.copy_bytes)
    torch.manual_seed(SEED)
    timer = Timer(torch, device)
    kr = KernelRun()
    kr.workload = {
        "device": device,
        "device_name": device_name,
        "dtype": _dtype_name(dtype),
        "dtype_note": setup.dtype_note if setup else None,
        "seed": SEED,
        "quick": quick,
        "threads": torch.get_num_threads(),
        "gemm": {
            "n": w.gemm_n,
            "iters": w.gemm_iters,
            "warmup_iters": w.warmup_iters,
            "sustain_s": w.gemm_sustain_s,
            "sweep": list(w.gemm_sweep),
            "sweep_iters": w.gemm_sweep_iters,
        },
        "copy": {
            "bytes": w.copy_bytes if not setup or setup.copy_bytes else None,
            "iters": w.copy_iters,
            "l2_bytes": setup.l2_bytes if setup else None,
            "min_bytes": L2_FLOOR_FACTOR * (setup.l2_bytes or UNKNOWN_L2_BYTES) if setup else None,
        },
        "decoder": dict(w.decoder.to_dict(), dtype=_dtype_name(dtype)),
        "energy_window_s": w.energy_window_s,
    }
    if setup and setup.dtype_note:
        kr.checks.append(Check("kernel.dtype", PASS, setup.dtype_note))
    started = time.perf_counter()

    def release() -> None:
        if gpu:
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:
                pass

    with torch.inference_mode():
        try:
            kr.results["gemm"], check = measure_gemm(torch, timer, device, dtype, w, telemetry)
            kr.checks.append(check)
        except Exception as exc:
            kr.results["gemm"] = None
            kr.checks.append(_error_check("kernel.gemm", "GEMM", exc))
        release()
        try:
            if setup and not setup.copy_bytes:
                kr.results["copy"] = None
                kr.checks.append(
                    Check("kernel.copy", WARN, copy_note or "copy skipped", "free GPU memory (see `nvidia-smi`)")
                )
            else:
                kr.results["copy"], check = measure_copy(torch, timer, device, w.copy_bytes, w, copy_note)
                kr.checks.append(check)
        except Exception as exc:
            kr.results["copy"] = None
            kr.checks.append(_error_check("kernel.copy", "copy bandwidth", exc))
        release()
        try:
            decoder_workload, kr.results["prefill"], kr.results["decode"], checks = measure_decoder(
                torch, timer, device, dtype, w, telemetry
            )
            kr.workload["decoder"] = decoder_workload
            kr.checks.extend(checks)
        except Exception as exc:
            kr.results["prefill"] = kr.results["decode"] = None
            kr.checks.append(_error_check("kernel.decoder", "reference decoder", exc))
        release()
    kr.results["roofline"] = roofline_results(
        w, dtype_bytes, kr.results, device_name if gpu else None, _dtype_name(dtype) if gpu else None,
        setup.memory_bytes if setup else None,
    )
    kr.checks.extend(datasheet_checks(kr.results["roofline"]))
    kr.stability, checks = stability_section(kr.results, mode)
    kr.checks.extend(checks)
    kr.results["seconds"] = time.perf_counter() - started
    return kr
