"""The fingerprint JSON Schema: it is valid, real documents pass, broken ones do not."""

import datetime as dt
import json
import sys
import tempfile

import pytest

import selftest_samples
from selftest import SCHEMA_VERSION, fingerprint
from selftest.__main__ import main

jsonschema = pytest.importorskip("jsonschema")


def test_schema_is_a_valid_draft_2020_12_schema():
    schema = fingerprint.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["pattern"].startswith("^" + SCHEMA_VERSION.split(".")[0])


def test_sample_gpu_fingerprint_is_valid():
    assert fingerprint.schema_errors(selftest_samples.sample_fingerprint()) == []


@pytest.mark.parametrize(
    "change",
    [
        {"mode": "tpu"},
        {"status": "ok"},
        {"exit_code": 3},
        {"schema_version": "2.0"},
        {"created_utc": "yesterday"},
        {"cost.gpu_hour_usd": -1},
        {"cost.price_source": "guess"},
        {"results.decode.tokens_per_second.n": 0},
        {"results.prefill.tokens_per_second": 0},
    ],
)
def test_broken_fingerprints_are_rejected(change):
    doc = selftest_samples.variant(selftest_samples.sample_fingerprint(), **change)
    assert fingerprint.schema_errors(doc)


def test_check_needs_id_status_message_and_remedy():
    doc = selftest_samples.sample_fingerprint()
    doc["checks"].append({"id": "x", "status": "fail", "message": "m"})
    errors = fingerprint.schema_errors(doc)
    assert errors and any("remedy" in e for e in errors)


def test_unknown_top_level_key_is_rejected():
    doc = selftest_samples.sample_fingerprint()
    doc["extra"] = 1
    assert fingerprint.schema_errors(doc)


def test_nan_is_stored_as_null_and_still_valid(tmp_path):
    doc = selftest_samples.sample_fingerprint()
    doc["results"]["gemm"]["rel_error"] = float("nan")
    path = tmp_path / "fp.json"
    fingerprint.write(doc, str(path))
    loaded = json.loads(path.read_text())
    assert loaded["results"]["gemm"]["rel_error"] is None
    assert fingerprint.schema_errors(loaded) == []


@pytest.mark.parametrize(
    "name,expected",
    [
        ("NVIDIA H200", "fingerprint-h200-20261128.json"),
        ("NVIDIA H100 80GB HBM3", "fingerprint-h100-80gb-hbm3-20261128.json"),
        ("Tesla T4", "fingerprint-t4-20261128.json"),
        (None, "fingerprint-cpu-20261128.json"),
    ],
)
def test_default_file_name_names_gpu_and_date(name, expected):
    moment = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
    assert fingerprint.default_filename(name, moment) == expected


def test_default_file_name_uses_the_utc_date():
    late_evening_west = dt.datetime(2026, 11, 28, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert fingerprint.default_filename(None, late_evening_west) == "fingerprint-cpu-20261129.json"


def test_probe_without_torch_writes_valid_fingerprint_and_fails_cleanly(tmp_path, monkeypatch, capsys):
    """On a host without torch: exit 1, a readable failed check, a valid fingerprint, no traceback."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("SELFTEST_IMAGE_INFO", str(tmp_path / "absent.json"))
    out = tmp_path / "fp.json"
    rc = main(["--quick", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in captured.out + captured.err
    assert "torch.import" in captured.out and "cannot import torch" in captured.out
    doc = json.loads(out.read_text())
    assert fingerprint.schema_errors(doc) == []
    assert doc["mode"] == "cpu" and doc["status"] == "fail" and doc["exit_code"] == 1
    assert doc["results"]["decode"] is None
    assert doc["cost"]["price_source"] == "none" and doc["cost"]["note"]


def test_probe_json_flag_prints_the_document(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("SELFTEST_IMAGE_INFO", str(tmp_path / "absent.json"))
    rc = main(["--quick", "--json", "--out", str(tmp_path / "fp.json")])
    captured = capsys.readouterr()
    assert rc == 1
    assert json.loads(captured.out)["schema_version"] == SCHEMA_VERSION
    assert "CHECK" in captured.err  # the human summary moved to stderr


def test_unwritable_out_becomes_a_failed_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["--quick", "--out", str(blocker / "sub" / "fp.json")])
    out = capsys.readouterr().out
    assert rc == 1 and "fingerprint.write" in out


def test_unwritable_default_location_falls_back_to_temp_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(fingerprint, "default_filename", lambda name, moment: str(blocker / "fp.json"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    main(["--quick"])
    out = capsys.readouterr().out
    assert "fingerprint.write" in out and "warn" in out
    doc = json.loads((tmp_path / "fp.json").read_text())
    assert any(c["id"] == "fingerprint.write" for c in doc["checks"])


def test_usage_error_exits_2(capsys):
    assert main(["--no-such-flag"]) == 2
    assert main(["--gpu-hour-usd", "-3"]) == 2
