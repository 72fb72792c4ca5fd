"""The probe inside the built runtime image, on the CPU (no GPU here): real runs, real fingerprints."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from selftest import fingerprint
from tests.support import ROOT

@pytest.fixture
def outdir(tmp_path):
    os.chmod(tmp_path, 0o777)  # the container's non-root user writes the fingerprint here
    return tmp_path


def test_selftest_quick_in_the_image_writes_a_valid_fingerprint(runtime_image, containers, docker_client, outdir):
    result = containers.run(runtime_image.refs[0], ["selftest", "--quick", "--out", "/out/fp.json",
                                                    "--gpu-hour-usd", "0.8"],
                            volumes={str(outdir): {"bind": "/out", "mode": "rw"}})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    doc = json.loads((outdir / "fp.json").read_text())
    assert fingerprint.schema_errors(doc) == []
    assert doc["mode"] == "cpu" and doc["quick"] is True
    labels = docker_client.run_config(runtime_image.image_id)["Labels"]
    env = doc["environment"]
    assert env["image"]["inside_image"] is True
    assert env["image"]["tag"] == "pytorch-cuda:" + labels["org.opencontainers.image.version"]
    assert env["versions"]["torch"].split("+")[0] == labels["pytorch-cuda.torch"]
    assert env["versions"]["torch_cuda"] == labels["pytorch-cuda.cuda"]
    assert labels["pytorch-cuda.cudnn"].startswith(env["versions"]["cudnn"])
    assert env["versions"]["nccl"] == labels["pytorch-cuda.nccl"]
    by_id = {c["id"]: c["status"] for c in doc["checks"]}
    for check_id in ("python.version", "torch.version", "cuda.version", "cudnn.version", "nccl.version"):
        assert by_id.get(check_id) == "pass", (check_id, by_id)
    shm = next(c for c in doc["checks"] if c["id"] == "host.shm")  # Docker's default: 64 MB
    assert shm["status"] == "warn" and "--shm-size" in shm["remedy"], shm
    tps = doc["cost"]["output"]["tokens_per_second"]
    assert tps > 0
    assert doc["cost"]["output"]["usd_per_1k_tokens"] == pytest.approx(0.8 * 1000 / (3600 * tps))


def test_require_gpu_without_a_gpu_fails_with_the_reason(runtime_image, containers, outdir):
    result = containers.run(runtime_image.refs[0], ["selftest", "--quick", "--require-gpu", "--out", "/out/fp.json"],
                            volumes={str(outdir): {"bind": "/out", "mode": "rw"}})
    assert result.exit_code == 1, result.output
    doc = json.loads((outdir / "fp.json").read_text())
    assert fingerprint.schema_errors(doc) == []
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert any(c["id"] == "cuda.available" for c in failed)
    assert all(c["remedy"] for c in failed)


def test_python_m_selftest_from_the_checkout(runtime_image, containers, outdir):
    """The package as checked out (not the copy baked into the image), run with `python -m selftest`."""
    result = containers.run(runtime_image.refs[0], ["python", "-m", "selftest", "--quick", "--out", "/out/fp.json"],
                            volumes={str(outdir): {"bind": "/out", "mode": "rw"},
                                     str(ROOT / "selftest"): {"bind": "/src/selftest", "mode": "ro"}},
                            environment={"PYTHONPATH": "/src"})
    assert result.exit_code == 0, result.output
    assert fingerprint.schema_errors(json.loads((outdir / "fp.json").read_text())) == []


PYTEST_PARTS = ("pytest", "_pytest", "pluggy", "iniconfig", "pygments", "packaging", "py.py")


def test_the_decoder_unit_tests_pass_in_the_image_on_its_torch(runtime_image, containers):
    """tests/unit/test_selftest_decoder_torch.py needs torch, which the unit venv lacks (there it
    skips, saying so): here it runs in the image, on the image's torch, with pytest lent read-only
    from the test environment (pure Python) and this checkout's probe."""
    site = Path(pytest.__file__).resolve().parent.parent
    volumes = {str(site / part): {"bind": f"/pylibs/{part}", "mode": "ro"} for part in PYTEST_PARTS}
    volumes[str(ROOT / "selftest")] = {"bind": "/src/selftest", "mode": "ro"}
    test_file = ROOT / "tests" / "unit" / "test_selftest_decoder_torch.py"
    volumes[str(test_file)] = {"bind": f"/src/{test_file.name}", "mode": "ro"}
    result = containers.run(runtime_image.refs[0],
                            ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"/src/{test_file.name}"],
                            volumes=volumes,
                            environment={"PYTHONPATH": "/src:/pylibs", "SELFTEST_REQUIRE_TORCH": "1",
                                         "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    print(result.output[-3000:])
    assert result.exit_code == 0, result.output[-3000:]
    assert " passed" in result.output and "skipped" not in result.output and "failed" not in result.output
