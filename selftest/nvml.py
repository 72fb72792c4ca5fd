"""A thin, forgiving layer over NVML (``pynvml`` from the nvidia-ml-py package).

NVML answers questions torch cannot (driver version, ECC, retired pages,
throttling, power, energy).  It is optional: a missing library or a field a GPU
does not support must never break the probe, so every query returns None on
NVMLError_NotSupported (and similar) and only initialisation errors are turned
into messages with a remedy.

Numeric codes and enum values are NVML's stable C ABI values; using them
directly keeps this module working across nvidia-ml-py releases that rename
the Python-side constants.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

# nvmlReturn_t values
ERROR_UNINITIALIZED = 1
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_DRIVER_NOT_LOADED = 9
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_FUNCTION_NOT_FOUND = 13
ERROR_GPU_IS_LOST = 15
ERROR_LIB_RM_VERSION_MISMATCH = 18
ERROR_UNKNOWN = 999

# enum values used in queries
CLOCK_SM = 1
CLOCK_MEM = 2
TEMPERATURE_GPU = 0
MEMORY_ERROR_TYPE_UNCORRECTED = 1
VOLATILE_ECC = 0
AGGREGATE_ECC = 1
PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT = 0
PAGE_RETIREMENT_CAUSE_DOUBLE_BIT = 1

# Clock-event ("throttle") reason bits, and whether each one means trouble.
THROTTLE_REASONS = {
    0x001: ("gpu_idle", False),
    0x002: ("applications_clocks_setting", False),
    0x004: ("sw_power_cap", False),
    0x008: ("hw_slowdown", True),
    0x010: ("sync_boost", False),
    0x020: ("sw_thermal_slowdown", True),
    0x040: ("hw_thermal_slowdown", True),
    0x080: ("hw_power_brake_slowdown", True),
    0x100: ("display_clock_setting", False),
}

NVML_NOT_VISIBLE = "NVML not visible: run with `--gpus all` and `NVIDIA_DRIVER_CAPABILITIES` including utility"


class NvmlUnavailable(Exception):
    """NVML cannot be used at all; carries a message and a remedy for the user."""

    def __init__(self, message: str, remedy: str, code: Optional[int] = None, missing_package: bool = False):
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.code = code
        self.missing_package = missing_package


class GpuLost(Exception):
    """NVML reports that a GPU fell off the bus: a hardware or driver fault."""


def error_code(exc: BaseException) -> Optional[int]:
    """NVML's return code carried by an NVMLError (None for other exceptions)."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def describe_init_error(exc: BaseException) -> NvmlUnavailable:
    """Turn an nvmlInit failure into what is wrong and what to do."""
    code = error_code(exc)
    if code == ERROR_LIBRARY_NOT_FOUND:
        return NvmlUnavailable(
            NVML_NOT_VISIBLE,
            "start the container with `--gpus all` (NVIDIA Container Toolkit on the host) and "
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility; on a bare host, install the NVIDIA driver "
            "(libnvidia-ml.so.1)",
            code,
        )
    if code == ERROR_DRIVER_NOT_LOADED:
        return NvmlUnavailable(
            "NVIDIA kernel driver is not loaded",
            "load the driver on the host (`nvidia-smi` must work there), then restart the container",
            code,
        )
    if code == ERROR_NO_PERMISSION:
        return NvmlUnavailable(
            "no permission to open the NVIDIA device files",
            "run the container with `--gpus all` rather than mounting /dev/nvidia* by hand, "
            "or add the user to the group owning /dev/nvidia*",
            code,
        )
    if code == ERROR_LIB_RM_VERSION_MISMATCH:
        return NvmlUnavailable(
            "NVML library and kernel driver versions differ (driver upgraded without reboot?)",
            "reboot the host or reload the nvidia kernel modules",
            code,
        )
    return NvmlUnavailable(
        f"NVML initialisation failed: {exc}",
        "check that `nvidia-smi` works on the host and in the container",
        code,
    )


def load() -> Any:
    """Import pynvml and initialise NVML; raises NvmlUnavailable with a remedy."""
    try:
        import pynvml  # noqa: PLC0415 - optional dependency, imported lazily on purpose
    except ImportError:
        raise NvmlUnavailable(
            "pynvml is not installed (Python package nvidia-ml-py)",
            "pip install nvidia-ml-py",
            missing_package=True,
        ) from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses; be liberal
        raise describe_init_error(exc) from None
    return pynvml


def shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


_ABSENT = object()  # the function exists neither in pynvml nor in the driver's libnvidia-ml


def _call(nvml: Any, function: str, *args: Any) -> Any:
    """Like :func:`query`, but ``_ABSENT`` when the function is missing from pynvml or the driver."""
    fn: Optional[Callable[..., Any]] = getattr(nvml, function, None)
    if fn is None:
        return _ABSENT
    try:
        return fn(*args)
    except Exception as exc:
        code = error_code(exc)
        if code == ERROR_GPU_IS_LOST:
            raise GpuLost(str(exc)) from None
        if code == ERROR_FUNCTION_NOT_FOUND:
            return _ABSENT
        return None


def query(nvml: Any, function: str, *args: Any) -> Any:
    """Call an NVML function; None when unsupported, not permitted or absent.

    NotSupported is the normal answer for many fields on many GPUs (ECC on
    consumer boards, energy before Volta...), so it becomes null in the
    fingerprint instead of an error.  A lost GPU is the exception: it raises.
    """
    value = _call(nvml, function, *args)
    return None if value is _ABSENT else value


def query_first(nvml: Any, functions: tuple[str, ...], *args: Any) -> Any:
    """The answer of the first spelling that both pynvml and the driver have.

    pynvml may carry a function (``..._v2``, ``...ClocksEventReasons``) that an
    older driver's libnvidia-ml lacks: the call then fails with
    FUNCTION_NOT_FOUND and the older spelling must be tried.  Any other answer,
    NotSupported included, is the GPU's answer and ends the search.
    """
    for name in functions:
        value = _call(nvml, name, *args)
        if value is not _ABSENT:
            return value
    return None


def text(value: Any) -> Optional[str]:
    """Older pynvml returns bytes, newer returns str."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def cuda_version_text(code: Optional[int]) -> Optional[str]:
    """12080 -> '12.8' (NVML encodes major * 1000 + minor * 10)."""
    if not isinstance(code, int) or code <= 0:
        return None
    return f"{code // 1000}.{(code % 1000) // 10}"


def throttle_reason_names(mask: Optional[int]) -> Optional[list[str]]:
    if mask is None:
        return None
    return [name for bit, (name, _) in sorted(THROTTLE_REASONS.items()) if mask & bit]


def harmful_throttle_reasons(mask: Optional[int]) -> list[str]:
    if mask is None:
        return []
    return [name for bit, (name, bad) in sorted(THROTTLE_REASONS.items()) if bad and mask & bit]


def system_info(nvml: Any) -> dict:
    """Driver version and the newest CUDA version the driver supports."""
    cuda_code = query_first(nvml, ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"))
    return {
        "driver_version": text(query(nvml, "nvmlSystemGetDriverVersion")),
        "cuda_driver_version": cuda_version_text(cuda_code),
        "cuda_driver_version_code": cuda_code if isinstance(cuda_code, int) else None,
    }


def _mw_to_w(value: Any) -> Optional[float]:
    return None if value is None else float(value) / 1000.0


def _attr(obj: Any, name: str) -> Any:
    return None if obj is None else getattr(obj, name, None)


def throttle_mask(nvml: Any, handle: Any) -> Optional[int]:
    return query_first(
        nvml,
        ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
        handle,
    )


def device_info(nvml: Any, index: int) -> dict:
    """Identity, capacity and health of one device; unsupported fields are None."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    cc = query(nvml, "nvmlDeviceGetCudaComputeCapability", handle)
    mem = query(nvml, "nvmlDeviceGetMemoryInfo", handle)
    pci = query(nvml, "nvmlDeviceGetPciInfo", handle)
    ecc = query(nvml, "nvmlDeviceGetEccMode", handle)
    remapped = query(nvml, "nvmlDeviceGetRemappedRows", handle)
    retired_dbe = query(nvml, "nvmlDeviceGetRetiredPages", handle, PAGE_RETIREMENT_CAUSE_DOUBLE_BIT)
    retired_sbe = query(nvml, "nvmlDeviceGetRetiredPages", handle, PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT)
    retired_pending = query(nvml, "nvmlDeviceGetRetiredPagesPendingStatus", handle)
    mask = throttle_mask(nvml, handle)
    return {
        "index": index,
        "name": text(query(nvml, "nvmlDeviceGetName", handle)),
        "uuid": text(query(nvml, "nvmlDeviceGetUUID", handle)),
        "pci_bus_id": text(_attr(pci, "busId")),
        "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
        "memory_total_bytes": _attr(mem, "total"),
        "memory_used_bytes": _attr(mem, "used"),
        "sm_clock_mhz": query(nvml, "nvmlDeviceGetClockInfo", handle, CLOCK_SM),
        "mem_clock_mhz": query(nvml, "nvmlDeviceGetClockInfo", handle, CLOCK_MEM),
        "sm_clock_max_mhz": query(nvml, "nvmlDeviceGetMaxClockInfo", handle, CLOCK_SM),
        "mem_clock_max_mhz": query(nvml, "nvmlDeviceGetMaxClockInfo", handle, CLOCK_MEM),
        "power_limit_w": _mw_to_w(
            query_first(nvml, ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit"), handle)
        ),
        "temperature_c": query(nvml, "nvmlDeviceGetTemperature", handle, TEMPERATURE_GPU),
        "ecc_enabled": bool(ecc[0]) if ecc else None,
        "ecc_uncorrected_volatile": query(
            nvml, "nvmlDeviceGetTotalEccErrors", handle, MEMORY_ERROR_TYPE_UNCORRECTED, VOLATILE_ECC
        ),
        "ecc_uncorrected_aggregate": query(
            nvml, "nvmlDeviceGetTotalEccErrors", handle, MEMORY_ERROR_TYPE_UNCORRECTED, AGGREGATE_ECC
        ),
        "retired_pages_double_bit": len(retired_dbe) if retired_dbe is not None else None,
        "retired_pages_single_bit": len(retired_sbe) if retired_sbe is not None else None,
        "retired_pages_pending": bool(retired_pending) if retired_pending is not None else None,
        "remapped_rows_correctable": remapped[0] if remapped else None,
        "remapped_rows_uncorrectable": remapped[1] if remapped else None,
        "remapped_rows_pending": bool(remapped[2]) if remapped else None,
        "remapped_rows_failure": bool(remapped[3]) if remapped else None,
        "throttle_reasons": throttle_reason_names(mask),
    }


def all_devices(nvml: Any) -> list[dict]:
    count = query(nvml, "nvmlDeviceGetCount") or 0
    return [device_info(nvml, i) for i in range(count)]


def match_device(
    devices: list[dict], uuid: Optional[str], pci_bus_id: Optional[str]
) -> tuple[Optional[int], str]:
    """(NVML index of the device torch runs on, how it was matched) or (None, why not).

    torch's device 0 is not necessarily NVML's 0 (CUDA_VISIBLE_DEVICES, device
    ordering), so match on UUID, then PCI bus id.  When neither matches, NVML's
    only device is still the right one, but among several a guess would read
    another GPU's power, clocks and energy (another tenant's, perhaps): none.
    """

    def norm_uuid(u: Optional[str]) -> Optional[str]:
        if not u:
            return None
        u = u.lower()
        return u[4:] if u.startswith("gpu-") else u

    want = norm_uuid(uuid)
    if want:
        for d in devices:
            if norm_uuid(d.get("uuid")) == want:
                return d["index"], "uuid"
    if pci_bus_id:
        tail = pci_bus_id.lower()[-7:]  # "bb:dd.f" is common to the 8- and 4-digit domain forms
        for d in devices:
            if d.get("pci_bus_id") and d["pci_bus_id"].lower().endswith(tail):
                return d["index"], "pci_bus_id"
    if not devices:
        return None, "no NVML device to match CUDA device 0 with: no telemetry"
    if len(devices) == 1:
        return devices[0]["index"], "the only NVML device (UUID and PCI bus id did not match)"
    return None, (
        f"CUDA device 0 (UUID {uuid or '?'}, PCI {pci_bus_id or '?'}) matches none of {len(devices)} "
        "NVML devices: no telemetry or energy rather than another GPU's"
    )


@dataclass
class Sample:
    t: float
    utilization_gpu: Optional[int]
    utilization_memory: Optional[int]
    memory_used: Optional[int]
    power_w: Optional[float]
    temperature_c: Optional[int]
    sm_clock_mhz: Optional[int]


class TelemetrySampler:
    """Samples one GPU in a background thread while the workload runs.

    Energy comes from the device's total-energy counter (a delta, exact) when it
    exists, else from integrating sampled power (an estimate, labelled so).
    """

    def __init__(self, nvml: Any, index: int, interval_s: float = 0.1):
        self.nvml = nvml
        self.index = index
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.phases: dict[str, dict] = {}
        self._open: dict[str, tuple[float, Optional[int]]] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0
        self._t1 = 0.0
        self._energy0: Optional[int] = None
        self._energy1: Optional[int] = None
        self.before: dict = {}
        self.after: dict = {}
        self.error: Optional[str] = None

    def energy_mj(self) -> Optional[int]:
        return query(self.nvml, "nvmlDeviceGetTotalEnergyConsumption", self.handle)

    def snapshot(self) -> dict:
        """Clocks, temperature and throttle reasons at one instant."""
        mask = throttle_mask(self.nvml, self.handle)
        return {
            "sm_clock_mhz": query(self.nvml, "nvmlDeviceGetClockInfo", self.handle, CLOCK_SM),
            "mem_clock_mhz": query(self.nvml, "nvmlDeviceGetClockInfo", self.handle, CLOCK_MEM),
            "temperature_c": query(self.nvml, "nvmlDeviceGetTemperature", self.handle, TEMPERATURE_GPU),
            "power_w": _mw_to_w(query(self.nvml, "nvmlDeviceGetPowerUsage", self.handle)),
            "throttle_reasons": throttle_reason_names(mask),
            "throttle_mask": mask,
        }

    def _sample(self) -> Sample:
        util = query(self.nvml, "nvmlDeviceGetUtilizationRates", self.handle)
        mem = query(self.nvml, "nvmlDeviceGetMemoryInfo", self.handle)
        return Sample(
            t=time.perf_counter(),
            utilization_gpu=_attr(util, "gpu"),
            utilization_memory=_attr(util, "memory"),
            memory_used=_attr(mem, "used"),
            power_w=_mw_to_w(query(self.nvml, "nvmlDeviceGetPowerUsage", self.handle)),
            temperature_c=query(self.nvml, "nvmlDeviceGetTemperature", self.handle, TEMPERATURE_GPU),
            sm_clock_mhz=query(self.nvml, "nvmlDeviceGetClockInfo", self.handle, CLOCK_SM),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._sample())
            except Exception as exc:  # a sampler must never take the probe down
                self.error = str(exc)
                return
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self.before = self.snapshot()
        self._energy0 = self.energy_mj()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="selftest-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._t1 = time.perf_counter()
        self._energy1 = self.energy_mj()
        self.after = self.snapshot()

    def begin_phase(self, name: str) -> None:
        """Mark the start of a timed phase (call after synchronising the device)."""
        self._open[name] = (time.perf_counter(), self.energy_mj())

    def end_phase(self, name: str, tokens: int) -> None:
        """Close a phase: its energy and joules per token."""
        t0, e0 = self._open.pop(name)
        t1, e1 = time.perf_counter(), self.energy_mj()
        energy_j, method = None, None
        if e0 is not None and e1 is not None and e1 >= e0:
            energy_j, method = (e1 - e0) / 1000.0, "counter"
        else:
            mean_w = self._mean_power(t0, t1)
            if mean_w is not None:
                energy_j, method = mean_w * (t1 - t0), "power_samples"
        self.phases[name] = {
            "seconds": t1 - t0,
            "tokens": tokens,
            "energy_j": energy_j,
            "energy_method": method,
            "joules_per_token": energy_j / tokens if energy_j is not None and tokens else None,
        }

    def _mean_power(self, t0: float, t1: float) -> Optional[float]:
        inside = [s.power_w for s in self.samples if t0 <= s.t <= t1 and s.power_w is not None]
        if not inside:  # phase shorter than the sampling interval: take the nearest sample
            near = [s for s in self.samples if s.power_w is not None]
            if not near:
                return None
            mid = (t0 + t1) / 2
            inside = [min(near, key=lambda s: abs(s.t - mid)).power_w]
        return sum(inside) / len(inside)

    def summary(self) -> dict:
        """Telemetry section of the fingerprint."""

        def agg(values: list, *, integer: bool = False) -> Optional[dict]:
            vals = [v for v in values if v is not None]
            if not vals:
                return None
            mean = sum(vals) / len(vals)
            return {"mean": mean, "max": max(vals)} if not integer else {"mean": mean, "max": int(max(vals))}

        duration = max(self._t1 - self._t0, 0.0)
        energy_j, method = None, None
        if self._energy0 is not None and self._energy1 is not None and self._energy1 >= self._energy0:
            energy_j, method = (self._energy1 - self._energy0) / 1000.0, "counter"
        else:
            mean_w = agg([s.power_w for s in self.samples])
            if mean_w is not None:
                energy_j, method = mean_w["mean"] * duration, "power_samples"
        mem = [s.memory_used for s in self.samples if s.memory_used is not None]
        return {
            "available": True,
            "note": self.error,
            "nvml_index": self.index,
            "interval_s": self.interval_s,
            "samples": len(self.samples),
            "duration_s": duration,
            "utilization_gpu_pct": agg([s.utilization_gpu for s in self.samples]),
            "utilization_memory_pct": agg([s.utilization_memory for s in self.samples]),
            "memory_used_bytes_max": max(mem) if mem else None,
            "power_w": agg([s.power_w for s in self.samples]),
            "temperature_c": agg([s.temperature_c for s in self.samples]),
            "sm_clock_mhz": agg([s.sm_clock_mhz for s in self.samples]),
            "energy_j": energy_j,
            "energy_method": method,
            "before": self.before,
            "after": self.after,
            "phases": self.phases,
        }


class NullTelemetry:
    """Stands in for the sampler on the CPU path or when NVML is missing."""

    def __init__(self, note: str):
        self.note = note
        self.phases: dict[str, dict] = {}
        self._open: dict[str, float] = {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def begin_phase(self, name: str) -> None:
        self._open[name] = time.perf_counter()

    def end_phase(self, name: str, tokens: int) -> None:
        t0 = self._open.pop(name)
        self.phases[name] = {
            "seconds": time.perf_counter() - t0,
            "tokens": tokens,
            "energy_j": None,
            "energy_method": None,
            "joules_per_token": None,
        }

    def summary(self) -> dict:
        return {"available": False, "note": self.note, "phases": self.phases}
