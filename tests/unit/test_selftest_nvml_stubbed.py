"""NVML error mapping and health checks with a STUBBED pynvml module.

No machine here can produce a missing NVML library, an old driver, ECC errors
or retired pages on demand, so these tests put a fake ``pynvml`` into
sys.modules.  Every test that does says so in its name (``stubbed_nvml``).
"""

import sys
import types

import pytest

from selftest import nvml, probe, validate
from selftest.check import FAIL, PASS, SKIP, WARN
from selftest.imageinfo import ImageInfo


class FakeNVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return f"fake NVML error {self.value}"


NOT_SUPPORTED = object()  # marker: this field raises NVMLError_NotSupported


def fake_pynvml(init_error=None, driver="570.133.20", cuda_driver=12080, devices=None):
    """A module that looks like pynvml, answering from plain data."""
    devices = devices if devices is not None else [healthy_device()]
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    for name, code in (
        ("NVMLError_NotSupported", 3),
        ("NVMLError_LibraryNotFound", 12),
        ("NVMLError_DriverNotLoaded", 9),
        ("NVMLError_GpuIsLost", 15),
    ):
        setattr(
            m, name, type(name, (FakeNVMLError,), {"__init__": lambda self, c=code: FakeNVMLError.__init__(self, c)})
        )
    m.calls = []

    def init():
        if init_error is not None:
            raise init_error

    m.nvmlInit = init
    m.nvmlShutdown = lambda: None

    def answer(index, key, *extra):
        value = devices[index].get(key, NOT_SUPPORTED)
        if value is NOT_SUPPORTED:
            raise m.NVMLError_NotSupported()
        if isinstance(value, Exception):
            raise value
        return value(*extra) if callable(value) else value

    m.nvmlSystemGetDriverVersion = lambda: driver.encode()  # old pynvml returns bytes
    m.nvmlSystemGetCudaDriverVersion_v2 = lambda: cuda_driver
    m.nvmlDeviceGetCount = lambda: len(devices)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    table = {
        "nvmlDeviceGetName": "name",
        "nvmlDeviceGetUUID": "uuid",
        "nvmlDeviceGetPciInfo": "pci",
        "nvmlDeviceGetCudaComputeCapability": "cc",
        "nvmlDeviceGetMemoryInfo": "mem",
        "nvmlDeviceGetClockInfo": "clock",
        "nvmlDeviceGetMaxClockInfo": "max_clock",
        "nvmlDeviceGetEnforcedPowerLimit": "power_limit",
        "nvmlDeviceGetTemperature": "temp",
        "nvmlDeviceGetEccMode": "ecc_mode",
        "nvmlDeviceGetTotalEccErrors": "ecc_errors",
        "nvmlDeviceGetRetiredPages": "retired",
        "nvmlDeviceGetRetiredPagesPendingStatus": "retired_pending",
        "nvmlDeviceGetRemappedRows": "remapped",
        "nvmlDeviceGetCurrentClocksThrottleReasons": "throttle",
        "nvmlDeviceGetPowerUsage": "power",
        "nvmlDeviceGetTotalEnergyConsumption": "energy",
        "nvmlDeviceGetUtilizationRates": "util",
        "nvmlDeviceGetMigMode": "mig_mode",
    }
    for function, key in table.items():
        setattr(m, function, lambda h, *extra, _k=key: answer(h, _k, *extra))
    return m


def healthy_device(**overrides):
    device = {
        "name": b"NVIDIA H200",
        "uuid": "GPU-0000-1111",
        "pci": types.SimpleNamespace(busId=b"00000000:19:00.0"),
        "cc": (9, 0),
        "mem": types.SimpleNamespace(total=150 * 2**30, used=2**30, free=149 * 2**30),
        "clock": lambda kind: 1980 if kind == nvml.CLOCK_SM else 3201,
        "max_clock": lambda kind: 1980 if kind == nvml.CLOCK_SM else 3201,
        "power_limit": 700000,
        "temp": 35,
        "ecc_mode": (1, 1),
        "ecc_errors": lambda kind, counter: 0,
        "retired": lambda cause: [],
        "retired_pending": 0,
        "remapped": (0, 0, 0, 0),
        "throttle": 0x1,
        "power": 120000,
        "energy": 1_000_000,
        "util": types.SimpleNamespace(gpu=0, memory=0),
    }
    device.update(overrides)
    return device


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)


def install(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def check(result, check_id):
    return next(c for c in result.checks if c.id == check_id)


# ---------------------------------------------------------------- initialisation


def test_stubbed_nvml_library_not_found_says_run_with_gpus_all(monkeypatch):
    m = fake_pynvml()
    install(monkeypatch, fake_pynvml(init_error=m.NVMLError_LibraryNotFound()))
    with pytest.raises(nvml.NvmlUnavailable) as info:
        nvml.load()
    assert info.value.message == (
        "NVML not visible: run with `--gpus all` and `NVIDIA_DRIVER_CAPABILITIES` including utility"
    )
    assert "--gpus all" in info.value.remedy


def test_stubbed_nvml_library_not_found_is_a_warning_not_a_failure(monkeypatch, no_torch):
    m = fake_pynvml()
    install(monkeypatch, fake_pynvml(init_error=m.NVMLError_LibraryNotFound()))
    result = validate.run(ImageInfo(path="/absent"), environ={})
    assert check(result, "nvml").status == WARN
    assert "NVML not visible" in check(result, "nvml").message


def test_stubbed_nvml_driver_not_loaded(monkeypatch):
    m = fake_pynvml()
    install(monkeypatch, fake_pynvml(init_error=m.NVMLError_DriverNotLoaded()))
    with pytest.raises(nvml.NvmlUnavailable) as info:
        nvml.load()
    assert "driver is not loaded" in info.value.message


def test_stubbed_nvml_version_mismatch_after_driver_upgrade():
    err = nvml.describe_init_error(FakeNVMLError(nvml.ERROR_LIB_RM_VERSION_MISMATCH))
    assert "reboot" in err.remedy


def test_missing_pynvml_package_fails_only_inside_an_image(monkeypatch, no_torch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    outside = validate.run(ImageInfo(path="/absent"), environ={})
    assert check(outside, "nvml").status == WARN
    inside = validate.run(ImageInfo(path="/x", found=True, labels={"pytorch-cuda.torch": "2.8.0"}), environ={})
    assert check(inside, "nvml").status == FAIL
    assert "nvidia-ml-py" in check(inside, "nvml").remedy


# ---------------------------------------------------------------- fields


def test_stubbed_nvml_not_supported_fields_are_null_not_failures(monkeypatch, no_torch):
    bare = {"name": "NVIDIA Something", "uuid": "GPU-9"}  # every other query raises NotSupported
    install(monkeypatch, fake_pynvml(devices=[bare]))
    result = validate.run(ImageInfo(path="/absent"), environ={})
    device = result.nvml_devices[0]
    assert device["name"] == "NVIDIA Something"
    for key in (
        "ecc_enabled",
        "ecc_uncorrected_volatile",
        "retired_pages_double_bit",
        "remapped_rows_pending",
        "power_limit_w",
        "compute_capability",
        "memory_total_bytes",
        "throttle_reasons",
        "pci_bus_id",
    ):
        assert device[key] is None, key
    assert check(result, "nvml").status == PASS
    assert check(result, "gpu.0.health").status == PASS
    assert "n/a" in check(result, "gpu.0.health").message


def test_stubbed_nvml_healthy_device_fields(monkeypatch):
    module = install(monkeypatch, fake_pynvml())
    device = nvml.device_info(module, 0)
    assert device["name"] == "NVIDIA H200" and device["pci_bus_id"] == "00000000:19:00.0"
    assert device["compute_capability"] == "9.0" and device["power_limit_w"] == 700.0
    assert device["ecc_enabled"] is True and device["ecc_uncorrected_volatile"] == 0
    assert device["throttle_reasons"] == ["gpu_idle"]
    assert nvml.system_info(module)["cuda_driver_version"] == "12.8"
    assert nvml.system_info(module)["driver_version"] == "570.133.20"


def test_stubbed_nvml_gpu_lost_fails(monkeypatch, no_torch):
    m = fake_pynvml()
    install(monkeypatch, fake_pynvml(devices=[healthy_device(temp=m.NVMLError_GpuIsLost())]))
    result = validate.run(ImageInfo(path="/absent"), environ={})
    assert check(result, "nvml").status == FAIL
    assert "fallen off the bus" in check(result, "nvml").message


# ---------------------------------------------------------------- driver version


@pytest.mark.parametrize("cuda_driver,status", [(12080, PASS), (13000, PASS), (12040, WARN), (11080, FAIL)])
def test_stubbed_nvml_driver_too_old(monkeypatch, cuda_driver, status):
    module = install(monkeypatch, fake_pynvml(cuda_driver=cuda_driver))
    info = nvml.system_info(module)
    result = validate.driver_check(info["driver_version"], info["cuda_driver_version"], "12.8")
    assert result.status == status
    if status != PASS:
        assert "570.26" in result.remedy  # what CUDA 12.8 needs


def test_driver_check_without_cuda_torch_is_skipped():
    assert validate.driver_check("570.1", "12.8", None).status == SKIP


# ---------------------------------------------------------------- health


def test_stubbed_nvml_ecc_uncorrected_errors_fail_the_device_under_test(monkeypatch):
    sick = healthy_device(ecc_errors=lambda kind, counter: 3 if counter == nvml.VOLATILE_ECC else 7)
    module = install(monkeypatch, fake_pynvml(devices=[healthy_device(), sick]))
    devices = nvml.all_devices(module)
    checks = {c.id: c for c in validate.health_checks(devices, under_test=1)}
    assert checks["gpu.0.health"].status == PASS
    bad = checks["gpu.1.health"]
    assert bad.status == FAIL and "3 uncorrectable ECC" in bad.message and "reset" in bad.remedy


def test_stubbed_nvml_ecc_errors_on_a_gpu_not_under_test_warn(monkeypatch):
    """Another tenant's broken GPU must not fail this run: it is reported, as a warning."""
    sick = healthy_device(ecc_errors=lambda kind, counter: 3, remapped=(0, 9, 0, 1))
    module = install(monkeypatch, fake_pynvml(devices=[healthy_device(), sick]))
    checks = {c.id: c for c in validate.health_checks(nvml.all_devices(module), under_test=0)}
    assert checks["gpu.0.health"].status == PASS
    other = checks["gpu.1.health"]
    assert other.status == WARN and "not under test" in other.message and "3 uncorrectable ECC" in other.message


def test_stubbed_nvml_without_a_device_under_test_health_problems_warn(monkeypatch, no_torch):
    sick = healthy_device(ecc_errors=lambda kind, counter: 3 if counter == nvml.VOLATILE_ECC else 7)
    install(monkeypatch, fake_pynvml(devices=[healthy_device(), sick]))
    result = validate.run(ImageInfo(path="/absent"), environ={})
    assert check(result, "gpu.0.health").status == PASS
    assert check(result, "gpu.1.health").status == WARN


def test_stubbed_nvml_retired_pages_pending_warns(monkeypatch, no_torch):
    device = healthy_device(
        retired=lambda cause: [0x1000] if cause == nvml.PAGE_RETIREMENT_CAUSE_DOUBLE_BIT else [], retired_pending=1
    )
    install(monkeypatch, fake_pynvml(devices=[device]))
    result = validate.run(ImageInfo(path="/absent"), environ={})
    health = check(result, "gpu.0.health")
    assert health.status == WARN and "page retirement pending" in health.message
    assert result.nvml_devices[0]["retired_pages_double_bit"] == 1


def test_stubbed_nvml_many_retired_pages_warn(monkeypatch):
    device = healthy_device(retired=lambda cause: list(range(30)))
    module = install(monkeypatch, fake_pynvml(devices=[device]))
    assert validate.health_check(nvml.device_info(module, 0)).status == WARN


def test_stubbed_nvml_remapped_rows(monkeypatch):
    module = install(
        monkeypatch, fake_pynvml(devices=[healthy_device(remapped=(2, 1, 1, 0)), healthy_device(remapped=(0, 5, 0, 1))])
    )
    pending = validate.health_check(nvml.device_info(module, 0))
    failed = validate.health_check(nvml.device_info(module, 1))
    assert pending.status == WARN and "row remapping pending" in pending.message
    assert failed.status == FAIL and "remapping failed" in failed.message


def test_stubbed_nvml_thermal_throttling_warns(monkeypatch):
    module = install(monkeypatch, fake_pynvml(devices=[healthy_device(throttle=0x40 | 0x4)]))
    device = nvml.device_info(module, 0)
    assert device["throttle_reasons"] == ["sw_power_cap", "hw_thermal_slowdown"]
    result = validate.health_check(device)
    assert result.status == WARN and "hw_thermal_slowdown" in result.message


# ---------------------------------------------------------------- telemetry


class FakeClock:
    """perf_counter for the sampler: time passes only when a test says so."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def sampler_for(monkeypatch, clock, **device):
    module = install(monkeypatch, fake_pynvml(devices=[healthy_device(**device)]))
    return nvml.TelemetrySampler(module, 0, interval_s=0.1, clock=clock)


def run_phase(sampler, clock, name, seconds, tokens, samples=10):
    """A phase of ``seconds`` with ``samples`` evenly spaced samples (no background thread)."""
    sampler.begin_phase(name)
    for _ in range(samples):
        clock.advance(seconds / samples)
        sampler.sample_once()
    sampler.end_phase(name, tokens)
    return sampler.phases[name]


def test_stubbed_nvml_telemetry_energy_from_counter(monkeypatch):
    counter = {"mj": 5_000_000}

    def energy():
        counter["mj"] += 250_000  # every read: +250 J
        return counter["mj"]

    clock = FakeClock()
    sampler = sampler_for(
        monkeypatch, clock, energy=energy, power=500000, util=types.SimpleNamespace(gpu=97, memory=60)
    )
    sampler.start(background=False)
    phase = run_phase(sampler, clock, "decode", seconds=1.5, tokens=1000)
    sampler.stop()
    summary = sampler.summary()
    assert phase["energy_method"] == "counter" and phase["energy_note"] is None
    assert phase["energy_j"] == pytest.approx(250.0)
    assert phase["joules_per_token"] == pytest.approx(0.25)
    assert phase["power_w"] == pytest.approx(500.0)
    assert summary["energy_method"] == "counter" and summary["energy_j"] > 0
    assert summary["samples"] >= 1 and summary["power_w"]["max"] == 500.0
    assert summary["utilization_gpu_pct"]["max"] == 97
    assert summary["before"]["throttle_reasons"] == ["gpu_idle"]


def test_stubbed_nvml_telemetry_without_energy_counter_integrates_power(monkeypatch):
    clock = FakeClock()
    sampler = sampler_for(monkeypatch, clock, energy=NOT_SUPPORTED, power=400000)
    sampler.start(background=False)
    phase = run_phase(sampler, clock, "prefill", seconds=1.2, tokens=10)
    assert phase["energy_method"] == "power_samples"
    assert phase["energy_j"] == pytest.approx(400.0 * phase["seconds"])


def test_stubbed_nvml_energy_counter_that_did_not_move_is_not_zero_joules(monkeypatch):
    """The counter updates every 20-100 ms: an unchanged reading is no measurement of 0 J."""
    clock = FakeClock()
    sampler = sampler_for(monkeypatch, clock, energy=7_000_000, power=NOT_SUPPORTED)
    sampler.start(background=False)
    phase = run_phase(sampler, clock, "prefill", seconds=1.5, tokens=4096)
    assert phase["energy_j"] is None and phase["joules_per_token"] is None
    assert "did not advance" in phase["energy_note"]


def test_stubbed_nvml_energy_of_a_window_shorter_than_one_second_is_null_with_the_reason(monkeypatch):
    counter = {"mj": 1_000_000}

    def energy():
        counter["mj"] += 40_000
        return counter["mj"]

    clock = FakeClock()
    sampler = sampler_for(monkeypatch, clock, energy=energy)
    sampler.start(background=False)
    phase = run_phase(sampler, clock, "prefill", seconds=0.08, tokens=40960, samples=1)  # an H200's prefill
    assert phase["energy_j"] is None and phase["joules_per_token"] is None
    assert "shorter than 1 s" in phase["energy_note"]
    assert nvml.MIN_ENERGY_WINDOW_S == 1.0


def test_stubbed_nvml_throttle_reasons_are_sampled_during_the_run(monkeypatch):
    """Thermal slowdown while the GPU works, gone once it idles: the union reports it."""
    state = {"mask": 0x1}
    clock = FakeClock()
    sampler = sampler_for(monkeypatch, clock, throttle=lambda: state["mask"])
    sampler.start(background=False)
    state["mask"] = 0x40 | 0x4  # under load: hw thermal slowdown and the software power cap
    sampler.sample_once()
    state["mask"] = 0x1  # idle again when the workload has ended
    sampler.stop()
    summary = sampler.summary()
    assert summary["after"]["throttle_reasons"] == ["gpu_idle"]
    assert summary["throttle_reasons_seen"] == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    warning = probe._throttle_check(summary)
    assert warning is not None and warning.status == WARN and "hw_thermal_slowdown" in warning.message


def test_stubbed_nvml_mig_slice_reports_no_energy_with_the_reason(monkeypatch):
    """On a MIG slice NVML's power and energy are the whole GPU's: every tenant's work, not this run's."""
    counter = {"mj": 1_000_000}

    def energy():
        counter["mj"] += 500_000
        return counter["mj"]

    module = install(monkeypatch, fake_pynvml(devices=[healthy_device(energy=energy, mig_mode=(1, 1))]))
    devices = nvml.all_devices(module)
    assert devices[0]["mig_enabled"] is True
    validation = validate.Validation(nvml=module, nvml_devices=devices, nvml_index=0)
    sampler = probe._telemetry_for(validation, "gpu")
    clock = FakeClock()
    sampler.clock = clock
    sampler.start(background=False)
    phase = run_phase(sampler, clock, "decode", seconds=2.0, tokens=1000)
    sampler.stop()
    summary = sampler.summary()
    assert phase["energy_j"] is None and "MIG" in phase["energy_note"]
    assert summary["energy_j"] is None and "MIG" in summary["energy_note"]
    assert summary["power_scope"] == "parent GPU (all MIG tenants)"


def test_match_device_by_uuid_then_pci():
    devices = [
        {"index": 0, "uuid": "GPU-aaaa", "pci_bus_id": "00000000:19:00.0"},
        {"index": 1, "uuid": "GPU-bbbb", "pci_bus_id": "00000000:3B:00.0"},
    ]
    assert nvml.match_device(devices, "bbbb", None) == (1, "uuid")
    assert nvml.match_device(devices, None, "0000:3b:00.0") == (1, "pci_bus_id")
    index, reason = nvml.match_device([], "x", None)
    assert index is None and "no NVML device" in reason


def test_stubbed_nvml_unmatched_device_among_several_gives_no_telemetry_with_the_reason(monkeypatch):
    """torch's GPU matches neither UUID nor PCI bus id: NVML device 0 may be another tenant's GPU."""
    module = install(monkeypatch, fake_pynvml(devices=[healthy_device(), healthy_device(uuid="GPU-2222")]))
    devices = nvml.all_devices(module)
    index, reason = nvml.match_device(devices, "GPU-9999", "00000000:AA:00.0")
    assert index is None
    assert "GPU-9999" in reason and "2 NVML devices" in reason
    validation = validate.Validation(nvml=module, nvml_devices=devices, nvml_index=index, nvml_note=reason)
    telemetry = probe._telemetry_for(validation, "gpu")
    summary = telemetry.summary()
    assert summary["available"] is False and summary["note"] == reason


def test_stubbed_nvml_single_unmatched_device_is_used_and_says_so(monkeypatch):
    """One NVML device and one CUDA device: they are the same GPU even when the ids are spelled differently."""
    module = install(monkeypatch, fake_pynvml())
    index, how = nvml.match_device(nvml.all_devices(module), "GPU-9999", None)
    assert index == 0 and "only" in how


# ---------------------------------------------------------------- fallbacks between NVML function names


def test_stubbed_nvml_function_not_found_in_the_driver_falls_back_to_the_older_name(monkeypatch):
    """pynvml has the newer function but the driver's libnvidia-ml lacks it (NVML_ERROR_FUNCTION_NOT_FOUND)."""
    module = install(monkeypatch, fake_pynvml(devices=[healthy_device(throttle=0x40)]))

    def missing_in_driver(*args):
        raise FakeNVMLError(nvml.ERROR_FUNCTION_NOT_FOUND)

    module.nvmlSystemGetCudaDriverVersion_v2 = missing_in_driver
    module.nvmlSystemGetCudaDriverVersion = lambda: 12040
    module.nvmlDeviceGetCurrentClocksEventReasons = missing_in_driver
    assert nvml.system_info(module)["cuda_driver_version"] == "12.4"
    assert nvml.device_info(module, 0)["throttle_reasons"] == ["hw_thermal_slowdown"]


def test_stubbed_nvml_not_supported_is_an_answer_not_a_reason_to_try_the_next_name(monkeypatch):
    module = install(monkeypatch, fake_pynvml())
    calls = []

    def not_supported():
        calls.append("v2")
        raise module.NVMLError_NotSupported()

    module.nvmlSystemGetCudaDriverVersion_v2 = not_supported
    module.nvmlSystemGetCudaDriverVersion = lambda: calls.append("v1") or 12040
    assert nvml.system_info(module)["cuda_driver_version"] is None
    assert calls == ["v2"]


# ---------------------------------------------------------------- forward compatibility (cuda-compat)


class FakeLibcuda:
    """Stands in for ctypes.CDLL('libcuda.so.1'): cuDriverGetVersion writes ``version``."""

    def __init__(self, version, status=0):
        self.version, self.status = version, status

    def cuDriverGetVersion(self, pointer):  # noqa: N802 - the CUDA driver API's name
        pointer._obj.value = self.version
        return self.status


def test_stubbed_libcuda_driver_version_is_read_with_cuDriverGetVersion():
    info = validate.libcuda_info(loader=lambda name: FakeLibcuda(12080), maps_text="7f00 r-xp /usr/local/cuda/compat/libcuda.so.570.1\n")
    assert info == {
        "libcuda_cuda_version": "12.8",
        "libcuda_cuda_version_code": 12080,
        "libcuda_path": "/usr/local/cuda/compat/libcuda.so.570.1",
    }
    assert validate.libcuda_info(loader=lambda name: FakeLibcuda(12080, status=100))["libcuda_cuda_version"] is None

    def no_library(name):
        raise OSError("libcuda.so.1: cannot open shared object file")

    assert validate.libcuda_info(loader=no_library)["libcuda_cuda_version"] is None


def test_stubbed_nvml_forward_compat_libcuda_newer_than_the_kernel_driver_is_reported_not_warned(monkeypatch):
    """Kernel driver 535 (CUDA 12.2) with the cuda-compat 12.8 libcuda: torch cu128 runs, no warning is due."""
    module = install(monkeypatch, fake_pynvml(driver="535.183.01", cuda_driver=12020))
    info = nvml.system_info(module)
    info.update(validate.libcuda_info(loader=lambda name: FakeLibcuda(12080), maps_text=""))
    result = validate.driver_check(
        info["driver_version"], info["cuda_driver_version"], "12.8", info["libcuda_cuda_version"]
    )
    assert result.status == PASS and "forward compatibility active" in result.message
    assert "12.2" in result.message and "12.8" in result.message
    # without the compat libraries the same kernel driver is too old for a 12.8 runtime: a warning, as before
    assert validate.driver_check(info["driver_version"], "12.2", "12.8", "12.2").status == WARN
    assert validate.driver_check(info["driver_version"], "12.2", "12.8", None).status == WARN


# ---------------------------------------------------------------- DCGM level-1 style facts


def deployed_device(**overrides):
    facts = dict(
        power_limit_default=700000,
        persistence=1,
        pcie_gen=5,
        pcie_gen_max=5,
        pcie_width=16,
        pcie_width_max=16,
        processes=[],
    )
    facts.update(overrides)
    return healthy_device(**facts)


def install_deployment(monkeypatch, *devices):
    module = fake_pynvml(devices=list(devices))
    for function, key in {
        "nvmlDeviceGetPowerManagementDefaultLimit": "power_limit_default",
        "nvmlDeviceGetPersistenceMode": "persistence",
        "nvmlDeviceGetCurrPcieLinkGeneration": "pcie_gen",
        "nvmlDeviceGetMaxPcieLinkGeneration": "pcie_gen_max",
        "nvmlDeviceGetCurrPcieLinkWidth": "pcie_width",
        "nvmlDeviceGetMaxPcieLinkWidth": "pcie_width_max",
        "nvmlDeviceGetComputeRunningProcesses": "processes",
    }.items():
        setattr(module, function, lambda h, _k=key: devices[h][_k])
    return install(monkeypatch, module)


def test_stubbed_nvml_deployment_facts_are_in_the_device_record(monkeypatch):
    module = install_deployment(monkeypatch, deployed_device(pcie_gen=1))  # idle link trained down: normal
    device = nvml.device_info(module, 0)
    assert device["pcie_link_gen_current"] == 1 and device["pcie_link_gen_max"] == 5
    assert device["pcie_link_width_current"] == 16 and device["persistence_mode"] is True
    assert device["power_limit_w"] == 700.0 and device["power_limit_default_w"] == 700.0
    assert device["compute_processes"] == []
    check = validate.config_check(device)
    assert check.status == PASS and "PCIe gen 1/5 x16/16" in check.message and "no other process" in check.message


def test_stubbed_nvml_deployment_problems_warn_on_the_gpu_under_test(monkeypatch):
    other = types.SimpleNamespace(pid=4242, usedGpuMemory=8 * 2**30)
    module = install_deployment(
        monkeypatch,
        deployed_device(power_limit=500000, persistence=0, pcie_width=8, processes=[other]),
    )
    check = validate.config_check(nvml.device_info(module, 0))
    assert check.status == WARN
    for text in ("1 other process(es) on the GPU (8.0 GiB)", "power limit 500 W below the default 700 W",
                 "PCIe link x8 of x16", "persistence mode off"):
        assert text in check.message
    ids = [c.id for c in validate.health_checks([nvml.device_info(module, 0)], under_test=0)]
    assert ids == ["gpu.0.health", "gpu.0.config"]
    assert [c.id for c in validate.health_checks([nvml.device_info(module, 0)], under_test=None)] == ["gpu.0.health"]


def test_stubbed_nvml_xid_events_during_the_run_are_reported(monkeypatch):
    module = install(monkeypatch, fake_pynvml())
    pending = [types.SimpleNamespace(eventData=79)]
    module.nvmlEventSetCreate = lambda: "set"
    module.nvmlDeviceRegisterEvents = lambda handle, kind, event_set: None
    module.nvmlEventSetFree = lambda event_set: None

    def wait(event_set, timeout_ms):
        if pending:
            return pending.pop()
        raise FakeNVMLError(10)  # NVML_ERROR_TIMEOUT: nothing pending

    module.nvmlEventSetWait_v2 = wait
    sampler = nvml.TelemetrySampler(module, 0, clock=FakeClock())
    sampler.start(background=False)
    sampler.stop()
    summary = sampler.summary()
    assert summary["xid_events"] == [79] and summary["xid_note"] is None
    check = probe._xid_check(summary)
    assert check.status == FAIL and "79" in check.message


def test_stubbed_nvml_without_xid_events_says_why(monkeypatch):
    module = install(monkeypatch, fake_pynvml())  # the fake has no nvmlEventSetCreate
    sampler = nvml.TelemetrySampler(module, 0, clock=FakeClock())
    sampler.start(background=False)
    sampler.stop()
    summary = sampler.summary()
    assert summary["xid_events"] is None and "not available" in summary["xid_note"]
    assert probe._xid_check(summary) is None
