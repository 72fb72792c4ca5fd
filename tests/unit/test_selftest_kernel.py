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


def test_energy_window_repeats_the_work_until_it_lasts_one_second():
    clock, timer = FakeClock(10.0), FakeTimer()
    started = clock()
    clock.now += 0.09  # the timed repetitions: ten prefills of 9 ms

    def prefill():
        clock.now += 0.009

    extra = kernel.extend_window(timer, prefill, started, nvml.MIN_ENERGY_WINDOW_S, clock=clock)
    assert clock.now - started >= nvml.MIN_ENERGY_WINDOW_S
    assert clock.now - started < nvml.MIN_ENERGY_WINDOW_S + 0.009  # stops as soon as the window is long enough
    assert extra == timer.syncs == 102  # (1.0 - 0.09) / 0.009 rounded up: every call synchronised


def test_energy_window_of_zero_adds_no_work():
    clock = FakeClock()
    assert kernel.extend_window(FakeTimer(), lambda: None, clock(), 0.0, clock=clock) == 0


def test_energy_window_stops_at_max_calls_when_the_work_takes_no_time():
    clock = FakeClock()
    assert kernel.extend_window(FakeTimer(), lambda: None, clock(), 1.0, max_calls=7, clock=clock) == 7


def test_full_gpu_workload_stretches_energy_windows_past_nvml_minimum_and_quick_does_not():
    assert workload_for("gpu", quick=False).energy_window_s >= nvml.MIN_ENERGY_WINDOW_S
    assert workload_for("gpu", quick=True).energy_window_s == 0.0


@pytest.mark.parametrize("mode,quick", [("cpu", False), ("cpu", True)])
def test_cpu_workloads_have_no_energy_window(mode, quick):
    assert workload_for(mode, quick).energy_window_s == 0.0
