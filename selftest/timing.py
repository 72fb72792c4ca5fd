"""Timing on the device the work runs on: CUDA events on a GPU, perf_counter on a CPU.

GPU work is asynchronous, so host clocks would time the launches, not the
kernels; events recorded on the stream time the kernels themselves.
"""

from __future__ import annotations

import time
from typing import Any, Callable


class Timer:
    def __init__(self, torch: Any, device: str):
        self.torch = torch
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def warmup(self, fn: Callable[[], Any], iters: int, seconds: float = 0.0, max_iters: int = 1000) -> int:
        """Run fn at least ``iters`` times and for at least ``seconds`` (clocks ramp up, caches fill)."""
        start = time.perf_counter()
        n = 0
        while n < max_iters and (n < iters or time.perf_counter() - start < seconds):
            fn()
            self.sync()
            n += 1
        return n

    def time_each(self, fn: Callable[[], Any], iters: int) -> list[float]:
        """Seconds taken by each of ``iters`` calls of fn."""
        if self.cuda:
            Event = self.torch.cuda.Event
            pairs = [(Event(enable_timing=True), Event(enable_timing=True)) for _ in range(iters)]
            self.sync()
            for begin, end in pairs:
                begin.record()
                fn()
                end.record()
            self.sync()
            return [begin.elapsed_time(end) / 1000.0 for begin, end in pairs]
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times

    def time_once(self, fn: Callable[[], Any]) -> float:
        """Seconds taken by one call of fn (which may itself loop)."""
        return self.time_each(fn, 1)[0]
