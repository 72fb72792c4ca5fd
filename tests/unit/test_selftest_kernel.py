"""The workload's arithmetic and control flow on the CPU, without torch: fake timers and clocks."""

import pytest

from selftest import kernel, nvml
from selftest.shapes import workload_for


class FakeClock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


class FakeTimer:
    cuda = False

    def __init__(self):
        self.syncs = 0

    def sync(self):
        self.syncs += 1


def test_energy_window_repeats_the_work_until_it_lasts_one_second_fake_clock():
    clock, timer = FakeClock(10.0), FakeTimer()
    started = clock()
    clock.now += 0.09  # the timed repetitions: ten prefills of 9 ms

    def prefill():
        clock.now += 0.009

    extra = kernel.extend_window(timer, prefill, started, nvml.MIN_ENERGY_WINDOW_S, clock=clock)
    assert clock.now - started >= nvml.MIN_ENERGY_WINDOW_S
    assert clock.now - started < nvml.MIN_ENERGY_WINDOW_S + 0.009  # stops as soon as the window is long enough
    assert extra == timer.syncs == 102  # (1.0 - 0.09) / 0.009 rounded up: every call synchronised


def test_energy_window_of_zero_adds_no_work_fake_clock():
    clock = FakeClock()
    assert kernel.extend_window(FakeTimer(), lambda: None, clock(), 0.0, clock=clock) == 0


def test_energy_window_stops_at_max_calls_when_the_work_takes_no_time_fake_clock():
    clock = FakeClock()
    assert kernel.extend_window(FakeTimer(), lambda: None, clock(), 1.0, max_calls=7, clock=clock) == 7


def test_full_gpu_workload_stretches_energy_windows_past_nvml_minimum_and_quick_does_not():
    assert workload_for("gpu", quick=False).energy_window_s >= nvml.MIN_ENERGY_WINDOW_S
    assert workload_for("gpu", quick=True).energy_window_s == 0.0


@pytest.mark.parametrize("mode,quick", [("cpu", False), ("cpu", True)])
def test_cpu_workloads_have_no_energy_window(mode, quick):
    assert workload_for(mode, quick).energy_window_s == 0.0


# ---------------------------------------------------------------- fake torch for the copy check


class FakeTensor:
    """A float32 vector as a Python list: enough of torch.Tensor for measure_copy."""

    def __init__(self, values):
        self.values = list(values)

    def copy_(self, src):
        self.values[:] = src.values
        return self

    def fill_(self, value):
        self.values = [value] * len(self.values)
        return self

    def __getitem__(self, index):
        return FakeTensor(self.values[index])


class FakeCopyTorch:
    """torch for measure_copy; ``broken`` makes copy_ write only the second half of the buffer."""

    float32 = "float32"

    def __init__(self, broken=False):
        self.broken = broken

    def arange(self, count, device=None, dtype=None):
        return FakeTensor(float(i) for i in range(count))

    def empty_like(self, t):
        tensor = FakeTensor([0.0] * len(t.values))
        if self.broken:
            def half_copy(src):  # a copy that drops the first half (a bad DMA, say)
                half = len(src.values) // 2
                tensor.values[half:] = src.values[half:]
                return tensor

            tensor.copy_ = half_copy
        return tensor

    def mul(self, a, scalar, out):
        out.values[:] = [v * scalar for v in a.values]
        return out

    def equal(self, a, b):
        return a.values == b.values


class StepTimer(FakeTimer):
    """Every timed call takes ``seconds``."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def warmup(self, fn, iters, seconds=0.0):
        for _ in range(iters):
            fn()

    def time_each(self, fn, iters):
        for _ in range(iters):
            fn()
        return [self.seconds] * iters


def test_copy_check_compares_the_whole_buffer_fake_torch():
    """A copy that corrupts the first half must fail, not only one whose last 4,096 floats differ."""
    w = workload_for("cpu", quick=True)
    nbytes = 4 * 4 * 4096  # 16,384 floats: the corrupted half lies outside the last 4,096
    good, check = kernel.measure_copy(FakeCopyTorch(), StepTimer(1e-3), "cpu", nbytes, w)
    assert check.status == "pass" and good["correct"] and "every element" in check.message
    bad, check = kernel.measure_copy(FakeCopyTorch(broken=True), StepTimer(1e-3), "cpu", nbytes, w)
    assert check.status == "fail" and not bad["correct"]
    assert bad["methods"]["copy_"]["correct"] is False and bad["methods"]["sm_kernel"]["correct"] is True


def test_copy_reports_read_plus_write_and_the_nvbandwidth_convention_fake_torch():
    w = workload_for("cpu", quick=True)
    result, _ = kernel.measure_copy(FakeCopyTorch(), StepTimer(2e-3), "cpu", 4 * 1024, w)
    # 4 KiB read + 4 KiB written in 2 ms
    assert result["gb_per_s"]["median"] == pytest.approx(2 * 4096 / 2e-3 / 1e9)
    assert result["gb_per_s_bytes_once"] == pytest.approx(4096 / 2e-3 / 1e9)
    assert result["bytes_counted"] == "read + write"
    assert set(result["methods"]) == {"copy_", "sm_kernel"} and result["method"] in result["methods"]


# ---------------------------------------------------------------- fake device properties


MIB = 2**20
GIB = 2**30


class FakeCuda:
    def __init__(self, props, free, total):
        self.props, self.free, self.total = props, free, total

    def get_device_properties(self, index):
        return self.props

    def mem_get_info(self, index):
        return self.free, self.total


class FakeDeviceTorch:
    def __init__(self, name, capability, l2_bytes, free, total):
        props = type("Props", (), {"name": name, "major": capability[0], "minor": capability[1]})()
        if l2_bytes is not None:
            props.L2_cache_size = l2_bytes
        self.cuda = FakeCuda(props, free, total)


def test_gpu_without_bf16_runs_float16_and_says_so_fake_device_properties():
    for name, cc in (("Tesla T4", (7, 5)), ("Tesla V100-SXM2-32GB", (7, 0))):
        setup = kernel.gpu_setup(FakeDeviceTorch(name, cc, 6 * MIB, 14 * GIB, 16 * GIB), 0, 2048 * MIB)
        assert setup.dtype == "float16"
        assert name in setup.dtype_note and "no bf16" in setup.dtype_note
    h200 = kernel.gpu_setup(FakeDeviceTorch("NVIDIA H200", (9, 0), 60 * MIB, 139 * GIB, 140 * GIB), 0, 2048 * MIB)
    assert h200.dtype == "bfloat16" and h200.dtype_note is None


def test_copy_buffer_is_floored_at_16x_l2_fake_device_properties():
    # little free memory: the old rule shrank the buffer to 64 MiB, about an H100's 50 MiB L2
    setup = kernel.gpu_setup(FakeDeviceTorch("NVIDIA H100 80GB HBM3", (9, 0), 50 * MIB, 4 * GIB, 80 * GIB), 0, 2048 * MIB)
    assert setup.copy_bytes == 16 * 50 * MIB and "16x the L2" in setup.copy_note
    # the quick run's 512 MiB buffer is under 16x an H200's 60 MiB L2: raised
    quick = kernel.gpu_setup(FakeDeviceTorch("NVIDIA H200", (9, 0), 60 * MIB, 139 * GIB, 140 * GIB), 0, 512 * MIB)
    assert quick.copy_bytes == 960 * MIB
    # plenty of memory: the workload's size
    full = kernel.gpu_setup(FakeDeviceTorch("NVIDIA H200", (9, 0), 60 * MIB, 139 * GIB, 140 * GIB), 0, 2048 * MIB)
    assert full.copy_bytes == 2048 * MIB and full.copy_note is None


def test_copy_is_skipped_with_a_warning_when_a_large_enough_buffer_does_not_fit_fake_device_properties():
    setup = kernel.gpu_setup(FakeDeviceTorch("NVIDIA H100 80GB HBM3", (9, 0), 50 * MIB, 1 * GIB, 80 * GIB), 0, 2048 * MIB)
    assert setup.copy_bytes is None and "copy skipped" in setup.copy_note and "cache" in setup.copy_note


def test_unknown_l2_size_assumes_a_large_one_fake_device_properties():
    setup = kernel.gpu_setup(FakeDeviceTorch("Some GPU", (9, 0), None, 100 * GIB, 100 * GIB), 0, 512 * MIB)
    assert setup.copy_bytes == kernel.L2_FLOOR_FACTOR * kernel.UNKNOWN_L2_BYTES


@pytest.mark.parametrize("key", ["copy_efficiency_datasheet", "gemm_efficiency_datasheet", "decode_bandwidth_efficiency_datasheet"])
def test_efficiency_above_the_datasheet_fails_the_measurement(key):
    roof = {"datasheet": {"name": "H100 SXM"}, key: 1.12}
    (check,) = kernel.datasheet_checks(roof)
    assert check.status == "fail" and "112%" in check.message and "wrong" in check.message


def test_efficiency_at_or_below_the_datasheet_passes_or_warns():
    roof = {"datasheet": {"name": "H200 SXM"}, "copy_efficiency_datasheet": 0.89, "gemm_efficiency_datasheet": 0.3}
    statuses = {c.id: c.status for c in kernel.datasheet_checks(roof)}
    assert statuses == {"perf.copy": "pass", "perf.gemm": "warn"}


# ---------------------------------------------------------------- GEMM: sweep and sustained rate


class Matrix:
    def __init__(self, rows, cols):
        self.shape = (rows, cols)


class FakeGemmTorch:
    """torch for the GEMM sweep: mm records its shape; the timer makes its time depend on the shape."""

    class Generator:
        def __init__(self, device=None):
            pass

        def manual_seed(self, seed):
            return self

    def __init__(self):
        self.last = None

    def randn(self, rows, cols, generator=None, device=None, dtype=None):
        return Matrix(rows, cols)

    def empty(self, rows, cols, device=None, dtype=None):
        return Matrix(rows, cols)

    def mm(self, a, b, out):
        assert a.shape[1] == b.shape[0] and out.shape == (a.shape[0], b.shape[1])
        self.last = (a.shape[0], b.shape[1], a.shape[1])


class ShapeTimer(FakeTimer):
    """A GPU whose rate is 700 TFLOP/s, except 800 for m = 9216, k = 7168 (a better tile fit)."""

    def __init__(self, torch):
        super().__init__()
        self.torch = torch

    def warmup(self, fn, iters, seconds=0.0):
        fn()

    def time_each(self, fn, iters, during=None):
        fn()
        m, n, k = self.torch.last
        rate = 800e12 if (m, k) == (9216, 7168) else 700e12
        return [2.0 * m * n * k / rate] * iters


def test_gemm_sweep_is_a_grid_around_the_reference_size():
    shapes = kernel.sweep_shapes((7168, 8192, 9216))
    assert len(shapes) == 27 and len(set(shapes)) == 27 and (8192, 8192, 8192) in shapes


def test_gemm_sweep_reports_every_shape_and_the_best_fake_torch():
    torch = FakeGemmTorch()
    sweep = kernel.gemm_sweep(torch, ShapeTimer(torch), "cpu", "bf16", (7168, 8192, 9216), iters=10)
    assert len(sweep["shapes"]) == 27
    assert all(row["tflops"] == pytest.approx(700.0) or row["tflops"] == pytest.approx(800.0) for row in sweep["shapes"])
    assert (sweep["best"]["m"], sweep["best"]["k"]) == (9216, 7168) and sweep["best"]["tflops"] == pytest.approx(800.0)
    assert kernel.gemm_sweep(torch, ShapeTimer(torch), "cpu", "bf16", (), iters=10) is None


class FakeEventClock:
    """A GPU timeline: fn advances it, events stamp it, the host never waits."""

    def __init__(self):
        self.now = 0.0

    def event_class(self):
        clock = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self):
                self.t = clock.now

            def query(self):
                return True

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return (other.t - self.t) * 1000.0

        return Event


def fake_cuda_timer(clock):
    cuda = type("Cuda", (), {"Event": clock.event_class(), "synchronize": staticmethod(lambda: None)})
    torch = type("Torch", (), {"cuda": cuda})
    return kernel.Timer(torch, "cuda:0")


def test_sustained_gemm_holds_the_load_for_at_least_two_seconds_fake_cuda_events():
    clock = FakeEventClock()
    timer = fake_cuda_timer(clock)
    calls = {"n": 0}

    def gemm():  # 1.6 ms each, slowing to 2.0 ms after one second (clocks dropping at the power limit)
        calls["n"] += 1
        clock.now += 0.0016 if clock.now < 1.0 else 0.002

    samples = []
    flops = 2.0 * 8192**3
    result = kernel.gemm_sustained(timer, gemm, flops, 0.0016, 2.0, RecordingTelemetry(samples))
    assert result["seconds"] >= 2.0 and result["seconds"] == pytest.approx(clock.now)
    assert result["iters"] == calls["n"] and result["chunk_iters"] == round(0.1 / 0.0016)
    assert result["tflops"] == pytest.approx(flops * calls["n"] / clock.now / 1e12)
    assert result["tflops_second_half"] == pytest.approx(flops / 0.002 / 1e12, rel=0.02)  # the settled rate
    assert result["chunk_tflops"]["max"] == pytest.approx(flops / 0.0016 / 1e12)
    assert len(samples) >= 10  # clocks were sampled while chunks ran
    assert result["sm_clock_mhz"] == {"mean": 1755.0, "min": 1755, "max": 1755}


def test_sustained_gemm_of_zero_seconds_is_skipped():
    assert kernel.gemm_sustained(None, None, 1.0, 1.0, 0.0, None) is None


class RecordingTelemetry:
    """Telemetry that counts samples and reports a fixed SM clock for a phase."""

    measures_energy = False

    def __init__(self, samples):
        self.samples = samples
        self.phases = {}

    def sample_once(self):
        self.samples.append(1)

    def begin_phase(self, name):
        pass

    def end_phase(self, name, tokens):
        self.phases[name] = {"sm_clock_mhz": {"mean": 1755.0, "min": 1755, "max": 1755}, "power_w": 690.0,
                             "energy_j": None, "energy_note": "x"}


def test_time_each_samples_while_queued_gpu_work_runs_fake_cuda_events():
    clock = FakeEventClock()
    timer = fake_cuda_timer(clock)

    polls = []
    Event = clock.event_class()
    pending = {"n": 2}
    original_query = Event.query

    def query(self):
        if pending["n"]:
            pending["n"] -= 1
            return False
        return original_query(self)

    Event.query = query  # the last event reports unfinished twice, as a GPU still working would
    timer.torch.cuda.Event = Event
    timer.time_each(lambda: None, 5, during=lambda: polls.append(1))
    assert len(polls) == 2


def test_decode_profile_counts_kernels_per_step_and_their_share():
    from selftest.profile import summarize_kernels

    events = [("nvjet_gemm", 50.0)] * 10 + [("rms_norm", 5.0)] * 14 + [("argmax", 36.0)] * 2
    result = summarize_kernels(events, steps=2)
    assert result["per_step"] == 13 and result["us_per_step"] == pytest.approx((500 + 70 + 72) / 2)
    top = {row["name"]: row for row in result["top"]}
    assert top["rms_norm"]["per_step"] == 7 and top["nvjet_gemm"]["share"] == pytest.approx(500 / 642)
    assert [row["name"] for row in result["top"]] == ["nvjet_gemm", "argmax", "rms_norm"]
