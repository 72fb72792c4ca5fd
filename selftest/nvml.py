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

EVENT_TYPE_XID_CRITICAL_ERROR = 0x8

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
    mig = query(nvml, "nvmlDeviceGetMigMode", handle)
    persistence = query(nvml, "nvmlDeviceGetPersistenceMode", handle)
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
        "mig_enabled": bool(mig[0]) if mig else None,
        # DCGM level-1 style deployment facts
        "power_limit_default_w": _mw_to_w(query(nvml, "nvmlDeviceGetPowerManagementDefaultLimit", handle)),
        "persistence_mode": bool(persistence) if persistence is not None else None,
        "pcie_link_gen_current": query(nvml, "nvmlDeviceGetCurrPcieLinkGeneration", handle),
        "pcie_link_gen_max": query_first(
            nvml, ("nvmlDeviceGetGpuMaxPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkGeneration"), handle
        ),
        "pcie_link_width_current": query(nvml, "nvmlDeviceGetCurrPcieLinkWidth", handle),
        "pcie_link_width_max": query(nvml, "nvmlDeviceGetMaxPcieLinkWidth", handle),
        "compute_processes": compute_processes(nvml, handle),
    }


def compute_processes(nvml: Any, handle: Any) -> Optional[list[dict]]:
    """Processes holding a CUDA context on the GPU: their work would share (and skew) the measurements."""
    procs = query_first(
        nvml, ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"), handle
    )
    if procs is None:
        return None
    out = []
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        out.append({"pid": getattr(p, "pid", None), "used_memory_bytes": used if isinstance(used, int) else None})
    return out


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


# NVML's total-energy counter (millijoules) is refreshed every 20-100 ms depending
# on the GPU, so a delta over a shorter window may be 0 or one refresh off: energy
# is measured over windows of at least this length, or reported as null.
MIN_ENERGY_WINDOW_S = 1.0
# Power samples integrate to an energy only with enough of them in the window.
MIN_POWER_SAMPLES = 5

MIG_ENERGY_NOTE = (
    "MIG slice: NVML's power and energy are the parent GPU's, the work of every MIG tenant, not this run's"
)


def window_energy(
    e0_mj: Optional[int],
    e1_mj: Optional[int],
    seconds: float,
    power_w: list[float],
    blocked: Optional[str] = None,
    min_window_s: float = MIN_ENERGY_WINDOW_S,
) -> tuple[Optional[float], Optional[str], Optional[str]]:
    """(joules, method, why null) for one window; never 0 J for a window in which work ran.

    The counter's delta is exact over a long enough window; an unchanged or
    decreasing counter measured nothing.  Without a counter, the mean of the
    power samples in the window times its length is an estimate.
    """
    if blocked:
        return None, None, blocked
    if seconds < min_window_s:
        return None, None, (
            f"window {seconds:.3f} s is shorter than {min_window_s:g} s: NVML's energy counter "
            "updates every 20-100 ms, too coarse for it"
        )
    counter_note = None
    if e0_mj is not None and e1_mj is not None:
        if e1_mj > e0_mj:
            return (e1_mj - e0_mj) / 1000.0, "counter", None
        counter_note = (
            f"energy counter did not advance over {seconds:.2f} s of work"
            if e1_mj == e0_mj
            else "energy counter went backwards (driver reload or GPU reset?)"
        )
    if len(power_w) >= MIN_POWER_SAMPLES:
        return sum(power_w) / len(power_w) * seconds, "power_samples", counter_note
    return None, None, counter_note or (
        f"no energy counter and {len(power_w)} power sample(s) in the window (fewer than {MIN_POWER_SAMPLES})"
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
    throttle_mask: Optional[int] = None


def _agg(values: list, *, integer: bool = False) -> Optional[dict]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    if integer:
        return {"mean": mean, "min": int(min(vals)), "max": int(max(vals))}
    return {"mean": mean, "min": min(vals), "max": max(vals)}


class TelemetrySampler:
    """Samples one GPU in a background thread while the workload runs.

    Energy comes from the device's total-energy counter (a delta, exact over a
    window of at least MIN_ENERGY_WINDOW_S) when it exists, else from
    integrating sampled power (an estimate, labelled so).  Throttle reasons are
    read with every sample, since after the workload the GPU is idle and its
    clocks are free again.  ``energy_blocked`` names why energy must not be
    reported at all (a MIG slice).
    """

    def __init__(
        self,
        nvml: Any,
        index: int,
        interval_s: float = 0.1,
        energy_blocked: Optional[str] = None,
        clock: Callable[[], float] = time.perf_counter,
        matched_by: Optional[str] = None,
    ):
        self.nvml = nvml
        self.index = index
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.interval_s = interval_s
        self.energy_blocked = energy_blocked
        self.clock = clock
        self.matched_by = matched_by
        self.samples: list[Sample] = []
        self.phases: dict[str, dict] = {}
        self._open: dict[str, tuple[float, Optional[int]]] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0
        self._t1 = 0.0
        self._energy0: Optional[int] = None
        self._energy1: Optional[int] = None
        self.throttle_seen = 0
        self.xid_events: Optional[list[int]] = None
        self.xid_note: Optional[str] = None
        self._event_set: Any = None
        self.before: dict = {}
        self.after: dict = {}
        self.error: Optional[str] = None

    @property
    def measures_energy(self) -> bool:
        """Whether a long energy window is worth running (a counter or power readings, and no MIG)."""
        if self.energy_blocked:
            return False
        return self.energy_mj() is not None or query(self.nvml, "nvmlDeviceGetPowerUsage", self.handle) is not None

    def energy_mj(self) -> Optional[int]:
        return query(self.nvml, "nvmlDeviceGetTotalEnergyConsumption", self.handle)

    def _throttle(self) -> Optional[int]:
        mask = throttle_mask(self.nvml, self.handle)
        if mask is not None:
            self.throttle_seen |= mask
        return mask

    def snapshot(self) -> dict:
        """Clocks, temperature and throttle reasons at one instant."""
        mask = self._throttle()
        return {
            "sm_clock_mhz": query(self.nvml, "nvmlDeviceGetClockInfo", self.handle, CLOCK_SM),
            "mem_clock_mhz": query(self.nvml, "nvmlDeviceGetClockInfo", self.handle, CLOCK_MEM),
            "temperature_c": query(self.nvml, "nvmlDeviceGetTemperature", self.handle, TEMPERATURE_GPU),
            "power_w": _mw_to_w(query(self.nvml, "nvmlDeviceGetPowerUsage", self.handle)),
            "throttle_reasons": throttle_reason_names(mask),
            "throttle_mask": mask,
        }

    def sample_once(self) -> Sample:
        """Read one sample now (the background thread's step; the workload calls it mid-burst too)."""
        util = query(self.nvml, "nvmlDeviceGetUtilizationRates", self.handle)
        mem = query(self.nvml, "nvmlDeviceGetMemoryInfo", self.handle)
        sample = Sample(
            t=self.clock(),
            utilization_gpu=_attr(util, "gpu"),
            utilization_memory=_attr(util, "memory"),
            memory_used=_attr(mem, "used"),
            power_w=_mw_to_w(query(self.nvml, "nvmlDeviceGetPowerUsage", self.handle)),
            temperature_c=query(self.nvml, "nvmlDeviceGetTemperature", self.handle, TEMPERATURE_GPU),
            sm_clock_mhz=query(self.nvml, "nvmlDeviceGetClockInfo", self.handle, CLOCK_SM),
            throttle_mask=self._throttle(),
        )
        self.samples.append(sample)
        return sample

    def _watch_xids(self) -> None:
        """Register for XID critical errors (driver-reported GPU faults) during the run, where NVML allows."""
        try:
            self._event_set = self.nvml.nvmlEventSetCreate()
            self.nvml.nvmlDeviceRegisterEvents(self.handle, EVENT_TYPE_XID_CRITICAL_ERROR, self._event_set)
            self.xid_events = []
        except Exception as exc:
            self._event_set = None
            self.xid_note = f"XID events not available: {' '.join(str(exc).split())[:120]}"

    def poll_xids(self) -> None:
        """Collect XID events that arrived since the last poll (never waits)."""
        if self._event_set is None:
            return
        while True:
            try:
                data = self.nvml.nvmlEventSetWait_v2(self._event_set, 0)
            except Exception:  # NVML_ERROR_TIMEOUT: nothing pending
                return
            self.xid_events.append(int(getattr(data, "eventData", 0)))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
                self.poll_xids()
            except Exception as exc:  # a sampler must never take the probe down
                self.error = str(exc)
                return
            self._stop.wait(self.interval_s)

    def start(self, background: bool = True) -> None:
        self._watch_xids()
        self.before = self.snapshot()
        self._energy0 = self.energy_mj()
        self._t0 = self.clock()
        if background:
            self._thread = threading.Thread(target=self._run, name="selftest-telemetry", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._t1 = self.clock()
        self._energy1 = self.energy_mj()
        self.after = self.snapshot()
        self.poll_xids()
        if self._event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._event_set)
            except Exception:
                pass
            self._event_set = None

    def begin_phase(self, name: str) -> None:
        """Mark the start of a timed phase (call after synchronising the device)."""
        self._open[name] = (self.clock(), self.energy_mj())

    def end_phase(self, name: str, tokens: int) -> None:
        """Close a phase: its energy (over a long enough window) and joules per token."""
        t0, e0 = self._open.pop(name)
        t1, e1 = self.clock(), self.energy_mj()
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        power = [s.power_w for s in inside if s.power_w is not None]
        energy_j, method, note = window_energy(e0, e1, t1 - t0, power, self.energy_blocked)
        self.phases[name] = {
            "seconds": t1 - t0,
            "tokens": tokens,
            "energy_j": energy_j,
            "energy_method": method,
            "energy_note": note,
            "joules_per_token": energy_j / tokens if energy_j is not None and tokens else None,
            "samples": len(inside),
            "power_w": sum(power) / len(power) if power else None,
            "sm_clock_mhz": _agg([s.sm_clock_mhz for s in inside], integer=True),
        }

    def summary(self) -> dict:
        """Telemetry section of the fingerprint."""
        duration = max(self._t1 - self._t0, 0.0)
        power = [s.power_w for s in self.samples if s.power_w is not None]
        energy_j, method, note = window_energy(self._energy0, self._energy1, duration, power, self.energy_blocked)
        mem = [s.memory_used for s in self.samples if s.memory_used is not None]
        return {
            "available": True,
            "note": self.error,
            "nvml_index": self.index,
            "nvml_matched_by": self.matched_by,
            "interval_s": self.interval_s,
            "samples": len(self.samples),
            "duration_s": duration,
            "power_scope": "parent GPU (all MIG tenants)" if self.energy_blocked == MIG_ENERGY_NOTE else "GPU",
            "utilization_gpu_pct": _agg([s.utilization_gpu for s in self.samples], integer=True),
            "utilization_memory_pct": _agg([s.utilization_memory for s in self.samples], integer=True),
            "memory_used_bytes_max": max(mem) if mem else None,
            "power_w": _agg(power),
            "temperature_c": _agg([s.temperature_c for s in self.samples], integer=True),
            "sm_clock_mhz": _agg([s.sm_clock_mhz for s in self.samples], integer=True),
            "energy_j": energy_j,
            "energy_method": method,
            "energy_note": note,
            "min_energy_window_s": MIN_ENERGY_WINDOW_S,
            "xid_events": self.xid_events,
            "xid_note": self.xid_note,
            "throttle_mask_seen": self.throttle_seen,
            "throttle_reasons_seen": throttle_reason_names(self.throttle_seen),
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

    measures_energy = False

    def sample_once(self) -> None:
        pass

    def end_phase(self, name: str, tokens: int) -> None:
        t0 = self._open.pop(name)
        self.phases[name] = {
            "seconds": time.perf_counter() - t0,
            "tokens": tokens,
            "energy_j": None,
            "energy_method": None,
            "energy_note": self.note,
            "joules_per_token": None,
        }

    def summary(self) -> dict:
        return {"available": False, "note": self.note, "phases": self.phases}
