"""Cost arithmetic of the probe: usd_per_1k_tokens = price * 1000 / (3600 * tokens_per_second)."""

import json

import pytest

from selftest import cost
from selftest.__main__ import main


def test_request_of_500_in_300_out_in_1_2_s_at_80_cents_per_hour():
    result = cost.request_cost(0.80, 1.2, input_tokens=500, output_tokens=300)
    tokens_per_second = 800 / 1.2  # 666.666... tok/s
    assert result["tokens"] == 800
    assert result["tokens_per_second"] == pytest.approx(666.6666666666666)
    # by hand: 0.8 * 1000 / (3600 * 666.67) = 0.000333... dollars per 1,000 tokens
    assert result["usd_per_1k_tokens"] == pytest.approx(0.8 * 1000 / (3600 * tokens_per_second))
    assert result["usd_per_1k_tokens"] == pytest.approx(0.000333333333, rel=1e-9)
    assert result["usd_per_1m_tokens"] == pytest.approx(0.333333333, rel=1e-9)
    # the request occupied the GPU for 1.2 s: 0.8 * 1.2 / 3600 dollars
    assert result["request_usd"] == pytest.approx(0.8 * 1.2 / 3600)
    # charged to its 300 output tokens alone
    assert result["usd_per_1k_output_tokens"] == pytest.approx(0.8 * 1.2 / 3600 / 300 * 1000)


def test_usd_per_1k_is_price_of_the_seconds_1000_tokens_take():
    # 1000 tokens at 100 tok/s take 10 s; 10 s of a $3.60/h GPU cost $0.01
    assert cost.usd_per_1k_tokens(3.60, 100.0) == pytest.approx(0.01)
    assert cost.usd_per_1m_tokens(3.60, 100.0) == pytest.approx(10.0)


def test_blended_rate_is_tokens_over_time_of_the_mix():
    # 3 input tokens at 300 tok/s (0.01 s) + 1 output token at 50 tok/s (0.02 s): 4 tokens in 0.03 s
    assert cost.blended_tokens_per_second(300.0, 50.0, 3.0) == pytest.approx(4 / 0.03)


def test_blended_cost_is_token_weighted_mean_of_input_and_output_cost():
    costs = cost.token_costs(
        2.0, 1000.0, 100.0, input_output_ratio=3.0, input_joules_per_token=0.1, output_joules_per_token=1.0
    )
    cin, cout = costs["input"]["usd_per_1k_tokens"], costs["output"]["usd_per_1k_tokens"]
    assert cin == pytest.approx(2.0 * 1000 / (3600 * 1000.0))
    assert cout == pytest.approx(2.0 * 1000 / (3600 * 100.0))
    assert costs["blended"]["usd_per_1k_tokens"] == pytest.approx((3 * cin + cout) / 4)
    assert costs["blended"]["usd_per_1m_tokens"] == pytest.approx(1000 * (3 * cin + cout) / 4)
    assert costs["blended"]["joules_per_token"] == pytest.approx((3 * 0.1 + 1.0) / 4)


def test_missing_rates_give_null_costs_not_errors():
    costs = cost.token_costs(1.0, None, 50.0)
    assert costs["input"]["usd_per_1k_tokens"] is None
    assert costs["blended"]["tokens_per_second"] is None
    assert costs["output"]["usd_per_1k_tokens"] == pytest.approx(1000 / (3600 * 50.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"price_per_hour": 1.0, "seconds": 0, "tokens": 10},
        {"price_per_hour": -1.0, "seconds": 1, "tokens": 10},
        {"price_per_hour": 1.0, "seconds": 1},
        {"price_per_hour": 1.0, "seconds": 1, "tokens": 10, "input_tokens": 5, "output_tokens": 4},
        {"price_per_hour": 1.0, "seconds": 1, "tokens": 0},
    ],
)
def test_request_cost_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        cost.request_cost(**kwargs)


def test_cost_command_prints_json(capsys):
    rc = main(
        [
            "cost",
            "--tokens",
            "800",
            "--seconds",
            "1.2",
            "--gpu-hour-usd",
            "0.8",
            "--input-tokens",
            "500",
            "--output-tokens",
            "300",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["usd_per_1k_tokens"] == pytest.approx(0.8 * 1000 / (3600 * (800 / 1.2)))


def test_cost_command_table(capsys):
    assert main(["cost", "--tokens", "800", "--seconds", "1.2", "--gpu-hour-usd", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "USD per 1k tokens" in out and "$0.000333333" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["cost", "--tokens", "800", "--gpu-hour-usd", "0.8"],  # no --seconds
        ["cost", "--tokens", "800", "--seconds", "0", "--gpu-hour-usd", "0.8"],  # zero time
        ["cost", "--tokens", "800", "--seconds", "1", "--gpu-hour-usd", "abc"],  # not a number
        [
            "cost",
            "--tokens",
            "10",
            "--seconds",
            "1",
            "--gpu-hour-usd",
            "1",
            "--input-tokens",
            "5",
            "--output-tokens",
            "6",
        ],  # split disagrees
    ],
)
def test_cost_command_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
