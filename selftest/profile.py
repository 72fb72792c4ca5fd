"""Where one eager decode step goes: kernels launched (GPU) or operators run (CPU), and their time.

    python -m selftest.profile [--quick] [--steps 5] [--out FILE]

A decode step of a small batch is a few large matrix products (moving the
weights) and dozens of tiny kernels whose fixed cost moves no bytes; the count
of the latter is what fusing reduces.  The probe times the step through a CUDA
graph, which hides launch cost but not the kernels' own; this profiles it
eagerly, with torch.profiler, for the record (scripts/gpu-check keeps its output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

from .decoder import Decoder
from .shapes import workload_for

SEED = 1234


def summarize_kernels(events: Iterable[tuple[str, float]], steps: int, top: int = 15) -> dict:
    """(name, microseconds) of every kernel or operator -> per step count, time and the costliest names."""
    count, total = defaultdict(int), defaultdict(float)
    for name, us in events:
        count[name] += 1
        total[name] += us
    all_us = sum(total.values())
    rows = sorted(total, key=lambda n: total[n], reverse=True)[:top]
    return {
        "steps": steps,
        "per_step": sum(count.values()) / steps,
        "us_per_step": all_us / steps,
        "top": [
            {
                "name": n,
                "per_step": count[n] / steps,
                "us_per_step": total[n] / steps,
                "share": total[n] / all_us if all_us else None,
            }
            for n in rows
        ],
    }


def profile_step(torch: Any, step: Callable[[], Any], steps: int, cuda: bool) -> dict:
    """Profile ``steps`` calls of ``step``: GPU kernels (and copies) on CUDA, top-level aten operators on the CPU."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    if cuda:
        cuda_type = torch.autograd.DeviceType.CUDA
        events = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == cuda_type]
        what = "GPU kernels and copies"
    else:
        events = [
            (e.name, e.time_range.elapsed_us())
            for e in prof.events()
            if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        ]
        what = "top-level aten operators"
    return dict(summarize_kernels(events, steps), counted=what)


def profile_decode(torch: Any, quick: bool, steps: int) -> dict:
    """Profile the reference decoder's eager decode step on cuda:0 (or the CPU without one)."""
    cuda = torch.cuda.is_available()
    mode = "gpu" if cuda else "cpu"
    shape = workload_for(mode, quick).decoder
    device = "cuda:0" if cuda else "cpu"
    dtype = torch.float32
    if cuda:
        major, _ = torch.cuda.get_device_capability(0)
        dtype = torch.bfloat16 if major >= 8 else torch.float16
    with torch.inference_mode():
        model = Decoder(torch, shape, device, dtype, SEED)
        prompt = torch.randint(0, shape.vocab, (shape.batch, shape.prompt_len), device=device)
        first = model.prefill(prompt).argmax(dim=-1)
        model.start_decode(first, shape.prompt_len)
        for _ in range(3):
            model.decode_step()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            model.decode_step()
        if cuda:
            torch.cuda.synchronize()
        eager_ms = (time.perf_counter() - t0) * 1e3 / steps
        result = profile_step(torch, model.decode_step, steps, cuda)
    return dict(
        result,
        device=torch.cuda.get_device_name(0) if cuda else "cpu",
        torch=torch.__version__,
        dtype=str(dtype).replace("torch.", ""),
        decoder=shape.to_dict(),
        fusions=model.fusions,
        eager_step_ms=eager_ms,
    )


def render(result: dict) -> str:
    lines = [
        f"decode step profile: {result['device']}, torch {result['torch']}, {result['dtype']}, "
        f"eager step {result['eager_step_ms']:.3f} ms",
        f"{result['counted']} per step: {result['per_step']:.1f}, {result['us_per_step']:.1f} us of their time per step",
        f"fusions: {', '.join(f'{k}: {v}' for k, v in result['fusions'].items())}",
        "",
        f"{'PER STEP':>8}  {'US/STEP':>9}  {'SHARE':>6}  NAME",
    ]
    for row in result["top"]:
        share = "n/a" if row["share"] is None else f"{row['share']:.1%}"
        lines.append(f"{row['per_step']:8.1f}  {row['us_per_step']:9.1f}  {share:>6}  {row['name'][:100]}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selftest.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the --quick workload's decoder")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", metavar="FILE", help="also write the table here, and FILE.json")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: PLC0415
    except ImportError as exc:
        print(f"selftest.profile: needs torch: {exc}", file=sys.stderr)
        return 2
    result = profile_decode(torch, args.quick, max(1, args.steps))
    text = render(result)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        with open(args.out + ".json", "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
