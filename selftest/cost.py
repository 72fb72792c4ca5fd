"""What tokens cost: pure arithmetic on a GPU-hour price and a measured rate.

The one formula everything else derives from:

    usd_per_1k_tokens = price_per_gpu_hour * 1000 / (3600 * tokens_per_second)

i.e. the price of the GPU-seconds that 1,000 tokens occupy.
"""

from __future__ import annotations

from typing import Optional

SECONDS_PER_HOUR = 3600.0


def usd_per_1k_tokens(price_per_hour: float, tokens_per_second: float) -> float:
    """Price of the GPU time that 1,000 tokens take at the given rate."""
    if tokens_per_second <= 0:
        raise ValueError("tokens_per_second must be positive")
    if price_per_hour < 0:
        raise ValueError("price_per_hour must not be negative")
    return price_per_hour * 1000.0 / (SECONDS_PER_HOUR * tokens_per_second)


def usd_per_1m_tokens(price_per_hour: float, tokens_per_second: float) -> float:
    """Same as :func:`usd_per_1k_tokens`, per million tokens (how APIs quote)."""
    return usd_per_1k_tokens(price_per_hour, tokens_per_second) * 1000.0


def blended_tokens_per_second(input_tps: float, output_tps: float, input_output_ratio: float) -> float:
    """Throughput of a mix of ``ratio`` input tokens per output token.

    Serving R input tokens and 1 output token takes R/input_tps + 1/output_tps
    seconds, so the mix runs at (R + 1) tokens per that time.  The blended cost
    is therefore the token-weighted mean of input and output cost.
    """
    if input_tps <= 0 or output_tps <= 0:
        raise ValueError("rates must be positive")
    if input_output_ratio < 0:
        raise ValueError("input_output_ratio must not be negative")
    r = input_output_ratio
    return (r + 1.0) / (r / input_tps + 1.0 / output_tps)


def _rate_costs(price_per_hour: float, tps: Optional[float], joules_per_token: Optional[float]) -> dict:
    if not tps or tps <= 0:
        return {
            "tokens_per_second": None,
            "usd_per_1k_tokens": None,
            "usd_per_1m_tokens": None,
            "joules_per_token": joules_per_token,
        }
    return {
        "tokens_per_second": tps,
        "usd_per_1k_tokens": usd_per_1k_tokens(price_per_hour, tps),
        "usd_per_1m_tokens": usd_per_1m_tokens(price_per_hour, tps),
        "joules_per_token": joules_per_token,
    }


def token_costs(
    price_per_hour: float,
    input_tps: Optional[float],
    output_tps: Optional[float],
    input_output_ratio: float = 3.0,
    input_joules_per_token: Optional[float] = None,
    output_joules_per_token: Optional[float] = None,
) -> dict:
    """Cost section of the fingerprint: input (prefill), output (decode), blended."""
    blended_tps = None
    blended_jpt = None
    if input_tps and output_tps and input_tps > 0 and output_tps > 0:
        blended_tps = blended_tokens_per_second(input_tps, output_tps, input_output_ratio)
        if input_joules_per_token is not None and output_joules_per_token is not None:
            r = input_output_ratio
            blended_jpt = (r * input_joules_per_token + output_joules_per_token) / (r + 1.0)
    return {
        "input": _rate_costs(price_per_hour, input_tps, input_joules_per_token),
        "output": _rate_costs(price_per_hour, output_tps, output_joules_per_token),
        "blended": _rate_costs(price_per_hour, blended_tps, blended_jpt),
    }


def request_cost(
    price_per_hour: float,
    seconds: float,
    tokens: Optional[int] = None,
    input_tokens: Optional[int] = None,
    output_tokens: Optional[int] = None,
) -> dict:
    """Cost of one measured request (``selftest cost``).

    ``tokens`` defaults to input + output.  With a split given, the whole
    request's GPU time is also charged to its output tokens alone, which is how
    a per-output-token price is usually quoted.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    if price_per_hour < 0:
        raise ValueError("the GPU-hour price must not be negative")
    if tokens is None:
        if input_tokens is None and output_tokens is None:
            raise ValueError("give --tokens, or --input-tokens and --output-tokens")
        tokens = (input_tokens or 0) + (output_tokens or 0)
    elif input_tokens is not None and output_tokens is not None and input_tokens + output_tokens != tokens:
        raise ValueError(
            f"--tokens {tokens} differs from --input-tokens + --output-tokens = {input_tokens + output_tokens}"
        )
    if tokens <= 0:
        raise ValueError("the request must have at least one token")
    tps = tokens / seconds
    result = {
        "tokens": tokens,
        "seconds": seconds,
        "gpu_hour_usd": price_per_hour,
        "tokens_per_second": tps,
        "request_usd": price_per_hour * seconds / SECONDS_PER_HOUR,
        "usd_per_1k_tokens": usd_per_1k_tokens(price_per_hour, tps),
        "usd_per_1m_tokens": usd_per_1m_tokens(price_per_hour, tps),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "usd_per_1k_output_tokens": None,
    }
    if output_tokens:
        result["usd_per_1k_output_tokens"] = result["request_usd"] * 1000.0 / output_tokens
    return result
