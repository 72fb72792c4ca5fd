"""Validate the CUDA stack: versions against the image's labels, GPU visibility,
driver, architecture coverage, device health and environment flags.

Every check says what is wrong and what to do; a broken environment becomes a
failed check, never a traceback.  The pure helpers at the top take plain
values so they can be tested without torch or a GPU.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from . import nvml as nvml_mod
from .check import FAIL, PASS, SKIP, WARN, Check
from .imageinfo import (
    LABEL_CUDA,
    LABEL_CUDNN,
    LABEL_NCCL,
    LABEL_PYTHON,
    LABEL_TORCH,
    LABEL_TRITON,
    ImageInfo,
)

# Oldest Linux driver each CUDA toolkit release needs (CUDA release notes, table 3).
MIN_DRIVER_FOR_CUDA = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

GPU_REMEDY = (
    "run the container with `--gpus all` on a host with the NVIDIA driver and the NVIDIA "
    "Container Toolkit installed (`docker run --rm --gpus all IMAGE selftest`)"
)


def driver_remedy(cuda: Optional[str]) -> str:
    need = MIN_DRIVER_FOR_CUDA.get(cuda or "")
    if need:
        return (
            f"upgrade the host NVIDIA driver to >= {need} (needed by CUDA {cuda}), "
            "or use an image variant built for an older CUDA"
        )
    return "upgrade the host NVIDIA driver, or use an image variant built for an older CUDA"


# ----------------------------------------------------------------- version text


def public_version(version: Optional[str]) -> Optional[str]:
    """'2.8.0+cu128' -> '2.8.0': the local part names the build, not the release."""
    if version is None:
        return None
    return str(version).split("+", 1)[0]


def cudnn_version_text(code: Optional[int]) -> Optional[str]:
    """torch.backends.cudnn.version(): 91002 -> '9.10.2' (cuDNN 9), 8902 -> '8.9.2' (cuDNN 8)."""
    if not isinstance(code, int) or code <= 0:
        return None
    if code >= 10000:
        return f"{code // 10000}.{(code // 100) % 100}.{code % 100}"
    return f"{code // 1000}.{(code // 100) % 10}.{code % 100}"


def nccl_version_text(value: Any) -> Optional[str]:
    """torch.cuda.nccl.version(): a tuple (2, 27, 3) or an int (22703, or 2708 before 2.9)."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return ".".join(str(int(p)) for p in value[:3])
    if isinstance(value, int):
        if value >= 10000:
            return f"{value // 10000}.{(value // 100) % 100}.{value % 100}"
        return f"{value // 1000}.{(value // 100) % 10}.{value % 100}"
    return str(value)


def first_parts(version: str, n: int) -> str:
    return ".".join(version.split(".")[:n])


def version_check(
    check_id: str, what: str, found: Optional[str], image: ImageInfo, label: str, parts: int, remedy: str
) -> Check:
    """Compare a found version with the image's label on the first ``parts`` parts."""
    if found is None:
        if image.inside_image and label in image.labels:
            return Check(check_id, FAIL, f"{what} version not found (image label says {image.labels[label]})", remedy)
        return Check(check_id, SKIP, f"{what} version not found")
    if not image.inside_image:
        return Check(check_id, SKIP, f"{what} {found} (no image labels to compare with)")
    expected = image.labels.get(label)
    if expected is None:
        return Check(check_id, SKIP, f"{what} {found}; the image has no label {label}")
    if first_parts(found, parts) == first_parts(expected, parts):
        return Check(check_id, PASS, f"{what} {found} matches image label {expected}")
    return Check(check_id, FAIL, f"{what} {found} differs from image label {label}={expected}", remedy)


# ------------------------------------------------------- torch's CUDA warnings

# (pattern in torch's warning, status, message, remedy)
CUDA_WARNING_RULES: tuple[tuple[str, str, str, Optional[str]], ...] = (
    (r"too old", FAIL, "the NVIDIA driver is too old for this torch build", None),
    (r"Found no NVIDIA driver", WARN, "no NVIDIA driver visible inside this environment", GPU_REMEDY),
    (
        r"Error 804|forward compatibility was attempted",
        FAIL,
        "CUDA forward-compatibility libraries do not support this GPU",
        "remove the cuda-compat libraries from LD_LIBRARY_PATH, or upgrade the host driver",
    ),
    (
        r"Error 802|system not yet initialized",
        FAIL,
        "CUDA reports 'system not yet initialized' (NVSwitch systems need the fabric manager)",
        "start nvidia-fabricmanager on the host (same version as the driver) and retry",
    ),
    (
        r"Error 803|unsupported display driver / cuda driver combination",
        FAIL,
        "the CUDA user-mode driver does not match the kernel driver",
        "make the container's libcuda come from the host driver "
        "(use the NVIDIA Container Toolkit, not a baked-in libcuda)",
    ),
    (
        r"Error 999|unknown error",
        FAIL,
        "CUDA initialisation failed with an unknown error",
        "check `nvidia-smi` on the host; a driver reload or reboot is often needed",
    ),
    (
        r"CUDA initialization|cudaGetDeviceCount",
        FAIL,
        "CUDA initialisation failed",
        "check `nvidia-smi` on the host and the container's GPU options",
    ),
)


def interpret_cuda_warnings(messages: list[str], torch_cuda: Optional[str]) -> Optional[tuple[str, str, str]]:
    """First known problem in torch's CUDA warnings as (status, message, remedy)."""
    for text in messages:
        for pattern, status, message, remedy in CUDA_WARNING_RULES:
            if re.search(pattern, text, flags=re.IGNORECASE):
                found = re.search(r"found version (\d+)", text)
                if found:
                    code = int(found.group(1))
                    message += f" (driver supports CUDA {code // 1000}.{(code % 1000) // 10}, torch needs {torch_cuda})"
                detail = " ".join(text.split())[:300]
                return status, f"{message}: {detail}", remedy or driver_remedy(torch_cuda)
    return None


# ---------------------------------------------------------------- driver check


def parse_major_minor(version: Optional[str]) -> Optional[tuple[int, int]]:
    if not version:
        return None
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def libcuda_info(
    loader: Callable[[str], Any] = ctypes.CDLL, maps_text: Optional[str] = None
) -> dict:
    """The CUDA version of the libcuda this process loads (cuDriverGetVersion), and its file.

    NVML reports what the kernel driver supports.  With NVIDIA's forward
    compatibility package (cuda-compat) on the library path, the user-mode
    libcuda is newer than that, and it is libcuda that torch talks to.
    cuDriverGetVersion needs no cuInit, so reading it costs nothing.
    """
    info: dict = {"libcuda_cuda_version": None, "libcuda_cuda_version_code": None, "libcuda_path": None}
    try:
        lib = loader("libcuda.so.1")
        code = ctypes.c_int(0)
        status = lib.cuDriverGetVersion(ctypes.byref(code))
    except (OSError, AttributeError):
        return info
    if status != 0 or code.value <= 0:
        return info
    info["libcuda_cuda_version_code"] = code.value
    info["libcuda_cuda_version"] = nvml_mod.cuda_version_text(code.value)
    if maps_text is None:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
                maps_text = fh.read()
        except OSError:
            maps_text = ""
    for line in maps_text.splitlines():
        path = line.split()[-1] if line.split() else ""
        if "/libcuda.so" in path:
            info["libcuda_path"] = path
            break
    return info


def driver_check(
    driver_version: Optional[str],
    cuda_driver: Optional[str],
    torch_cuda: Optional[str],
    libcuda_cuda: Optional[str] = None,
) -> Check:
    """The driver must support at least the CUDA version torch was built with.

    ``cuda_driver`` is what NVML says the kernel driver supports;
    ``libcuda_cuda`` what the loaded libcuda says (cuDriverGetVersion).  When
    libcuda is newer, the forward-compatibility libraries are in use and they
    decide.  Within one major version CUDA's minor-version compatibility lets a
    newer runtime run on an older driver, minus features that need the newer
    driver (and PTX JIT), so that is a warning; an older major version is a failure.
    """
    kernel = parse_major_minor(cuda_driver)
    library = parse_major_minor(libcuda_cuda)
    need = parse_major_minor(torch_cuda)
    forward = kernel is not None and library is not None and library > kernel
    have = library if forward else kernel
    label = f"driver {driver_version or '?'} (supports CUDA {cuda_driver or '?'})"
    if forward:
        label = (
            f"forward compatibility active: libcuda supports CUDA {libcuda_cuda} "
            f"on kernel driver {driver_version or '?'} (CUDA {cuda_driver})"
        )
    if have is None or need is None:
        return Check("nvml.driver", SKIP, f"{label}; torch CUDA {torch_cuda or 'none'}: nothing to compare")
    if have >= need:
        return Check("nvml.driver", PASS, f"{label} >= torch CUDA {torch_cuda}")
    if have[0] == need[0]:
        return Check(
            "nvml.driver",
            WARN,
            f"{label} is older than torch CUDA {torch_cuda}: runs through minor-version compatibility, "
            "features that need a newer driver (and PTX JIT) will fail",
            driver_remedy(torch_cuda),
        )
    return Check("nvml.driver", FAIL, f"{label} is too old for torch CUDA {torch_cuda}", driver_remedy(torch_cuda))


# ------------------------------------------------------------------ arch check

_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)([a-z]?)$")


def arch_check(index: int, name: str, capability: tuple[int, int], arch_list: list[str]) -> Check:
    """Is there a kernel image for this GPU in the torch build?"""
    major, minor = capability
    sm = f"sm_{major}{minor}"
    cid = f"gpu.{index}.arch"
    parsed = []
    for arch in arch_list:
        m = _ARCH.match(arch)
        if m:
            parsed.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)))
    if sm in arch_list:
        return Check(cid, PASS, f"{name}: {sm} is in the torch build's arch list")
    # Binary code for sm_XY runs on sm_XZ with Z >= Y (same major; not the 'a'/'f' variants).
    same_major = [
        f"sm_{mj}{mn}" for kind, mj, mn, sfx in parsed if kind == "sm" and mj == major and mn < minor and not sfx
    ]
    if same_major:
        return Check(cid, PASS, f"{name}: {sm} runs the build's {same_major[-1]} kernels (same major version)")
    ptx = [
        f"compute_{mj}{mn}"
        for kind, mj, mn, sfx in parsed
        if kind == "compute" and (mj, mn) <= (major, minor) and not sfx
    ]
    if ptx:
        return Check(
            cid,
            WARN,
            f"{name}: no {sm} binary in this torch build, only PTX ({ptx[-1]}) that is JIT-compiled at first use",
            "expect a slow first start; prefer an image whose torch build lists this GPU's architecture",
        )
    return Check(
        cid,
        FAIL,
        f"{name}: no kernel image for {sm} in this torch build (arch list: {' '.join(arch_list) or 'empty'})",
        f"use an image whose torch build includes {sm} in torch.cuda.get_arch_list() "
        "(newer GPUs need newer CUDA builds: Blackwell needs CUDA >= 12.8)",
    )


# ---------------------------------------------------------------- health check

RETIRED_PAGES_WARN = 48  # NVIDIA's guidance treats ~60 retired pages as time for service


def health_check(device: Mapping[str, Any], under_test: bool = True) -> Check:
    """ECC, retired pages, remapped rows and throttling of one NVML device.

    A fault FAILs the run only on the GPU the workload runs on; on the others
    (another tenant's, or one CUDA_VISIBLE_DEVICES hides) it is a warning.
    """
    check = _health_check(device)
    if under_test or check.status != FAIL:
        return check
    return Check(check.id, WARN, f"{check.message} (not under test: warning only)", check.remedy)


def health_checks(devices: list[Mapping[str, Any]], under_test: Optional[int]) -> list[Check]:
    """One health check per NVML device, and the deployment check of the one under test."""
    checks = [health_check(d, under_test is not None and d.get("index") == under_test) for d in devices]
    checks += [config_check(d) for d in devices if under_test is not None and d.get("index") == under_test]
    return checks


def config_check(device: Mapping[str, Any]) -> Check:
    """How the GPU under test is deployed (DCGM level-1 style): what would skew or slow the numbers.

    Other processes on the GPU share its SMs and memory bandwidth; an enforced
    power limit below the default caps clocks; a PCIe link narrower than the
    GPU's maximum is a seating or riser fault.  (A PCIe generation below the
    maximum is normal at idle: the link trains down to save power.)  Without
    persistence mode the driver tears the GPU's state down whenever no process
    holds it, so every start pays for its initialisation again.
    """
    idx = device.get("index")
    name = device.get("name") or f"GPU {idx}"
    problems, remedies = [], []
    procs = device.get("compute_processes")
    if procs:
        used = sum(p.get("used_memory_bytes") or 0 for p in procs)
        problems.append(f"{len(procs)} other process(es) on the GPU ({used / 2**30:.1f} GiB)")
        remedies.append("run the probe on an idle GPU (`nvidia-smi` lists the processes)")
    enforced, default = device.get("power_limit_w"), device.get("power_limit_default_w")
    if enforced and default and enforced < default * 0.99:
        problems.append(f"power limit {enforced:.0f} W below the default {default:.0f} W")
        remedies.append("expect lower clocks under load; the limit is the host's setting")
    width, width_max = device.get("pcie_link_width_current"), device.get("pcie_link_width_max")
    if width and width_max and width < width_max:
        problems.append(f"PCIe link x{width} of x{width_max}")
        remedies.append("reseat the GPU or check its riser (`nvidia-smi -q -d PCIE`)")
    if device.get("persistence_mode") is False:
        problems.append("persistence mode off")
        remedies.append("the host enables it with the nvidia-persistenced service")

    def show(key: str, fmt: str = "{}") -> str:
        value = device.get(key)
        return "n/a" if value is None else fmt.format(value)

    facts = (
        f"PCIe gen {show('pcie_link_gen_current')}/{show('pcie_link_gen_max')} "
        f"x{show('pcie_link_width_current')}/{show('pcie_link_width_max')}, "
        f"persistence {'on' if device.get('persistence_mode') else 'off' if device.get('persistence_mode') is False else 'n/a'}, "
        f"power limit {show('power_limit_w', '{:.0f}')} W (default {show('power_limit_default_w', '{:.0f}')} W), "
        f"{'no' if procs == [] else 'n/a' if procs is None else len(procs)} other process(es), "
        f"MIG {'on' if device.get('mig_enabled') else 'off' if device.get('mig_enabled') is False else 'n/a'}"
    )
    cid = f"gpu.{idx}.config"
    if problems:
        return Check(cid, WARN, f"{name}: {'; '.join(problems)} ({facts})", "; ".join(remedies))
    return Check(cid, PASS, f"{name}: {facts}")


def _health_check(device: Mapping[str, Any]) -> Check:
    idx = device.get("index")
    name = device.get("name") or f"GPU {idx}"
    cid = f"gpu.{idx}.health"
    unc = device.get("ecc_uncorrected_volatile")
    if unc:
        return Check(
            cid,
            FAIL,
            f"{name}: {unc} uncorrectable ECC error(s) since the driver was loaded",
            "drain this node and reset the GPU (`nvidia-smi -r`) or reboot; if errors recur the GPU needs service",
        )
    if device.get("remapped_rows_failure"):
        return Check(cid, FAIL, f"{name}: memory row remapping failed", "the GPU needs service (RMA)")
    problems = []
    remedies = []
    if device.get("remapped_rows_pending"):
        problems.append("row remapping pending")
        remedies.append("reset the GPU (`nvidia-smi -r`) or reboot to apply the remapping")
    if device.get("retired_pages_pending"):
        problems.append("page retirement pending")
        remedies.append("reset the GPU or reboot to retire the pages")
    retired = (device.get("retired_pages_double_bit") or 0) + (device.get("retired_pages_single_bit") or 0)
    if retired >= RETIRED_PAGES_WARN:
        problems.append(f"{retired} retired pages")
        remedies.append("plan service for this GPU")
    harmful = {n for n, is_harmful in nvml_mod.THROTTLE_REASONS.values() if is_harmful}
    bad = [r for r in (device.get("throttle_reasons") or []) if r in harmful]
    if bad:
        problems.append("clocks held down: " + ", ".join(bad))
        remedies.append("check cooling and power (`nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`)")

    def show(key: str) -> str:
        value = device.get(key)
        return "n/a" if value is None else str(value)

    facts = (
        f"ECC {'on' if device.get('ecc_enabled') else 'off' if device.get('ecc_enabled') is False else 'n/a'}, "
        f"uncorrected {show('ecc_uncorrected_volatile')}, retired pages {show('retired_pages_double_bit')} DBE/"
        f"{show('retired_pages_single_bit')} SBE, remapped rows {show('remapped_rows_uncorrectable')} uncorrectable"
    )
    if problems:
        return Check(cid, WARN, f"{name}: {'; '.join(problems)} ({facts})", "; ".join(remedies))
    return Check(cid, PASS, f"{name}: {facts}")


# ------------------------------------------------------------ environment flags


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def _set(value: str) -> bool:
    return value.strip() != ""


def _hides_all(value: str) -> bool:
    return value.strip() in ("", "-1", "none", "NoDevFiles")


def _no_device(value: str) -> bool:
    return value.strip().lower() in ("void", "none")


def _lacks_caps(value: str) -> bool:
    caps = {c.strip() for c in value.split(",")}
    return "all" not in caps and not {"compute", "utility"} <= caps


def _zero(value: str) -> bool:
    return value.strip() == "0"


# (variable, predicate on its value, what it does, remedy)
ENV_FLAGS: tuple[tuple[str, Callable[[str], bool], str, str], ...] = (
    (
        "CUDA_LAUNCH_BLOCKING",
        _truthy,
        "makes every kernel launch synchronous: everything runs slower",
        "unset CUDA_LAUNCH_BLOCKING (use it only while debugging)",
    ),
    (
        "CUDA_INJECTION64_PATH",
        _set,
        "injects a profiler or tool library into every CUDA call",
        "unset CUDA_INJECTION64_PATH unless you are profiling",
    ),
    (
        "NVTX_INJECTION64_PATH",
        _set,
        "injects an NVTX tool library (profiler)",
        "unset NVTX_INJECTION64_PATH unless you are profiling",
    ),
    ("CUDA_PROFILE", _truthy, "enables the legacy CUDA profiler", "unset CUDA_PROFILE"),
    ("COMPUTE_PROFILE", _truthy, "enables the legacy CUDA profiler", "unset COMPUTE_PROFILE"),
    (
        "CUDA_CACHE_DISABLE",
        _truthy,
        "disables the JIT cache: PTX recompiles at every start",
        "unset CUDA_CACHE_DISABLE",
    ),
    (
        "CUDA_FORCE_PTX_JIT",
        _truthy,
        "forces JIT compilation of PTX instead of the shipped binaries",
        "unset CUDA_FORCE_PTX_JIT",
    ),
    (
        "PYTORCH_NO_CUDA_MEMORY_CACHING",
        _truthy,
        "disables PyTorch's caching allocator: every allocation hits the driver",
        "unset PYTORCH_NO_CUDA_MEMORY_CACHING",
    ),
    ("TORCH_USE_CUDA_DSA", _truthy, "compiles in device-side assertions: slower kernels", "unset TORCH_USE_CUDA_DSA"),
    ("NVIDIA_TF32_OVERRIDE", _zero, "disables TF32 tensor cores for fp32 math", "unset NVIDIA_TF32_OVERRIDE"),
    (
        "CUDA_VISIBLE_DEVICES",
        _hides_all,
        "hides every GPU from CUDA",
        "unset CUDA_VISIBLE_DEVICES or list the GPUs to use",
    ),
    (
        "NVIDIA_VISIBLE_DEVICES",
        _no_device,
        "tells the NVIDIA Container Toolkit to expose no GPU",
        "set NVIDIA_VISIBLE_DEVICES=all or pass `--gpus all`",
    ),
    (
        "NVIDIA_DRIVER_CAPABILITIES",
        _lacks_caps,
        "lacks compute and/or utility: CUDA or NVML will be missing",
        "set NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    ),
)


def env_flag_checks(environ: Mapping[str, str]) -> tuple[list[Check], dict]:
    """One warning per variable known to break or slow CUDA; a pass when none is set."""
    checks, flagged = [], {}
    for var, predicate, effect, remedy in ENV_FLAGS:
        if var in environ and predicate(environ[var]):
            flagged[var] = environ[var]
            checks.append(Check(f"env.{var}", WARN, f"{var}={environ[var]!r} {effect}", remedy))
    if not checks:
        checks.append(Check("env.flags", PASS, "no environment variable known to break or slow CUDA is set"))
    return checks, flagged


SHM_MIN_BYTES = 1 << 30  # below this, DataLoader workers (which pass batches through /dev/shm) die


def shm_check(path: str = "/dev/shm", statvfs: Callable[[str], Any] = os.statvfs) -> Check:
    """Docker gives a container 64 MB of /dev/shm unless told otherwise: enough to start, not to train."""
    try:
        st = statvfs(path)
    except OSError as exc:
        return Check("host.shm", WARN, f"cannot read {path}: {exc.strerror or exc}",
                     "run the container with --shm-size=8g (or --ipc=host)")
    size = st.f_blocks * st.f_frsize
    if size < SHM_MIN_BYTES:
        return Check("host.shm", WARN,
                     f"{path} is {size / 2**20:.0f} MiB: DataLoader workers (num_workers > 0) fail with "
                     f"'bus error' or 'unable to write to file </torch_...>' below 1 GiB",
                     "run the container with --shm-size=8g (or --ipc=host); on Kubernetes mount an emptyDir "
                     "with medium: Memory at /dev/shm")
    return Check("host.shm", PASS, f"{path} is {size / 2**30:.1f} GiB")


# ---------------------------------------------------------------- the run


@dataclass
class Validation:
    """What validate found: checks plus the facts the rest of the probe needs."""

    checks: list[Check] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    driver: dict = field(default_factory=dict)
    nvml_devices: list[dict] = field(default_factory=list)
    torch_devices: list[dict] = field(default_factory=list)
    env_flags: dict = field(default_factory=dict)
    torch_ok: bool = False
    gpu_usable: bool = False
    nvml: Any = None
    nvml_index: Optional[int] = None
    nvml_note: Optional[str] = None
    nvml_match: Optional[str] = None

    def add(self, check: Check) -> None:
        self.checks.append(check)


def _package_version(dist: str) -> Optional[str]:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _import_torch(result: Validation) -> Any:
    """Import torch, turning import errors and import-time warnings into a check."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import torch  # noqa: PLC0415 - lazily: the probe must run without torch
        except Exception as exc:  # ImportError, OSError for a missing libcudnn...
            result.add(
                Check(
                    "torch.import",
                    FAIL,
                    f"cannot import torch: {type(exc).__name__}: {exc}",
                    "install torch (inside the image the venv is broken: rebuild or re-pull the image)",
                )
            )
            return None
    # Only warnings meant for users (not deprecation notices inside torch's own code).
    notes = [
        str(w.message).splitlines()[0]
        for w in caught
        if issubclass(w.category, (UserWarning, RuntimeWarning)) and str(w.message).strip()
    ]
    if notes:
        result.add(
            Check(
                "torch.import",
                WARN,
                f"torch {torch.__version__} imported with warnings: {'; '.join(notes)[:300]}",
                "check that numpy and torch versions match the image's lock file",
            )
        )
    else:
        result.add(Check("torch.import", PASS, f"torch {torch.__version__} from {os.path.dirname(torch.__file__)}"))
    return torch


def _versions(result: Validation, torch: Any) -> None:
    v = result.versions
    v["python"] = platform.python_version()
    v["torch"] = getattr(torch, "__version__", None) if torch else None
    v["torch_cuda"] = getattr(torch.version, "cuda", None) if torch else None
    v["cudnn"] = None
    v["nccl"] = None
    if torch is not None:
        try:
            v["cudnn"] = cudnn_version_text(torch.backends.cudnn.version())
        except Exception:
            pass
        try:
            v["nccl"] = nccl_version_text(torch.cuda.nccl.version())
        except Exception:
            pass
    v["triton"] = _package_version("triton")
    v["numpy"] = _package_version("numpy")
    v["nvidia_ml_py"] = _package_version("nvidia-ml-py")
    v["jsonschema"] = _package_version("jsonschema")


# (check id, distribution name = label suffix, key in Validation.versions)
PACKAGE_LABELS = (
    ("numpy.version", "numpy", "numpy"),
    ("nvidia_ml_py.version", "nvidia-ml-py", "nvidia_ml_py"),
    ("jsonschema.version", "jsonschema", "jsonschema"),
)


def _version_checks(result: Validation, image: ImageInfo, torch: Any) -> None:
    rebuild_env = "this image's Python environment was modified: re-pull or rebuild the image"
    v = result.versions
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    result.add(
        version_check(
            "python.version",
            "Python",
            py,
            image,
            LABEL_PYTHON,
            2,
            "the image's venv uses another Python: rebuild the image",
        )
    )
    if torch is None:
        for cid in ("torch.version", "cuda.version", "cudnn.version", "nccl.version"):
            result.add(Check(cid, SKIP, "torch is not importable"))
    else:
        result.add(
            version_check("torch.version", "torch", public_version(v["torch"]), image, LABEL_TORCH, 3, rebuild_env)
        )
        if v["torch_cuda"] is None:
            status = FAIL if image.inside_image and LABEL_CUDA in image.labels else WARN
            result.add(
                Check(
                    "cuda.version",
                    status,
                    "torch is a CPU-only build (torch.version.cuda is None)",
                    "install a CUDA build of torch (e.g. the +cu128 wheel)",
                )
            )
        else:
            result.add(version_check("cuda.version", "torch CUDA", v["torch_cuda"], image, LABEL_CUDA, 2, rebuild_env))
        result.add(version_check("cudnn.version", "cuDNN", v["cudnn"], image, LABEL_CUDNN, 3, rebuild_env))
        result.add(version_check("nccl.version", "NCCL", v["nccl"], image, LABEL_NCCL, 3, rebuild_env))
    result.add(
        version_check(
            "triton.version",
            "Triton",
            v["triton"],
            image,
            LABEL_TRITON,
            3,
            "reinstall the triton version pinned for this torch release",
        )
    )
    # The probe's own dependencies, checked only when the image labels them.
    for check_id, what, key in PACKAGE_LABELS:
        label = f"pytorch-cuda.{what}"
        if image.inside_image and label in image.labels:
            result.add(version_check(check_id, what, v.get(key), image, label, 3, rebuild_env))


def _nvml_checks(
    result: Validation, image: ImageInfo, loader: Callable[[], Any], libcuda_reader: Callable[[], dict]
) -> None:
    try:
        nv = loader()
    except nvml_mod.NvmlUnavailable as exc:
        # NVML is telemetry and health, not compute: missing it is a warning.  It is
        # a failure only inside an image that should ship nvidia-ml-py.
        status = FAIL if (exc.missing_package and image.inside_image) else WARN
        result.add(Check("nvml", status, exc.message, exc.remedy))
        result.nvml_note = exc.message
        return
    result.nvml = nv
    try:
        result.driver = nvml_mod.system_info(nv)
        result.driver.update(libcuda_reader())
        result.nvml_devices = nvml_mod.all_devices(nv)
    except nvml_mod.GpuLost as exc:
        result.add(
            Check(
                "nvml", FAIL, f"a GPU has fallen off the bus: {exc}", "drain the node; reset the GPU or reboot the host"
            )
        )
        return
    except Exception as exc:
        result.add(Check("nvml", WARN, f"NVML query failed: {exc}", "check `nvidia-smi` in this environment"))
        return
    names = ", ".join(d.get("name") or "?" for d in result.nvml_devices) or "none"
    result.add(
        Check(
            "nvml",
            PASS,
            f"NVML: driver {result.driver.get('driver_version')}, {len(result.nvml_devices)} device(s): {names}",
        )
    )
    result.add(
        driver_check(
            result.driver.get("driver_version"),
            result.driver.get("cuda_driver_version"),
            result.versions.get("torch_cuda"),
            result.driver.get("libcuda_cuda_version"),
        )
    )


def _torch_device_props(torch: Any, index: int) -> dict:
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    pci = None
    if hasattr(props, "pci_bus_id"):  # NVML's form: domain:bus:device.function
        domain, device = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
        pci = f"{domain:08x}:{props.pci_bus_id:02x}:{device:02x}.0"
    return {
        "index": index,
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_total_bytes": int(props.total_memory),
        "multiprocessors": int(props.multi_processor_count),
        "uuid": str(uuid) if uuid is not None else None,
        "pci_bus_id": pci,
    }


def _cuda_checks(result: Validation, torch: Any, require_gpu: bool, environ: Mapping[str, str]) -> None:
    torch_cuda = result.versions.get("torch_cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            available = bool(torch.cuda.is_available())
            count = int(torch.cuda.device_count()) if available else 0
        except Exception as exc:  # very broken installs raise here
            available, count = False, 0
            raised = [str(exc)]
        else:
            raised = []
    messages = [str(w.message) for w in caught] + raised
    problem = interpret_cuda_warnings(messages, torch_cuda)
    missing_status = FAIL if require_gpu else WARN
    if available and count > 0:
        try:
            for i in range(count):
                result.torch_devices.append(_torch_device_props(torch, i))
            names = ", ".join(d["name"] for d in result.torch_devices)
        except Exception as exc:
            result.add(
                Check(
                    "cuda.available",
                    FAIL,
                    f"CUDA reports {count} device(s) but cannot describe them: {exc}",
                    "check `nvidia-smi` and the driver",
                )
            )
            return
        result.add(Check("cuda.available", PASS, f"{count} CUDA device(s): {names}"))
    elif problem and problem[0] == FAIL:
        result.add(Check("cuda.available", FAIL, problem[1], problem[2]))
        return
    elif torch_cuda is None:
        result.add(
            Check(
                "cuda.available",
                missing_status,
                "no GPU: this torch build has no CUDA support",
                "install a CUDA build of torch" if require_gpu else None,
            )
        )
        return
    elif _hides_all(environ.get("CUDA_VISIBLE_DEVICES", "x")):
        result.add(
            Check(
                "cuda.available",
                missing_status,
                f"no GPU visible: CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r} hides them",
                "unset CUDA_VISIBLE_DEVICES or list the GPUs to use",
            )
        )
        return
    elif result.nvml_devices:
        result.add(
            Check(
                "cuda.available",
                FAIL,
                f"NVML sees {len(result.nvml_devices)} GPU(s) but CUDA sees none"
                + (f": {problem[1]}" if problem else ""),
                "give the container the compute capability (NVIDIA_DRIVER_CAPABILITIES=compute,utility) and check "
                "that the driver supports this CUDA version; " + driver_remedy(torch_cuda),
            )
        )
        return
    else:
        message = (
            problem[1] if problem else "no GPU visible to CUDA" + ("" if require_gpu else ": running the CPU path")
        )
        result.add(Check("cuda.available", missing_status, message, GPU_REMEDY))
        return

    # A device that enumerates can still fail on first use (no kernel image, ECC, MIG misconfiguration).
    try:
        x = torch.ones(1024, device="cuda:0")
        value = float((x * 2).sum().item())
        if value != 2048.0:
            raise RuntimeError(f"1024 x 2 summed to {value}")
        result.add(Check("cuda.init", PASS, "a kernel ran on cuda:0 and returned the right answer"))
        result.gpu_usable = True
    except Exception as exc:
        result.add(
            Check(
                "cuda.init",
                FAIL,
                f"first kernel on cuda:0 failed: {' '.join(str(exc).split())[:300]}",
                "check the driver (`nvidia-smi`) and that this torch build supports the GPU",
            )
        )
    try:
        arch_list = list(torch.cuda.get_arch_list())
    except Exception:
        arch_list = []
    for dev in result.torch_devices:
        major, minor = (int(p) for p in dev["compute_capability"].split("."))
        result.add(arch_check(dev["index"], dev["name"], (major, minor), arch_list))
    if result.torch_devices and result.nvml_devices:
        first = result.torch_devices[0]
        result.nvml_index, how = nvml_mod.match_device(
            result.nvml_devices, first.get("uuid"), first.get("pci_bus_id")
        )
        if result.nvml_index is None:
            result.nvml_note = how
            result.add(Check("nvml.match", WARN, how, "report the GPU's `nvidia-smi -L` output with the fingerprint"))
        else:
            result.nvml_match = how


def run(
    image: ImageInfo,
    require_gpu: bool = False,
    nvml_loader: Callable[[], Any] = nvml_mod.load,
    environ: Optional[Mapping[str, str]] = None,
    libcuda_reader: Callable[[], dict] = libcuda_info,
) -> Validation:
    """All validation checks; never raises for a broken environment."""
    environ = os.environ if environ is None else environ
    result = Validation()
    if image.error:
        result.add(
            Check(
                "image.info",
                FAIL,
                image.error,
                "the image's /etc/pytorch-cuda/image.json is damaged: rebuild the image",
            )
        )
    elif image.inside_image:
        result.add(Check("image.info", PASS, f"inside image {image.tag or '(no version label)'} ({image.path})"))
    else:
        result.add(
            Check("image.info", SKIP, f"not inside a pytorch-cuda image ({image.path} missing): version checks skipped")
        )
    env_checks, result.env_flags = env_flag_checks(environ)
    torch = _import_torch(result)
    result.torch_ok = torch is not None
    _versions(result, torch)
    _version_checks(result, image, torch)
    _nvml_checks(result, image, nvml_loader, libcuda_reader)
    if torch is not None:
        _cuda_checks(result, torch, require_gpu, environ)
    elif require_gpu:
        result.add(Check("cuda.available", FAIL, "no GPU check possible: torch is not importable", "install torch"))
    result.checks.extend(health_checks(result.nvml_devices, result.nvml_index))
    result.checks.extend(env_checks)
    result.add(shm_check())
    return result
