"""`build.py audit` on the session's runtime image against the live Ubuntu archive. The base is
bootstrapped from the release pocket, so the pockets hold newer packages (with CVE ids in their
changelogs): findings, exit 1. An archive that does not answer, or a source that cannot be
checked (pip-audit and an advisory service are not available here), is exit 2, never clean."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from debian.debian_support import Version

from tests.support import ROOT

pytestmark = pytest.mark.engine


def audit(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "audit", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    return proc


def test_packages_behind_the_pockets_are_found_with_their_cve_ids(runtime_image):
    proc = audit(runtime_image.refs[0], "--source", "ubuntu", "--json")
    assert proc.returncode == 1, proc.stderr
    (ubuntu,) = json.loads(proc.stdout)["sources"]
    assert ubuntu["checked"] and ubuntu["source"] == "ubuntu"
    findings = {f["package"]: f for f in ubuntu["findings"]}
    assert all(Version(f["fixed"]) > Version(f["installed"]) for f in findings.values())
    assert all(f["where"] in ("noble-updates", "noble-security") for f in findings.values())
    libc = findings["libc6"]  # glibc has had security updates since noble's release
    assert libc["where"] == "noble-security" and libc["ids"] and all(i.startswith("CVE-") for i in libc["ids"])


def test_an_archive_that_does_not_answer_is_not_checked_and_not_clean(runtime_image):
    proc = audit(runtime_image.refs[0], "--source", "ubuntu", "--mirror", "http://127.0.0.1:9/ubuntu")
    assert proc.returncode == 2
    assert "ubuntu: NOT CHECKED: cannot fetch http://127.0.0.1:9/ubuntu/dists/noble-updates/InRelease" in proc.stdout
    assert "clean" not in proc.stdout


def test_the_python_source_says_why_it_was_not_checked(runtime_image):
    proc = audit(runtime_image.refs[0], "--source", "python")
    assert proc.returncode == 2
    assert "python: NOT CHECKED: pip-audit" in proc.stdout


def test_the_python_source_audits_what_the_image_reports_with_a_stand_in_pip_audit(runtime_image, tmp_path):
    """pip-audit cannot reach an advisory service here, so a stand-in named pip-audit takes its
    place: it checks that the requirements it is given are the image's own distributions (torch
    2.8.0 among them) and answers in pip-audit's JSON format with one finding."""
    stand_in = tmp_path / "pip-audit"
    stand_in.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "reqs = open(sys.argv[sys.argv.index('--requirement') + 1]).read().split()\n"
        "assert 'torch==2.8.0' in reqs and '--no-deps' in sys.argv, reqs\n"
        "print(json.dumps({'dependencies': [{'name': 'jinja2', 'version': '3.1.2', 'vulns': [{'id': 'GHSA-x',"
        " 'fix_versions': ['3.1.3'], 'aliases': ['CVE-2024-22195']}]}], 'fixes': []}))\n"
        "sys.exit(1)\n")
    stand_in.chmod(0o755)
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "audit", runtime_image.refs[0], "--source", "python"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 1
    assert "python: 1 finding(s)" in proc.stdout and "CVE-2024-22195" in proc.stdout
