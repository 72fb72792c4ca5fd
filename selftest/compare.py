"""Compare two fingerprints: throughput regressions and environment changes.

A regression is a throughput that fell by more than the tolerance, or a check
that passed before and fails now.  Differences that make the numbers
meaningless to compare (another GPU model, another workload shape, CPU vs
GPU) are reported as "not comparable", also a non-zero exit: a silent "no
regression" would be wrong.  Version changes are expected (that is usually
the point of comparing) and only listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE
from .fingerprint import lookup



# (label, path to a "higher is better" number)
THROUGHPUT = (
    ("gemm TFLOP/s", ("results", "gemm", "tflops", "median")),
    ("gemm sustained TFLOP/s", ("results", "gemm", "sustained", "tflops")),
    ("gemm best-shape TFLOP/s", ("results", "gemm", "sweep", "best", "tflops")),
    ("copy GB/s", ("results", "copy", "gb_per_s", "median")),
    ("prefill tokens/s", ("results", "prefill", "tokens_per_second")),
    ("decode tokens/s", ("results", "decode", "tokens_per_second", "median")),
)


def _decoder_shape(doc: dict) -> Any:
    dec = lookup(doc, "workload", "decoder") or {}
    keys = (
        "dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "ffn_dim",
        "vocab",
        "batch",
        "prompt_len",
        "new_tokens",
        "dtype",
    )
    return {k: dec.get(k) for k in keys}


# (label, how to read it): differences here break comparability
COMPARABILITY: tuple[tuple[str, Callable[[dict], Any]], ...] = (
    ("schema major version", lambda d: str(d.get("schema_version", "")).split(".")[0]),
    ("mode", lambda d: d.get("mode")),
    ("quick", lambda d: d.get("quick")),
    ("GPU model", lambda d: lookup(d, "workload", "device_name")),
    ("GEMM size", lambda d: lookup(d, "workload", "gemm", "n")),
    ("decoder shape", _decoder_shape),
)

# (label, path): listed when they differ
INFORMATIONAL = (
    ("schema version", ("schema_version",)),
    ("image tag", ("environment", "image", "tag")),
    ("torch", ("environment", "versions", "torch")),
    ("torch CUDA", ("environment", "versions", "torch_cuda")),
    ("cuDNN", ("environment", "versions", "cudnn")),
    ("NCCL", ("environment", "versions", "nccl")),
    ("Triton", ("environment", "versions", "triton")),
    ("Python", ("environment", "versions", "python")),
    ("driver", ("environment", "driver", "driver_version")),
    ("copy buffer bytes", ("workload", "copy", "bytes")),
    ("copy method", ("results", "copy", "method")),
    ("GEMM sweep sizes", ("workload", "gemm", "sweep")),
    ("GEMM sustained seconds", ("workload", "gemm", "sustain_s")),
    ("decode CUDA graph", ("results", "decode", "cuda_graph")),
    ("GPU-hour price", ("cost", "gpu_hour_usd")),
)


@dataclass
class Comparison:
    metrics: list[dict] = field(default_factory=list)
    incomparable: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    compared: int = 0  # throughput metrics measured in both fingerprints

    @property
    def nothing_compared(self) -> bool:
        """No metric in both and nothing lost: a 'no regression' would claim what was never checked."""
        return self.compared == 0 and not self.regressions

    @property
    def exit_code(self) -> int:
        if self.nothing_compared:
            return EXIT_USAGE
        return EXIT_REGRESSION if (self.regressions or self.incomparable) else EXIT_OK

    def nothing_compared_line(self) -> str:
        return (
            "selftest compare: nothing to compare: no throughput metric "
            f"({', '.join(label for label, _ in THROUGHPUT)}) was measured in both fingerprints"
        )

    def to_dict(self) -> dict:
        return {
            "metrics": self.metrics,
            "incomparable": self.incomparable,
            "changes": self.changes,
            "regressions": self.regressions,
            "compared": self.compared,
            "exit_code": self.exit_code,
        }


def compare(old: dict, new: dict, tolerance: float = 0.10) -> Comparison:
    """Diff two fingerprints; throughput falling by more than ``tolerance`` is a regression."""
    result = Comparison()
    for label, read in COMPARABILITY:
        a, b = read(old), read(new)
        if a != b:
            result.incomparable.append(f"{label}: {a} -> {b}")
    for label, path in INFORMATIONAL:
        a, b = lookup(old, *path), lookup(new, *path)
        if a != b:
            result.changes.append(f"{label}: {a} -> {b}")
    for label, path in THROUGHPUT:
        a, b = lookup(old, *path), lookup(new, *path)
        change: Optional[float] = None
        verdict = "n/a"
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0:
            result.compared += 1
            change = b / a - 1.0
            if result.incomparable:
                verdict = "not comparable"  # a drop between different setups is no regression
            elif change < -tolerance:
                verdict = "regression"
                result.regressions.append(
                    f"{label} fell {-change:.1%} ({number(a)} -> {number(b)}), more than {tolerance:.0%}"
                )
            else:
                verdict = "ok"
        elif a is not None and b is None:
            verdict = "missing"
            result.regressions.append(f"{label}: measured before ({number(a)}), missing now")
        result.metrics.append({"metric": label, "old": a, "new": b, "change": change, "verdict": verdict})
    old_checks = {c["id"]: c["status"] for c in old.get("checks") or []}
    for c in new.get("checks") or []:
        if c["status"] == "fail" and old_checks.get(c["id"]) in ("pass", "warn", "skip"):
            result.regressions.append(f"check {c['id']} now fails: {c['message']}")
    return result


def number(value: Any) -> str:
    """1234567.8 -> '1,234,568'; 0.008573 -> '0.008573'."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def render(cmp: Comparison, old_name: str, new_name: str, tolerance: float) -> str:
    fmt = number

    lines = [f"compare {old_name} -> {new_name} (tolerance {tolerance:.0%})", ""]
    width = max(len(m["metric"]) for m in cmp.metrics)
    lines.append(f"{'METRIC'.ljust(width)}  {'OLD':>12}  {'NEW':>12}  {'CHANGE':>8}  VERDICT")
    for m in cmp.metrics:
        change = "n/a" if m["change"] is None else f"{m['change']:+.1%}"
        lines.append(
            f"{m['metric'].ljust(width)}  {fmt(m['old']):>12}  {fmt(m['new']):>12}  {change:>8}  {m['verdict']}"
        )
    if cmp.changes:
        lines += ["", "changed:"] + [f"  {c}" for c in cmp.changes]
    if cmp.incomparable:
        lines += ["", "NOT COMPARABLE (numbers measure different things):"] + [f"  {c}" for c in cmp.incomparable]
    if cmp.regressions:
        lines += ["", "REGRESSIONS:"] + [f"  {r}" for r in cmp.regressions]
    if not cmp.incomparable and not cmp.regressions:
        lines += ["", "no regression"]
    return "\n".join(lines)
