"""`build.py audit` on the session's runtime image against the live Ubuntu archive. Built from the
apt lock, it is behind the pockets only where they moved since the lock was resolved; an image
with a package from noble's release pocket is found with the CVE ids of the fix's changelog
(exit 1). An archive that does not answer, or a source that cannot be checked (pip-audit and an
advisory service are not available here), is exit 2, never clean."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from debian.debian_support import Version

from builder import aptlock, aptresolve
from tests.support import ROOT, dockerfile_context

pytestmark = pytest.mark.engine


def audit(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "audit", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    return proc


def test_an_image_built_from_the_lock_is_behind_only_where_the_pockets_moved_since(runtime_image, the_manifest):
    """Freshly locked, the runtime image has nothing behind the pockets: exit 0. The committed lock
    ages, so the test resolves the pockets again (`lock --apt`'s resolver, nothing written): what
    moved since is exactly what audit must report, with exit 1, and nothing else."""
    committed = aptlock.read(aptlock.lock_path(the_manifest)).versions("os")
    today = aptresolve.resolve(the_manifest, quiet=True).versions("os")
    moved = {name: version for name, version in today.items() if committed.get(name) not in (None, version)}
    proc = audit(runtime_image.refs[0], "--source", "ubuntu", "--json")
    (ubuntu,) = json.loads(proc.stdout)["sources"]
    assert ubuntu["checked"] and ubuntu["source"] == "ubuntu"
    assert {f["package"]: f["fixed"] for f in ubuntu["findings"]} == moved
    assert proc.returncode == (1 if moved else 0), proc.stderr


@pytest.fixture
def outdated_image(runtime_image, docker_client):
    """The runtime image with libssl3t64 put back to noble's release version (3.0.13-0ubuntu3,
    still in the archive's pool): an image built from an older lock, as far as audit can tell."""
    dockerfile = (f"FROM {runtime_image.image_id}\nUSER root\n"
                  f"RUN /usr/lib/apt/apt-helper download-file {OLD_LIBSSL} /tmp/old.deb"
                  f" && dpkg -i /tmp/old.deb && rm /tmp/old.deb\nUSER 1000:1000\n")
    image_id = docker_client.build(dockerfile_context(dockerfile), target="", quiet=True)
    try:
        yield image_id
    finally:
        docker_client.remove_image(image_id)


OLD_LIBSSL = "http://archive.ubuntu.com/ubuntu/pool/main/o/openssl/libssl3t64_3.0.13-0ubuntu3_amd64.deb"


def test_an_outdated_package_is_found_with_its_cve_ids(outdated_image):
    proc = audit(outdated_image, "--source", "ubuntu", "--json")
    assert proc.returncode == 1, proc.stderr
    (ubuntu,) = json.loads(proc.stdout)["sources"]
    findings = {f["package"]: f for f in ubuntu["findings"]}
    assert all(Version(f["fixed"]) > Version(f["installed"]) for f in findings.values())
    assert all(f["where"] in ("noble-updates", "noble-security") for f in findings.values())
    libssl = findings["libssl3t64"]  # OpenSSL has had security updates since noble's release
    assert libssl["installed"] == "3.0.13-0ubuntu3"
    assert libssl["where"] == "noble-security" and libssl["ids"] and all(i.startswith("CVE-") for i in libssl["ids"])


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
