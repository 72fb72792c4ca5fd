"""Command line: ``selftest`` (probe), ``selftest cost``, ``selftest compare``.

Exit codes: 0 all checks pass, 1 a check failed, 2 usage error, 3 regression
(or incomparable fingerprints) found by ``compare``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from . import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, __version__

DESCRIPTION = """\
Validate the PyTorch/CUDA stack it runs on, run a reference transformer
workload, and write a JSON fingerprint with throughput and cost per token.

subcommands:
  selftest cost --tokens N --seconds S --gpu-hour-usd P   price one measured request
  selftest compare OLD.json NEW.json [--tolerance 0.10]   flag regressions between two fingerprints

exit codes: 0 all checks pass, 1 a check failed, 2 usage error (for compare also: nothing
to compare), 3 regression found by compare
"""


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selftest", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"selftest {__version__}")
    p.add_argument("--quick", action="store_true", help="small workload, seconds instead of up to two minutes")
    p.add_argument(
        "--out", metavar="PATH", help="fingerprint file (default: ./fingerprint-<gpu or cpu>-<YYYYMMDD>.json)"
    )
    p.add_argument(
        "--gpu-hour-usd",
        type=_non_negative_float,
        metavar="P",
        help="price of one GPU-hour in USD (default: the image's price table, else 0)",
    )
    p.add_argument(
        "--input-output-ratio",
        type=_non_negative_float,
        default=3.0,
        metavar="R",
        help="input tokens per output token for the blended cost (default 3)",
    )
    p.add_argument("--require-gpu", action="store_true", help="fail when no usable GPU is found")
    p.add_argument(
        "--json", action="store_true", help="print the fingerprint JSON on stdout (the summary goes to stderr)"
    )
    return p


def cost_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selftest cost",
        description="Price one measured request: usd_per_1k_tokens = "
        "price_per_hour * 1000 / (3600 * tokens_per_second).",
    )
    p.add_argument("--tokens", type=_non_negative_int, help="tokens in the request (default: input + output)")
    p.add_argument("--seconds", type=_positive_float, required=True, help="wall time the request took")
    p.add_argument("--gpu-hour-usd", type=_non_negative_float, required=True, metavar="P", help="GPU-hour price in USD")
    p.add_argument("--input-tokens", type=_non_negative_int, metavar="N")
    p.add_argument("--output-tokens", type=_non_negative_int, metavar="M")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selftest compare",
        description="Compare two fingerprints; exit 3 when throughput fell by more than "
        "the tolerance or the runs are not comparable.",
    )
    p.add_argument("old", metavar="OLD.json")
    p.add_argument("new", metavar="NEW.json")
    p.add_argument(
        "--tolerance",
        type=_non_negative_float,
        default=0.10,
        help="allowed relative drop in throughput (default 0.10 = 10%%)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main_cost(argv: list[str]) -> int:
    from . import cost

    args = cost_parser().parse_args(argv)
    try:
        result = cost.request_cost(args.gpu_hour_usd, args.seconds, args.tokens, args.input_tokens, args.output_tokens)
    except ValueError as exc:
        print(f"selftest cost: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    rows = [
        (
            "tokens",
            f"{result['tokens']}"
            + (
                f" ({result['input_tokens']} input + {result['output_tokens']} output)"
                if result["input_tokens"] is not None and result["output_tokens"] is not None
                else ""
            ),
        ),
        ("seconds", f"{result['seconds']:g}"),
        ("tokens/s", f"{result['tokens_per_second']:.2f}"),
        ("GPU-hour price", f"${result['gpu_hour_usd']:g}"),
        ("request cost", f"${result['request_usd']:.6g}"),
        ("USD per 1k tokens", f"${result['usd_per_1k_tokens']:.6g}"),
        ("USD per 1M tokens", f"${result['usd_per_1m_tokens']:.6g}"),
    ]
    if result["usd_per_1k_output_tokens"] is not None:
        rows.append(
            ("USD per 1k output tokens", f"${result['usd_per_1k_output_tokens']:.6g} (whole request charged to output)")
        )
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    return EXIT_OK


def main_compare(argv: list[str]) -> int:
    from . import compare, fingerprint

    args = compare_parser().parse_args(argv)
    if args.tolerance >= 1:
        print("selftest compare: error: --tolerance is a fraction below 1 (0.10 = 10%)", file=sys.stderr)
        return EXIT_USAGE
    try:
        old, new = fingerprint.load(args.old), fingerprint.load(args.new)
    except ValueError as exc:
        print(f"selftest compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = compare.compare(old, new, args.tolerance)
    if result.nothing_compared:
        print(result.nothing_compared_line(), file=sys.stderr)
        return result.exit_code
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(compare.render(result, args.old, args.new, args.tolerance))
    return result.exit_code


def main_probe(argv: list[str]) -> int:
    from . import fingerprint, report
    from .probe import ProbeOptions, run_probe

    args = probe_parser().parse_args(argv)
    opts = ProbeOptions(
        quick=args.quick,
        out=args.out,
        gpu_hour_usd=args.gpu_hour_usd,
        input_output_ratio=args.input_output_ratio,
        require_gpu=args.require_gpu,
        argv=argv,
    )
    outcome = run_probe(opts)
    text = report.summary(outcome.document, outcome.out_path)
    if args.json:
        print(text, file=sys.stderr)
        sys.stdout.write(fingerprint.dumps(outcome.document))
    else:
        print(text)
    return outcome.exit_code


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "cost":
            return main_cost(argv[1:])
        if argv and argv[0] == "compare":
            return main_compare(argv[1:])
        return main_probe(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("selftest: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: a bug must still not look like a broken GPU stack
        import os
        import traceback

        if os.environ.get("SELFTEST_DEBUG"):
            traceback.print_exc()
        print(
            f"selftest: internal error: {type(exc).__name__}: {exc} (re-run with SELFTEST_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
