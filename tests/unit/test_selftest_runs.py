"""Run-to-run spread of several fingerprints (scripts/gpu-check): CV arithmetic and targets."""

import json
import math

import pytest

import selftest_samples
from selftest import runs


def three_runs(decode=(9000.0, 9100.0, 8900.0)):
    docs = [selftest_samples.sample_fingerprint(decode_tps=tps) for tps in decode]
    for doc, gemm in zip(docs, (785.0, 790.0, 780.0)):
        doc["results"]["gemm"]["tflops"]["median"] = gemm
    return docs


def test_run_to_run_cv_is_the_sample_standard_deviation_over_the_mean():
    summary = runs.summarize_runs(three_runs(), walls=[21.0, 20.5, 20.8])
    decode = next(r for r in summary["metrics"] if r["metric"] == "decode")
    assert decode["values"] == pytest.approx([9000.0, 9100.0, 8900.0])
    assert decode["median"] == pytest.approx(9000.0)
    # mean 9000, deviations -0, +100, -100: sample variance 20000/2 = 10000, sd 100
    assert decode["cv"] == pytest.approx(100.0 / 9000.0)
    gemm = next(r for r in summary["metrics"] if r["metric"] == "GEMM burst")
    assert gemm["cv"] == pytest.approx(math.sqrt(25.0) / 785.0)


def test_targets_met_on_a_steady_hopper():
    summary = runs.summarize_runs(three_runs(), walls=[21.0, 20.5, 20.8])
    verdicts = {t["target"]: t["verdict"] for t in summary["targets"]}
    assert verdicts["decode: CV across runs"] == "met"
    assert verdicts["GEMM best shape, TFLOP/s (Hopper bf16)"] == "met"  # 785 in the sample
    assert verdicts["whole run (process start to exit), worst, s"] == "met"


def test_a_spread_above_three_percent_is_missed():
    summary = runs.summarize_runs(three_runs(decode=(9000.0, 9600.0, 8400.0)), walls=[21.0, 130.0, 20.0])
    verdicts = {t["target"]: t["verdict"] for t in summary["targets"]}
    assert verdicts["decode: CV across runs"] == "MISSED"  # sd 600 on 9000: 6.7%
    assert verdicts["whole run (process start to exit), worst, s"] == "MISSED"


def test_a_run_without_a_metric_gives_no_cv_rather_than_a_smaller_one():
    docs = three_runs()
    docs[1]["results"]["decode"] = None
    summary = runs.summarize_runs(docs)
    decode = next(r for r in summary["metrics"] if r["metric"] == "decode")
    assert decode["values"][1] is None and decode["cv"] is None
    assert {t["target"]: t["verdict"] for t in summary["targets"]}["decode: CV across runs"] == "n/a"


def test_hopper_targets_do_not_apply_to_other_gpus():
    docs = [selftest_samples.variant(d, **{"results.roofline.datasheet.name": "L4"}) for d in three_runs()]
    verdicts = {t["target"]: t["verdict"] for t in runs.summarize_runs(docs)["targets"]}
    assert verdicts["GEMM best shape, TFLOP/s (Hopper bf16)"] == "n/a"
    assert verdicts["decode vs measured copy (Hopper)"] == "n/a"


def test_results_prefix_names_date_gpu_driver_and_torch():
    assert runs.results_prefix(selftest_samples.sample_fingerprint()) == "20261128-h200-drv570.133.20-torch2.8.0"


def test_runs_command_writes_the_summary(tmp_path, capsys):
    paths = []
    for i, doc in enumerate(three_runs()):
        path = tmp_path / f"fp{i}.json"
        path.write_text(json.dumps(doc))
        paths.append(str(path))
    out = tmp_path / "runs.json"
    assert runs.main(["--wall", "21,20.5,20.8", "--out", str(out), *paths]) == 0
    assert "CV across runs" in capsys.readouterr().out
    assert json.loads(out.read_text())["runs"] == 3
    assert runs.main([str(tmp_path / "missing.json")]) == 2
