"""The human summary printed after a run."""

import selftest_samples
from selftest import report


def test_summary_shows_checks_results_cost_and_path():
    doc = selftest_samples.sample_fingerprint()
    doc["checks"].append({"id": "gpu.0.health", "status": "warn", "message": "clocks held down", "remedy": "cool it"})
    text = report.summary(doc, "fingerprint-h200-20261128.json")
    assert "status=PASS" in text and "device=NVIDIA H200" in text
    assert "-> cool it" in text  # remedies are shown under warnings and failures
    for line_start in (
        "gemm bfloat16 8192^3",
        "copy (read+write)",
        "prefill 8x512",
        "decode 8x256",
        "roofline",
        "cost @ $3.50/h",
        "energy per token",
        "fingerprint",
    ):
        assert any(line.startswith(line_start) for line in text.splitlines()), line_start
    assert text.isascii()


def test_usd_formatting_avoids_scientific_notation():
    assert report.usd(2.851e-06) == "$0.00000285"
    assert report.usd(0.0291) == "$0.0291"
    assert report.usd(0) == "$0"
    assert report.usd(None) == "n/a"
