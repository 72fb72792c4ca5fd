"""Each verify check on reported facts: passes for a good image, fails (with the reason) for a bad one;
the security-pocket check warns, without failing, when the apt lock has grown old (on a fixed clock)."""
from __future__ import annotations

import copy
import io
from datetime import datetime, timedelta, timezone

import pytest

from builder import aptlock, engine, manifest, render, verify
from tests.support import ROOT

GOOD_FACTS = {
    "python": "3.12.3", "os_id": "ubuntu", "os_version": "24.04", "uid": 1000, "user": "user", "pid1": "tini",
    "env": {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            "NVIDIA_REQUIRE_CUDA": "cuda>=12.0", "LD_LIBRARY_PATH": "/usr/local/nvidia/lib64",
            "PIP_CONSTRAINT": "/etc/pytorch-cuda/constraints.txt"},
    "installs": {"site_packages_writable": True, "bin_writable": True,
                 "pinned": ["nvidia-cublas-cu12", "torch", "torchaudio", "torchvision", "triton"]},
    "packages": {"numpy": "2.5.5", "nvidia-ml-py": "13.615.71", "jsonschema": "4.26.0", "uv": "0.13.9"},
    "torch": "2.8.0+cu128", "cuda": "12.8", "cudnn": 91002, "nccl": "2.27.3", "triton": "3.4.0",
    "torchvision": "0.23.0+cu128", "torchaudio": "2.8.0+cu128",
    "torchvision_op": {"ok": True, "detail": "nms kept boxes [0, 2] (expected [0, 2])"},
    "torchaudio_op": {"ok": True, "detail": "lfilter settled at 1.0000 (expected 1.0)"},
    "pip_check": {"exit_code": 0, "output": "No broken requirements found."},
    "compile": {"ok": True, "error": None},
}
RESOLVED = datetime(2026, 12, 4, 17, 4, 9, tzinfo=timezone.utc)  # when `lock --apt` read the pockets
APT_OS = {"libc6": "2.39-0ubuntu8.6", "tini": "0.19.0-1build3", "openssl": "3.0.13-0ubuntu3.6"}
APT_SSH = {"openssh-server": "1:9.6p1-3ubuntu13.14", "openssh-sftp-server": "1:9.6p1-3ubuntu13.14"}
LOCK_PATH = ROOT / "manifests" / "locks" / "apt-ubuntu24.04.txt"


def apt_lock(resolved: datetime | None = RESOLVED) -> aptlock.Lock:
    pins = {section: {n: aptlock.Pin(n, v) for n, v in packages.items()}
            for section, packages in (("os", APT_OS), ("ssh", APT_SSH))}
    return aptlock.Lock(LOCK_PATH, pins, resolved)


def evidence(variant: str = "runtime", **changes) -> verify.Evidence:
    """A good image's evidence, checked three hours after the lock was resolved; changes go into the facts."""
    v = manifest.load().variant(variant)
    facts = copy.deepcopy(GOOD_FACTS)
    findings = changes.pop("findings", [])
    apt_installed = changes.pop("apt_installed", dict(APT_OS))
    facts.update(changes)
    config = {"Labels": {**render.common_labels(v), "org.opencontainers.image.revision": "e4b7d4e" * 5}}
    return verify.Evidence(variant=v, facts=facts, config=config, findings=findings, apt_installed=apt_installed,
                           apt_lock=apt_lock(), checked_at=RESOLVED + timedelta(hours=3))


def result(e: verify.Evidence, check_id: str) -> verify.CheckResult:
    return next(r for r in verify.run_checks(e) if r.id == check_id)


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
    ({"packages": {"numpy": "1.26.4", "nvidia-ml-py": "13.615.71", "jsonschema": "4.26.0", "uv": "0.13.9"}},
     "python-packages", "numpy 1.26.4 (manifest: 2.5.5)"),
    ({"pip_check": {"exit_code": 1, "output": "torch 2.8.0 requires sympy, which is not installed."}},
     "pip-check", "requires sympy"),
    ({"compile": {"ok": False, "error": "InvalidCxxCompiler: No working C++ compiler found"}},
     "torch-compile", "InvalidCxxCompiler"),
    ({"uid": 0, "user": "root"}, "non-root-user", "runs as root"),
    ({"pid1": "python"}, "tini-pid1", "PID 1 is python"),
    ({"env": {**GOOD_FACTS["env"], "NVIDIA_VISIBLE_DEVICES": None}}, "nvidia-env", "None"),
    ({"env": {**GOOD_FACTS["env"], "NVIDIA_REQUIRE_CUDA": "cuda>=12.8"}}, "nvidia-env",
     "NVIDIA_REQUIRE_CUDA=cuda>=12.8 (expected cuda>=12.0)"),
    ({"env": {**GOOD_FACTS["env"], "LD_LIBRARY_PATH": None}}, "nvidia-env", "lacks /usr/local/nvidia/lib64"),
    ({"installs": {**GOOD_FACTS["installs"], "site_packages_writable": False}}, "user-installs",
     "not writable by the image's user"),
    ({"installs": {**GOOD_FACTS["installs"], "pinned": ["torch"]}}, "user-installs",
     "does not pin torchvision, torchaudio, triton"),
    ({"torchaudio": "2.11.0"}, "vision-audio", "torchaudio 2.11.0 (manifest: 2.8.0, released with torch 2.8.0)"),
    ({"torchvision_op": {"ok": False, "detail": "nms kept boxes [0] (expected [0, 2])"}}, "vision-audio",
     "torchvision: nms kept boxes [0]"),
    ({"torchaudio": None, "torchaudio_error": "OSError: libtorchaudio.so: undefined symbol"}, "vision-audio",
     "undefined symbol"),
    ({"findings": ["copy of the build CA bundle: /etc/pip.pem"]}, "hygiene", "/etc/pip.pem"),
    ({"apt_installed": {**APT_OS, "libc6": "2.39-0ubuntu8"}}, "security-pocket", "libc6: 2.39-0ubuntu8.6 -> 2.39-0ubuntu8"),
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


def test_an_image_without_a_revision_label_fails():
    e = evidence()
    del e.config["Labels"]["org.opencontainers.image.revision"]
    assert "no org.opencontainers.image.revision label" in failed(e)["labels"]


def test_report_prints_one_line_per_check_and_a_summary(capsys):
    out = io.StringIO()
    ok = verify.report(verify.run_checks(evidence(pid1="sh")), out)
    lines = out.getvalue().splitlines()
    assert not ok
    assert len(lines) == len(verify.CHECKS) + 1
    assert lines[-1] == f"{len(verify.CHECKS) - 1} passed, 0 warned, 1 failed"


def test_the_ubuntu_packages_as_the_lock_pinned_them_pass_with_the_date():
    r = result(evidence(), "security-pocket")
    assert (r.ok, r.warn, r.state) == (True, False, "PASS")
    assert r.detail == "3 Ubuntu packages as `lock --apt` pinned them on 2026-12-04 (0 days ago)"


def test_a_flavor_must_have_its_own_section_too():
    assert result(evidence("ssh", apt_installed={**APT_OS, **APT_SSH}), "security-pocket").ok
    r = result(evidence("ssh", apt_installed=dict(APT_OS)), "security-pocket")
    assert not r.ok and "openssh-server: gone (was 1:9.6p1-3ubuntu13.14)" in r.detail
    r = result(evidence(apt_installed={**APT_OS, **APT_SSH}), "security-pocket")  # runtime has no [ssh]
    assert not r.ok and "openssh-server: new (1:9.6p1-3ubuntu13.14)" in r.detail


def test_a_lock_older_than_the_threshold_warns_and_does_not_fail_verify():
    e = evidence()
    e.checked_at = RESOLVED + timedelta(days=verify.POCKET_MAX_AGE_DAYS, hours=1)
    r = result(e, "security-pocket")
    assert (r.ok, r.warn, r.state) == (True, True, "WARN")
    assert f"({verify.POCKET_MAX_AGE_DAYS} days ago)" in r.detail
    assert "`python build.py lock --apt`, then rebuild" in r.detail
    out = io.StringIO()
    assert verify.report(verify.run_checks(e), out) is True
    lines = out.getvalue().splitlines()
    assert any(line.startswith("WARN  security-pocket ") for line in lines)
    assert lines[-1] == f"{len(verify.CHECKS) - 1} passed, 1 warned, 0 failed"


def test_the_threshold_itself_still_passes():
    e = evidence()
    e.checked_at = RESOLVED + timedelta(days=verify.POCKET_MAX_AGE_DAYS)
    r = result(e, "security-pocket")
    assert r.ok and not r.warn and f"({verify.POCKET_MAX_AGE_DAYS} days ago)" in r.detail


def test_a_lock_without_a_resolved_date_warns():
    e = evidence()
    e.apt_lock = apt_lock(resolved=None)
    r = result(e, "security-pocket")
    assert r.state == "WARN" and "no resolved date" in r.detail and "python build.py lock --apt" in r.detail


def test_packages_that_differ_fail_even_when_the_lock_is_old():
    e = evidence(apt_installed={**APT_OS, "tini": "0.19.0-1"})
    e.checked_at = RESOLVED + timedelta(days=90)
    r = result(e, "security-pocket")
    assert r.state == "FAIL" and "tini: 0.19.0-1build3 -> 0.19.0-1" in r.detail
    assert "manifests/locks/apt-ubuntu24.04.txt" in r.detail


def test_many_differences_show_the_first_few():
    e = evidence(apt_installed={**APT_OS, **{f"extra{i}": "1.0" for i in range(9)}})
    r = result(e, "security-pocket")
    assert not r.ok and "extra4: new (1.0)" in r.detail and "extra5" not in r.detail and "... and 4 more" in r.detail


def test_an_empty_lock_or_unread_packages_fail():
    e = evidence()
    e.apt_lock = aptlock.Lock(LOCK_PATH, {})
    assert "pins no Ubuntu packages" in result(e, "security-pocket").detail
    e = evidence(apt_installed=None)
    e.apt_error = "dpkg-query failed in img: no such file"
    r = result(e, "security-pocket")
    assert not r.ok and r.detail == "could not check: dpkg-query failed in img: no such file"


def test_dpkg_that_fails_in_the_image_is_reported_not_raised():
    class FakeEngine:
        def run(self, image, command, **kwargs):
            return engine.RunResult(exit_code=127, output="dpkg-query: not found")

    installed, why = verify.apt_packages(FakeEngine(), "img")  # type: ignore[arg-type]
    assert installed is None and "dpkg-query failed in img" in why and "not found" in why
