"""Each verify check on reported facts: passes for a good image, fails (with the reason) for a bad one."""
from __future__ import annotations

import copy

import pytest

from builder import manifest, render, verify

GOOD_FACTS = {
    "python": "3.12.3", "os_id": "ubuntu", "os_version": "24.04", "uid": 1000, "user": "user", "pid1": "tini",
    "env": {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
    "packages": {"numpy": "2.5.5", "nvidia-ml-py": "13.615.71", "jsonschema": "4.26.0"},
    "torch": "2.8.0+cu128", "cuda": "12.8", "cudnn": 91002, "nccl": "2.27.3", "triton": "3.4.0",
    "pip_check": {"exit_code": 0, "output": "No broken requirements found."},
    "compile": {"ok": True, "error": None},
}


def evidence(**changes) -> verify.Evidence:
    variant = manifest.load().variant("runtime")
    facts = copy.deepcopy(GOOD_FACTS)
    findings = changes.pop("findings", [])
    facts.update(changes)
    config = {"Labels": render.common_labels(variant)}
    return verify.Evidence(variant=variant, facts=facts, config=config, findings=findings)


def failed(e: verify.Evidence) -> dict[str, str]:
    return {r.id: r.detail for r in verify.run_checks(e) if not r.ok}


def test_a_good_image_passes_every_check():
    assert failed(evidence()) == {}


@pytest.mark.parametrize("change, check_id, words", [
    ({"torch": "2.7.1+cu128"}, "torch-version", "torch 2.7.1 (manifest: 2.8.0)"),
    ({"cuda": "12.6"}, "cuda-version", "12.6"),
    ({"cudnn": 90100}, "cudnn-version", "cuDNN 9.1.0 (manifest: 9.10.2)"),
    ({"nccl": "2.21.5"}, "nccl-version", "2.21.5"),
    ({"python": "3.11.9"}, "python-version", "Python 3.11"),
    ({"packages": {"numpy": "1.26.4", "nvidia-ml-py": "13.615.71", "jsonschema": "4.26.0"}},
     "python-packages", "numpy 1.26.4 (manifest: 2.5.5)"),
    ({"pip_check": {"exit_code": 1, "output": "torch 2.8.0 requires sympy, which is not installed."}},
     "pip-check", "requires sympy"),
    ({"compile": {"ok": False, "error": "InvalidCxxCompiler: No working C++ compiler found"}},
     "torch-compile", "InvalidCxxCompiler"),
    ({"uid": 0, "user": "root"}, "non-root-user", "runs as root"),
    ({"pid1": "python"}, "tini-pid1", "PID 1 is python"),
    ({"env": {"NVIDIA_VISIBLE_DEVICES": None, "NVIDIA_DRIVER_CAPABILITIES": None}}, "nvidia-env", "None"),
    ({"findings": ["copy of the build CA bundle: /etc/pip.pem"]}, "hygiene", "/etc/pip.pem"),
])
def test_each_check_fails_for_its_fault(change, check_id, words):
    problems = failed(evidence(**change))
    assert list(problems) == [check_id]
    assert words in problems[check_id]


def test_torch_that_does_not_import_fails_with_the_error():
    e = evidence()
    del e.facts["torch"]
    e.facts["torch_error"] = "OSError: libcudnn.so.9: cannot open shared object file"
    problems = failed(e)
    assert "libcudnn.so.9" in problems["torch-version"]


def test_a_changed_label_fails():
    e = evidence()
    e.config["Labels"]["pytorch-cuda.torch"] = "2.7.0"
    assert "pytorch-cuda.torch='2.7.0'" in failed(e)["labels"]


def test_report_prints_one_line_per_check_and_a_summary(capsys):
    import io
    out = io.StringIO()
    ok = verify.report(verify.run_checks(evidence(pid1="sh")), out)
    lines = out.getvalue().splitlines()
    assert not ok
    assert len(lines) == len(verify.CHECKS) + 1
    assert lines[-1] == f"{len(verify.CHECKS) - 1} passed, 1 failed"
