"""Timing on the device the work runs on: CUDA events on a GPU, perf_counter on a CPU.

GPU work is asynchronous, so host clocks would time the launches, not the
kernels; events recorded on the stream time the kernels themselves.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

# While the GPU works through queued launches, ``during`` callbacks (clock
# sampling) run at most this often.
POLL_S = 0.02


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

    def _wait(self, event: Any, during: Optional[Callable[[], Any]]) -> None:
        """Wait for ``event``, calling ``during`` while the GPU is still busy (it samples clocks under load)."""
        if during is not None:
            while not event.query():
                during()
                time.sleep(POLL_S)
        event.synchronize()

    def time_each(
        self, fn: Callable[[], Any], iters: int, during: Optional[Callable[[], Any]] = None
    ) -> list[float]:
        """Seconds taken by each of ``iters`` calls of fn.

        On a GPU all calls are queued first, then ``during`` runs while they execute.
        """
        if self.cuda:
            Event = self.torch.cuda.Event
            pairs = [(Event(enable_timing=True), Event(enable_timing=True)) for _ in range(iters)]
            self.sync()
            for begin, end in pairs:
                begin.record()
                fn()
                end.record()
            self._wait(pairs[-1][1], during)
            self.sync()
            return [begin.elapsed_time(end) / 1000.0 for begin, end in pairs]
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if during is not None:
                during()
        return times

    def time_chunks(
        self,
        fn: Callable[[], Any],
        per_chunk: int,
        min_seconds: float,
        during: Optional[Callable[[], Any]] = None,
        max_chunks: int = 10_000,
    ) -> list[float]:
        """Run fn back to back in chunks of ``per_chunk`` calls until ``min_seconds`` of work; each chunk's seconds.

        Sustained load: on a GPU the next chunk is always queued before the
        previous one ends, so the device never idles, and ``during`` samples
        it while a chunk runs.
        """
        if not self.cuda:
            chunks: list[float] = []
            while sum(chunks) < min_seconds and len(chunks) < max_chunks:
                t0 = time.perf_counter()
                for _ in range(per_chunk):
                    fn()
                chunks.append(time.perf_counter() - t0)
                if during is not None:
                    during()
            return chunks
        Event = self.torch.cuda.Event
        self.sync()
        marks = [Event(enable_timing=True)]
        marks[0].record()
        while len(marks) <= max_chunks:
            for _ in range(per_chunk):
                fn()
            mark = Event(enable_timing=True)
            mark.record()
            marks.append(mark)
            if len(marks) >= 3:
                self._wait(marks[-2], during)  # the chunk before the last is done; the last one runs now
                if during is not None:
                    during()
                if marks[0].elapsed_time(marks[-2]) / 1000.0 >= min_seconds:
                    break
        self.sync()
        return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]

    def time_once(self, fn: Callable[[], Any]) -> float:
        """Seconds taken by one call of fn (which may itself loop)."""
        return self.time_each(fn, 1)[0]
