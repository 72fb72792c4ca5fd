"""The short human summary printed after every run (plain ASCII, fits a terminal)."""

from __future__ import annotations

import math
from typing import Optional

from .fingerprint import lookup



def num(value: Optional[float], digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.{digits}f}"
    return f"{text}{unit}"


def pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def usd(value: Optional[float]) -> str:
    """Three significant digits without scientific notation: $0.00000285, $0.108, $12.3."""
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    decimals = max(2, 2 - math.floor(math.log10(abs(value))))
    return f"${value:.{decimals}f}"


def _checks_table(checks: list[dict]) -> list[str]:
    width = max([len(c["id"]) for c in checks] + [5])
    lines = [f"{'CHECK'.ljust(width)}  STATUS  MESSAGE"]
    for c in checks:
        lines.append(f"{c['id'].ljust(width)}  {c['status'].ljust(6)}  {c['message']}")
        if c.get("remedy") and c["status"] in ("warn", "fail"):
            lines.append(f"{''.ljust(width)}  {''.ljust(6)}  -> {c['remedy']}")
    return lines


def _result_rows(doc: dict) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    res = doc.get("results") or {}
    wl = doc.get("workload") or {}
    gemm = res.get("gemm")
    if gemm:
        t = gemm["tflops"]
        digits = 3 if t["median"] < 10 else 1
        error = "n/a" if gemm.get("rel_error") is None else f"{gemm['rel_error']:.1e}"
        clock = gemm.get("sm_clock_mhz")
        rows.append(
            (
                f"gemm {gemm['dtype']} {gemm['n']}^3",
                f"{num(t['median'], digits)} TFLOP/s burst (p10 {num(t['p10'], digits)}, p90 {num(t['p90'], digits)}), "
                f"rel. error {error}" + (f", SM clock {clock['min']}-{clock['max']} MHz" if clock else ""),
            )
        )
    if gemm and gemm.get("sweep"):
        best = gemm["sweep"]["best"]
        rows.append(
            (
                "gemm best shape",
                f"{num(best['tflops'], 3 if best['tflops'] < 10 else 1)} TFLOP/s at "
                f"{best['m']}x{best['n']}x{best['k']} (best of {len(gemm['sweep']['shapes'])} shapes)",
            )
        )
    sustained = (gemm or {}).get("sustained")
    if sustained:
        digits = 3 if sustained["tflops"] < 10 else 1
        clock = sustained.get("sm_clock_mhz")
        text = (
            f"{num(sustained['tflops'], digits)} TFLOP/s over {sustained['seconds']:.1f} s "
            f"(second half {num(sustained['tflops_second_half'], digits)})"
        )
        if clock:
            text += f", SM clock {clock['min']}-{clock['max']} MHz (mean {num(clock['mean'], 0)})"
        if sustained.get("power_w") is not None:
            text += f", power {num(sustained['power_w'], 0)} W"
        rows.append(("gemm sustained", text))
    copy = res.get("copy")
    if copy:
        g = copy["gb_per_s"]
        once = copy.get("gb_per_s_bytes_once")
        method = f", {copy['method']} (the faster of copy_ and an SM kernel)" if copy.get("method") else ""
        rows.append(
            (
                "copy (read+write)",
                f"{num(g['median'])} GB/s over a {copy['bytes'] / 2**20:.0f} MiB buffer{method}"
                + (f"; {num(once)} GB/s counting bytes once (nvbandwidth)" if once else ""),
            )
        )
    dec = wl.get("decoder") or {}
    prefill = res.get("prefill")
    if prefill:
        rows.append(
            (
                f"prefill {dec.get('batch')}x{dec.get('prompt_len')}",
                f"{num(prefill['tokens_per_second'])} tok/s, "
                f"time to first token {num(prefill['time_to_first_token_s'] * 1e3, 2)} ms",
            )
        )
    decode = res.get("decode")
    if decode:
        t = decode["tokens_per_second"]
        graph = ", CUDA graph" if decode.get("cuda_graph") else ""
        rows.append(
            (
                f"decode {dec.get('batch')}x{dec.get('new_tokens')}",
                f"{num(t['median'])} tok/s, {num(decode['time_per_output_token_s'] * 1e3, 3)} ms per output token, "
                f"cv {pct(t['cv']) if t['cv'] is not None else 'n/a'} over {t['n']} runs{graph}",
            )
        )
    roof = res.get("roofline") or {}
    if roof.get("decode_bandwidth_efficiency") is not None or roof.get("prefill_compute_efficiency") is not None:
        text = (
            f"decode {pct(roof.get('decode_bandwidth_efficiency'))} of measured bandwidth, "
            f"prefill {pct(roof.get('prefill_compute_efficiency'))} of measured GEMM rate"
        )
        if roof.get("datasheet"):
            text += (
                f"; vs {roof['datasheet']['name']} datasheet: "
                f"decode {pct(roof.get('decode_bandwidth_efficiency_datasheet'))}, "
                f"prefill {pct(roof.get('prefill_compute_efficiency_datasheet'))}"
            )
        rows.append(("roofline", text))
    tel = doc.get("telemetry") or {}
    if tel.get("available"):
        power = tel.get("power_w") or {}
        util = tel.get("utilization_gpu_pct") or {}
        energy = (
            f"energy {num(tel.get('energy_j'), 1)} J ({tel.get('energy_method')})"
            if tel.get("energy_j") is not None
            else f"energy n/a ({tel.get('energy_note') or 'not measured'})"
        )
        rows.append(
            (
                "telemetry",
                f"power mean {num(power.get('mean'), 0)} W / max {num(power.get('max'), 0)} W, "
                f"GPU busy {num(util.get('mean'), 0)}%, {energy}",
            )
        )
        seen = [r for r in (tel.get("throttle_reasons_seen") or []) if r != "gpu_idle"]
        if seen:
            rows.append(("clock limits seen", ", ".join(seen) + " (in some sample of the run)"))
        if tel.get("xid_events"):
            rows.append(("XID events", ", ".join(map(str, tel["xid_events"]))))
        for name, phase in (tel.get("phases") or {}).items():
            if phase.get("tokens") and phase.get("energy_j") is None and phase.get("energy_note"):
                rows.append((f"energy {name}", f"n/a: {phase['energy_note']}"))
    else:
        rows.append(("telemetry", tel.get("note") or "not available"))
    cost = doc.get("cost") or {}
    if cost:
        label = f"cost @ ${cost['gpu_hour_usd']:.2f}/h"
        ratio = cost["input_output_ratio"]
        rows.append(
            (
                label,
                f"per 1k tokens: input {usd(lookup(cost, 'input', 'usd_per_1k_tokens'))}, "
                f"output {usd(lookup(cost, 'output', 'usd_per_1k_tokens'))}, "
                f"blended {ratio:g}:1 {usd(lookup(cost, 'blended', 'usd_per_1k_tokens'))} "
                f"({usd(lookup(cost, 'blended', 'usd_per_1m_tokens'))} per 1M)",
            )
        )
        if cost.get("note"):
            rows.append(("", cost["note"]))
        jin, jout = lookup(cost, "input", "joules_per_token"), lookup(cost, "output", "joules_per_token")
        if jin is not None or jout is not None:
            rows.append(("energy per token", f"input {num(jin, 3)} J, output {num(jout, 3)} J"))
    return rows


def summary(doc: dict, out_path: Optional[str]) -> str:
    """The table printed at the end of a probe run."""
    device = lookup(doc, "workload", "device_name") or ("CPU" if doc.get("mode") == "cpu" else "?")
    head = (
        f"selftest {lookup(doc, 'tool', 'version')}  mode={doc.get('mode')}{' (quick)' if doc.get('quick') else ''}  "
        f"device={device}  status={str(doc.get('status')).upper()}  ({doc.get('duration_s', 0):.1f} s)"
    )
    tag = lookup(doc, "environment", "image", "tag")
    lines = [head]
    if tag:
        lines.append(f"image {tag}")
    lines.append("")
    lines.extend(_checks_table(doc.get("checks") or []))
    rows = _result_rows(doc)
    if out_path:
        rows.append(("fingerprint", out_path))
    if rows:
        width = max(len(r[0]) for r in rows)
        lines.append("")
        lines.append(f"{'RESULT'.ljust(width)}  VALUE")
        lines.extend(f"{name.ljust(width)}  {value}" for name, value in rows)
    return "\n".join(lines)
