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


def ablations(torch: Any, model: Decoder) -> dict[str, Callable[[], Callable[[], None]]]:
    """Ways to undo one fusion of ``model``'s decode step; each returns the function that restores it.

    Timing the step with each fusion undone says what each one is worth on this GPU and torch.
    """
    F, s = torch.nn.functional, model.shape

    def undo(name: str, value: Any) -> Callable[[], None]:
        setattr(model, name, value)
        return lambda: delattr(model, name)

    def decomposed(x: Any, weight: Any) -> Any:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + s.norm_eps)).to(x.dtype) * weight

    def toggle(name: str, value: Any) -> Callable[[], None]:
        old = getattr(model, name)
        setattr(model, name, value)
        return lambda: setattr(model, name, old)

    variants = {
        "bool mask in every layer": lambda: undo(
            "attention_mask", lambda: (model.positions <= model.pos).view(1, 1, 1, s.max_len)
        ),
        "residual add as its own kernel": lambda: undo("residual_linear", lambda x, h, w: x + F.linear(h, w)),
        "one-pass argmax": lambda: toggle("argmax_chunk", 0),
        "RMSNorm decomposed (torch < 2.9 F.rms_norm)": lambda: undo("rms_norm", decomposed),
    }
    if model.fused_rms_norm:
        variants["RMSNorm as layer_norm of [x, -x] (the path for torch < 2.9)"] = lambda: toggle(
            "fused_rms_norm", False
        )
    return variants


def graph_step_ms(torch: Any, model: Decoder, first: Any, position: int, runs: int = 3) -> float:
    """Milliseconds per decode step replayed from a CUDA graph (as the probe times it), median of runs."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    model.start_decode(first, position)
    with torch.cuda.stream(stream):
        for _ in range(3):
            model.decode_step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model.decode_step()
    times = []
    for _ in range(runs + 1):
        model.start_decode(first, position)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(model.shape.new_tokens):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end) / model.shape.new_tokens)
    del graph
    return sorted(times[1:])[len(times[1:]) // 2]


def profile_decode(torch: Any, quick: bool, steps: int, ablate: bool = False) -> dict:
    """Profile the reference decoder's eager decode step on cuda:0 (or the CPU without one).

    With ``ablate`` on a GPU, also time the graph-replayed step with each fusion undone.
    """
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
        variants = []
        if ablate and cuda:
            todo = {"all fusions": lambda: (lambda: None)}
            todo.update(ablations(torch, model))
            for name, apply in todo.items():
                restore = apply()
                try:
                    model.start_decode(first, shape.prompt_len)
                    counted = profile_step(torch, model.decode_step, steps, cuda)
                    ms = graph_step_ms(torch, model, first, shape.prompt_len)
                    variants.append(
                        {"variant": name, "graph_step_ms": ms, "kernels_per_step": counted["per_step"],
                         "kernel_us_per_step": counted["us_per_step"]}
                    )
                finally:
                    restore()
                    torch.cuda.synchronize()
    return dict(
        result,
        variants=variants,
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
    if result.get("variants"):
        base = result["variants"][0]["graph_step_ms"]
        lines += ["", "decode step through a CUDA graph, each fusion undone in turn:",
                  f"{'MS/STEP':>8}  {'VS ALL':>7}  {'KERNELS':>7}  VARIANT"]
        for v in result["variants"]:
            lines.append(
                f"{v['graph_step_ms']:8.4f}  {v['graph_step_ms'] / base - 1:+7.1%}  {v['kernels_per_step']:7.1f}  "
                f"{v['variant']}"
            )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selftest.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the --quick workload's decoder")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--ablate", action="store_true", help="on a GPU, also time the step with each fusion undone (~15 s more)"
    )
    p.add_argument("--out", metavar="FILE", help="also write the table here, and FILE.json")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: PLC0415
    except ImportError as exc:
        print(f"selftest.profile: needs torch: {exc}", file=sys.stderr)
        return 2
    result = profile_decode(torch, args.quick, max(1, args.steps), args.ablate)
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
