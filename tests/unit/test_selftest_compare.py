"""selftest compare: throughput regressions, comparability, exit codes."""

import json

import pytest

import selftest_samples
from selftest import compare
from selftest.__main__ import main


def test_identical_fingerprints_do_not_regress():
    doc = selftest_samples.sample_fingerprint()
    result = compare.compare(doc, doc)
    assert result.exit_code == 0 and not result.regressions and not result.incomparable


def test_decode_drop_beyond_tolerance_is_a_regression():
    old = selftest_samples.sample_fingerprint(decode_tps=10000.0)
    new = selftest_samples.sample_fingerprint(decode_tps=8500.0)  # -15%
    result = compare.compare(old, new, tolerance=0.10)
    assert result.exit_code == 3
    assert any("decode tokens/s" in r for r in result.regressions)
    assert compare.compare(old, new, tolerance=0.20).exit_code == 0


def test_small_drop_within_tolerance_passes():
    old = selftest_samples.sample_fingerprint(decode_tps=10000.0)
    new = selftest_samples.sample_fingerprint(decode_tps=9500.0)
    assert compare.compare(old, new).exit_code == 0


def test_other_gpu_is_not_comparable():
    old = selftest_samples.sample_fingerprint(gpu="NVIDIA H200", decode_tps=10000.0)
    new = selftest_samples.sample_fingerprint(gpu="NVIDIA H100 80GB HBM3", decode_tps=7000.0)
    result = compare.compare(old, new)
    assert result.exit_code == 3 and any("GPU model" in i for i in result.incomparable)
    assert not result.regressions  # slower on another GPU is not a regression of this one
    assert {m["verdict"] for m in result.metrics} == {"not comparable"}


def test_version_change_is_listed_not_a_regression():
    old = selftest_samples.sample_fingerprint()
    new = selftest_samples.variant(old, **{"environment.versions.torch": "2.9.0+cu128"})
    result = compare.compare(old, new)
    assert result.exit_code == 0
    assert any(c.startswith("torch:") for c in result.changes)


def test_newly_failing_check_is_a_regression():
    old = selftest_samples.sample_fingerprint()
    new = selftest_samples.variant(
        old, checks=[{"id": "cuda.available", "status": "fail", "message": "gone", "remedy": "x"}]
    )
    assert compare.compare(old, new).exit_code == 3


def test_compare_command(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(selftest_samples.sample_fingerprint(decode_tps=10000.0)))
    new.write_text(json.dumps(selftest_samples.sample_fingerprint(decode_tps=5000.0)))
    assert main(["compare", str(old), str(old)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main(["compare", str(old), str(new), "--tolerance", "0.10"]) == 3
    assert "REGRESSIONS" in capsys.readouterr().out
    assert main(["compare", str(old), str(new), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["exit_code"] == 3


@pytest.mark.parametrize("content", [None, "not json", '{"a": 1}'])
def test_compare_bad_input_is_a_usage_error(tmp_path, content, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(selftest_samples.sample_fingerprint()))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main(["compare", str(good), str(bad)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_tolerance_must_be_a_fraction(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(selftest_samples.sample_fingerprint()))
    assert main(["compare", str(good), str(good), "--tolerance", "10"]) == 2


def test_compare_with_no_metric_in_both_fingerprints_is_not_a_success(tmp_path, capsys):
    """Two runs without results (no torch, say) compare nothing: that is no 'no regression'."""
    empty = {"gemm": None, "copy": None, "prefill": None, "decode": None}
    doc = selftest_samples.variant(selftest_samples.sample_fingerprint(), results=empty)
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(doc))
    new.write_text(json.dumps(doc))
    assert main(["compare", str(old), str(new)]) == 2
    captured = capsys.readouterr()
    assert "no regression" not in captured.out
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and "nothing to compare" in lines[0]
    assert main(["compare", str(old), str(new), "--json"]) == 2


def test_compare_with_one_metric_in_both_compares_it():
    old = selftest_samples.sample_fingerprint(decode_tps=10000.0)
    new = selftest_samples.variant(
        selftest_samples.sample_fingerprint(decode_tps=5000.0), **{"results.gemm": None, "results.copy": None}
    )
    old = selftest_samples.variant(old, **{"results.gemm": None, "results.copy": None, "results.prefill": None})
    result = compare.compare(old, new)
    assert result.compared == 1 and result.exit_code == 3


BEFORE_REVIEW = (
    selftest_samples.ROOT
    / "bench/results/gpu/20261130-h200-drv580.159.04-torch2.11.0-before-review-fingerprint.json"
)


def test_a_schema_1_0_fingerprint_from_a_real_h200_still_compares():
    """The first real H200 fingerprint (schema 1.0) against one of the current schema: same major, comparable."""
    from selftest import SCHEMA_VERSION, fingerprint

    old = fingerprint.load(str(BEFORE_REVIEW))
    assert old["schema_version"] == "1.0" and SCHEMA_VERSION.split(".")[0] == "1"
    new = selftest_samples.variant(old, schema_version=SCHEMA_VERSION)
    new["results"]["gemm"]["sustained"] = {"tflops": 700.0}  # a figure the old one lacks is just not compared
    result = compare.compare(old, new)
    assert result.exit_code == 0 and not result.incomparable
    assert "schema version: 1.0 -> " + SCHEMA_VERSION in result.changes
    verdicts = {m["metric"]: m["verdict"] for m in result.metrics}
    assert verdicts["decode tokens/s"] == "ok" and verdicts["gemm sustained TFLOP/s"] == "n/a"


def test_a_schema_1_0_fingerprint_still_validates():
    pytest.importorskip("jsonschema")
    from selftest import fingerprint

    assert fingerprint.schema_errors(fingerprint.load(str(BEFORE_REVIEW))) == []
