"""One probe run: validate, run the workload, price it, write and print the fingerprint."""

from __future__ import annotations

import os
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from . import EXIT_CHECK_FAILED, EXIT_OK, cost as cost_mod, fingerprint, kernel, nvml, validate
from .check import FAIL, PASS, SKIP, WARN, Check, overall_status
from .imageinfo import ImageInfo, load_image_info, price_for_gpu


@dataclass
class ProbeOptions:
    quick: bool = False
    out: Optional[str] = None
    gpu_hour_usd: Optional[float] = None
    input_output_ratio: float = 3.0
    require_gpu: bool = False
    argv: list[str] = field(default_factory=list)


@dataclass
class ProbeOutcome:
    document: dict
    out_path: Optional[str]
    exit_code: int


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def resolve_price(argument: Optional[float], image: ImageInfo, gpu_name: Optional[str]) -> dict:
    """Price per GPU-hour: the argument, else the image's table for this GPU, else 0 with a note."""
    if argument is not None:
        return {"gpu_hour_usd": float(argument), "price_source": "argument", "price_key": None, "note": None}
    match = price_for_gpu(image.gpu_hour_usd, gpu_name)
    if match:
        return {
            "gpu_hour_usd": match[1],
            "price_source": "image",
            "price_key": match[0],
            "note": f"price for {match[0]} from the image's table; override with --gpu-hour-usd",
        }
    if gpu_name is None:
        why = "CPU run"
    elif image.gpu_hour_usd:
        why = f"no price for {gpu_name} in the image's table"
    else:
        why = "no price table (not inside an image)"
    return {
        "gpu_hour_usd": 0.0,
        "price_source": "none",
        "price_key": None,
        "note": f"{why}: costs are $0; pass --gpu-hour-usd PRICE",
    }


def _cost_section(results: dict, telemetry: dict, price: dict, ratio: float) -> dict:
    prefill, decode = results.get("prefill"), results.get("decode")
    in_tps = prefill["tokens_per_second"] if prefill else None
    out_tps = decode["tokens_per_second"]["median"] if decode else None
    phases = telemetry.get("phases") or {}
    in_j = (phases.get("prefill") or {}).get("joules_per_token")
    out_j = (phases.get("decode") or {}).get("joules_per_token")
    section = dict(price)
    section["input_output_ratio"] = ratio
    section.update(cost_mod.token_costs(price["gpu_hour_usd"], in_tps, out_tps, ratio, in_j, out_j))
    return section


def _telemetry_for(validation: validate.Validation, mode: str) -> Any:
    if mode != "gpu":
        return nvml.NullTelemetry("CPU run: no GPU telemetry or energy counter")
    if validation.nvml is None or validation.nvml_index is None:
        return nvml.NullTelemetry(validation.nvml_note or "NVML not available: no telemetry")
    device = next((d for d in validation.nvml_devices if d.get("index") == validation.nvml_index), {})
    cuda_uuid = (validation.torch_devices[0].get("uuid") or "") if validation.torch_devices else ""
    mig = bool(device.get("mig_enabled")) or cuda_uuid.upper().startswith("MIG-")
    try:
        return nvml.TelemetrySampler(
            validation.nvml,
            validation.nvml_index,
            energy_blocked=nvml.MIG_ENERGY_NOTE if mig else None,
            matched_by=validation.nvml_match,
        )
    except Exception as exc:
        return nvml.NullTelemetry(f"NVML telemetry unavailable: {exc}")


def _throttle_check(telemetry: dict) -> Optional[Check]:
    """Harmful throttle reasons seen in any sample of the run (the union of the masks)."""
    bad = nvml.harmful_throttle_reasons(telemetry.get("throttle_mask_seen"))
    if bad:
        return Check(
            "gpu.throttle",
            WARN,
            f"clocks held down during the workload: {', '.join(bad)}",
            "check cooling and power (`nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`)",
        )
    return None


# XIDs that mean the GPU itself failed (double-bit ECC, fallen off the bus, uncontained/contained
# ECC errors); others (13, 31, 43: a program's fault, often) only warn.
FATAL_XIDS = {48, 79, 94, 95}


def _xid_check(telemetry: dict) -> Optional[Check]:
    """Driver-reported GPU faults (XID events) on the GPU under test while the probe ran."""
    events = telemetry.get("xid_events")
    if not events:
        return None
    fatal = sorted(set(events) & FATAL_XIDS)
    return Check(
        "gpu.xid",
        FAIL if fatal else WARN,
        f"XID event(s) during the run: {', '.join(map(str, events))}"
        + (f" (GPU faults: {', '.join(map(str, fatal))})" if fatal else ""),
        "read the kernel log (`dmesg | grep -i xid`) and NVIDIA's XID catalog; drain the node if it recurs",
    )


def _write(document: dict, path: str, fallback: bool, checks: list[Check]) -> Optional[str]:
    """Write the fingerprint; a default path that is not writable falls back to the temp directory."""
    try:
        fingerprint.write(document, path)
        return path
    except OSError as exc:
        reason = exc.strerror or str(exc)
    if fallback:
        alternative = os.path.join(tempfile.gettempdir(), os.path.basename(path))
        try:
            fingerprint.write(document, alternative)
        except OSError:
            pass
        else:
            checks.append(
                Check(
                    "fingerprint.write",
                    WARN,
                    f"cannot write {path} ({reason}); wrote {alternative} instead",
                    "pass --out PATH in a writable directory (e.g. a mounted volume)",
                )
            )
            return alternative
    checks.append(
        Check(
            "fingerprint.write",
            FAIL,
            f"cannot write {path}: {reason}",
            "pass --out PATH in a writable directory (e.g. a mounted volume)",
        )
    )
    return None


def run_probe(opts: ProbeOptions) -> ProbeOutcome:
    """Never raises for a broken environment: every problem ends up as a check."""
    created = fingerprint.utc_now()
    started = time.perf_counter()
    image = load_image_info()
    validation = validate.run(image, require_gpu=opts.require_gpu)
    checks: list[Check] = list(validation.checks)
    mode = "gpu" if validation.gpu_usable else "cpu"
    gpu_name = validation.torch_devices[0]["name"] if mode == "gpu" else None
    device_name = gpu_name if mode == "gpu" else cpu_model()

    empty_results: dict = {"gemm": None, "copy": None, "prefill": None, "decode": None}
    workload: dict = {
        "device": "cuda:0" if mode == "gpu" else "cpu",
        "device_name": device_name,
        "dtype": "bfloat16" if mode == "gpu" else "float32",
        "seed": kernel.SEED,
        "quick": opts.quick,
    }
    results, stability = dict(empty_results), {"decode_tokens_per_second_cv": None, "decode_runs": 0}
    telemetry_doc: dict = {"available": False, "note": "workload not run"}
    if not validation.torch_ok:
        checks.append(Check("kernel", SKIP, "workload not run: torch is not importable"))
    elif mode == "cpu" and opts.require_gpu:
        checks.append(Check("kernel", SKIP, "workload not run: no usable GPU and --require-gpu given"))
    else:
        telemetry = _telemetry_for(validation, mode)
        try:
            telemetry.start()
            run = kernel.run(mode, opts.quick, telemetry, device_name)
            workload, results, stability = run.workload, run.results, run.stability
            checks.extend(run.checks)
        except Exception as exc:  # a bug or a driver fault outside the guarded parts
            if os.environ.get("SELFTEST_DEBUG"):
                traceback.print_exc()
            checks.append(
                Check(
                    "kernel",
                    FAIL,
                    f"workload aborted: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                    "re-run with SELFTEST_DEBUG=1 for a traceback and report it with the fingerprint",
                )
            )
        finally:
            try:
                telemetry.stop()
            except Exception:
                pass
        telemetry_doc = telemetry.summary()
        for extra in (_throttle_check(telemetry_doc), _xid_check(telemetry_doc)):
            if extra:
                checks.append(extra)
    if validation.nvml is not None:
        nvml.shutdown(validation.nvml)

    price = resolve_price(opts.gpu_hour_usd, image, gpu_name)
    cost = _cost_section(results, telemetry_doc, price, opts.input_output_ratio)
    environment = {
        "image": {
            "inside_image": image.inside_image,
            "info_path": image.path,
            "tag": image.tag,
            "labels": image.labels,
        },
        "host": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "versions": validation.versions,
        "driver": validation.driver,
        "devices": validation.nvml_devices,
        "torch_devices": validation.torch_devices,
        "env_flags": validation.env_flags,
    }
    out_path = opts.out or fingerprint.default_filename(gpu_name, created)

    def assemble() -> dict:
        status = overall_status(checks)
        return fingerprint.build(
            mode=mode,
            quick=opts.quick,
            status=status,
            exit_code=EXIT_CHECK_FAILED if status == FAIL else EXIT_OK,
            checks=[c.to_dict() for c in checks],
            environment=environment,
            workload=workload,
            results=results,
            telemetry=telemetry_doc,
            cost=cost,
            stability=stability,
            created=created,
            duration_s=time.perf_counter() - started,
            argv=opts.argv,
        )

    document = assemble()
    errors = fingerprint.schema_errors(fingerprint.jsonable(document))
    if errors is None:
        checks.append(
            Check(
                "fingerprint.schema",
                WARN,
                "jsonschema is not installed: fingerprint not validated",
                "pip install jsonschema",
            )
        )
    elif errors:
        checks.append(
            Check(
                "fingerprint.schema",
                FAIL,
                f"fingerprint violates its schema: {'; '.join(errors[:3])}",
                "this is a selftest bug: report it with the fingerprint",
            )
        )
    else:
        checks.append(
            Check("fingerprint.schema", PASS, f"fingerprint valid against schema {document['schema_version']}")
        )
    document = assemble()
    out_path = _write(document, out_path, fallback=opts.out is None, checks=checks)
    if checks[-1].id == "fingerprint.write":
        document = assemble()
        if out_path:  # written to the fallback place: record that in the file too
            fingerprint.write(document, out_path)
    return ProbeOutcome(document=document, out_path=out_path, exit_code=document["exit_code"])
