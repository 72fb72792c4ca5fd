"""Several probe runs of one GPU: their spread (run-to-run CV) and the targets they meet.

    python -m selftest.runs [--wall S,S,...] [--out runs.json] FINGERPRINT...

scripts/gpu-check runs the probe N times, each in its own process (a fresh CUDA
context, allocator and cuBLAS heuristics), and summarises them here.  One run's
repeated timings say how steady the GPU was for seconds; separate runs say how
far one number can be trusted as the GPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Optional

from . import fingerprint
from .fingerprint import lookup
from .stats import coefficient_of_variation, percentile

# Run-to-run coefficient of variation the probe's figures should stay within.
CV_TARGET = 0.03
# A whole run (process start to exit) must stay under this.
WALL_TARGET_S = 120.0



def _tb(value: Optional[float]) -> Optional[float]:
    return None if value is None else value / 1000.0


# (label, unit, how to read it from a fingerprint); each gets a run-to-run CV
METRICS: tuple[tuple[str, str, Callable[[dict], Optional[float]]], ...] = (
    ("GEMM burst", "TFLOP/s", lambda d: lookup(d, "results", "gemm", "tflops", "median")),
    ("GEMM sustained", "TFLOP/s", lambda d: lookup(d, "results", "gemm", "sustained", "tflops")),
    ("GEMM best shape", "TFLOP/s", lambda d: lookup(d, "results", "gemm", "sweep", "best", "tflops")),
    ("copy (read+write)", "TB/s", lambda d: _tb(lookup(d, "results", "copy", "gb_per_s", "median"))),
    ("prefill", "tokens/s", lambda d: lookup(d, "results", "prefill", "tokens_per_second")),
    ("decode", "tokens/s", lambda d: lookup(d, "results", "decode", "tokens_per_second", "median")),
    ("decode vs measured copy", "fraction", lambda d: lookup(d, "results", "roofline", "decode_bandwidth_efficiency")),
    ("decode energy", "J/token", lambda d: lookup(d, "telemetry", "phases", "decode", "joules_per_token")),
    ("probe duration", "s", lambda d: d.get("duration_s")),
)

# The metrics whose run-to-run CV is held to CV_TARGET (the others are reported)
CV_HELD = ("GEMM burst", "GEMM sustained", "copy (read+write)", "decode")


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_rows(docs: list[dict]) -> list[dict]:
    """Per metric: the value of every run, their median and their coefficient of variation."""
    rows = []
    for label, unit, read in METRICS:
        values = [_number(read(d)) for d in docs]
        present = [v for v in values if v is not None]
        rows.append(
            {
                "metric": label,
                "unit": unit,
                "values": values,
                "median": percentile(present, 50) if present else None,
                "cv": coefficient_of_variation(present) if len(present) == len(values) else None,
                "cv_target": CV_TARGET if label in CV_HELD else None,
            }
        )
    return rows


def is_hopper(docs: list[dict]) -> bool:
    """H100/H200-class GPUs (and their H800/GH200 variants), where the Hopper targets apply."""
    name = (lookup(docs[0], "results", "roofline", "datasheet", "name") or "") if docs else ""
    return name.startswith(("H100", "H200", "H800", "GH200"))


def targets(docs: list[dict], rows: list[dict], walls: Optional[list[float]]) -> list[dict]:
    """The project's targets, each met, missed or not applicable (n/a)."""
    by = {r["metric"]: r for r in rows}
    hopper = is_hopper(docs)
    copy_frac = [_number(lookup(d, "results", "roofline", "copy_efficiency_datasheet")) for d in docs]
    copy_frac = [v for v in copy_frac if v is not None]
    within = [_number(lookup(d, "stability", "decode_tokens_per_second_cv")) for d in docs]
    within = [v for v in within if v is not None]
    out = [
        ("GEMM best shape, TFLOP/s (Hopper bf16)", by["GEMM best shape"]["median"] if hopper else None, ">=", 700.0),
        ("copy, fraction of datasheet", percentile(copy_frac, 50) if copy_frac else None, ">=", 0.80),
        ("copy, fraction of datasheet (no run above 1)", max(copy_frac) if copy_frac else None, "<=", 1.0),
        ("decode vs measured copy (Hopper)", by["decode vs measured copy"]["median"] if hopper else None, ">=", 0.60),
        ("decode tokens/s CV within a run, worst run", max(within) if within else None, "<=", CV_TARGET),
    ]
    for label in CV_HELD:
        out.append((f"{label}: CV across runs", by[label]["cv"], "<=", CV_TARGET))
    out.append(("whole run (process start to exit), worst, s", max(walls) if walls else None, "<=", WALL_TARGET_S))
    result = []
    for label, value, op, target in out:
        verdict = "n/a" if value is None else ("met" if (value >= target if op == ">=" else value <= target) else "MISSED")
        result.append({"target": label, "value": value, "op": op, "limit": target, "verdict": verdict})
    return result


def results_prefix(doc: dict) -> str:
    """DATE-GPU-drvDRIVER-torchVERSION, the name bench/results/gpu/ gives one GPU's file set."""
    date = str(doc.get("created_utc", "")).split("T")[0].replace("-", "") or "date"
    gpu = fingerprint.gpu_slug(lookup(doc, "workload", "device_name"))
    driver = lookup(doc, "environment", "driver", "driver_version") or "unknown"
    torch = str(lookup(doc, "environment", "versions", "torch") or "unknown").split("+")[0]
    return f"{date}-{gpu}-drv{driver}-torch{torch}"


def summarize_runs(docs: list[dict], walls: Optional[list[float]] = None) -> dict:
    rows = metric_rows(docs)
    return {
        "runs": len(docs),
        "gpu": lookup(docs[0], "workload", "device_name") if docs else None,
        "statuses": [d.get("status") for d in docs],
        "walls_s": walls,
        "metrics": rows,
        "targets": targets(docs, rows, walls),
        "results_prefix": results_prefix(docs[0]) if docs else None,
    }


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def render(summary: dict) -> str:
    lines = [f"{summary['runs']} runs on {summary['gpu']}: statuses {', '.join(map(str, summary['statuses']))}", ""]
    lines.append(f"{'METRIC':26s} {'UNIT':9s} {'MEDIAN':>10s} {'CV':>7s}  RUNS")
    for r in summary["metrics"]:
        cv = "n/a" if r["cv"] is None else f"{r['cv']:.2%}"
        lines.append(
            f"{r['metric']:26s} {r['unit']:9s} {_fmt(r['median']):>10s} {cv:>7s}  {' '.join(_fmt(v) for v in r['values'])}"
        )
    lines += ["", "targets:"]
    for t in summary["targets"]:
        lines.append(f"  {t['target']:48s} {_fmt(t['value']):>10s}  {t['op']} {t['limit']:g}  {t['verdict']}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selftest.runs", description=__doc__.split("\n\n")[0])
    p.add_argument("fingerprints", nargs="+", metavar="FINGERPRINT")
    p.add_argument("--wall", help="comma-separated wall-clock seconds of each run (process start to exit)")
    p.add_argument("--out", metavar="FILE", help="write the summary as JSON too")
    args = p.parse_args(argv)
    try:
        docs = [fingerprint.load(path) for path in args.fingerprints]
        walls = [float(w) for w in args.wall.split(",")] if args.wall else None
    except ValueError as exc:
        print(f"selftest.runs: error: {exc}", file=sys.stderr)
        return 2
    summary = summarize_runs(docs, walls)
    print(render(summary))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(fingerprint.jsonable(summary), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
