"""A CI runner's user: in the `docker` group, so the engine answers, but /var/lib/docker does not
open. `doctor` says the layers come through the image archive; `build` builds, verifies, records
and tags runtime that way (the same image ID as root's build through the store); `push` sends it
to a registry that wants credentials, found in that user's Docker config alone (no --username):
every request, the registry API checks included, carries them. That registry keeps its blobs in the
session's shared storage and answers on the same address as the release tests' registry (never
both at once), so the release push later mounts the layers pushed here instead of sending 7 GB again.

The user is made for the module and removed after it, with its files; it runs the checkout
copied to a directory it can read, on the system's python3 with the test environment's packages.
"""
from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import bcrypt
import pytest

from builder import record
from tests.support import ROOT, TEST_REPOSITORY
from tests.integration.test_registry import HOST, PORT, Registry

pytestmark = pytest.mark.engine

USER = f"pcbuild{uuid.uuid4().hex[:6]}"
REPOSITORY = f"{TEST_REPOSITORY}-nonroot"
PASSWORD = uuid.uuid4().hex


@pytest.fixture(scope="module")
def builder_user():
    """The user, its home with a Docker config holding the registry's credentials, and a copy of
    the checkout plus the test environment's site-packages it can read (pytest's own temp
    directories are root's alone)."""
    if shutil.which("setpriv") is None or os.getuid() != 0:
        pytest.fail("this test needs root and setpriv (util-linux) to act as another user", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="pytorch-cuda-nonroot-"))
    base.chmod(0o755)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(base / "home"), "--groups", "docker",
                    "--shell", "/bin/sh", USER], check=True)
    try:
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        for name in tracked.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (base / "repo" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, base / "repo" / name)
        site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "docker").is_dir())
        shutil.copytree(site, base / "site", symlinks=True)
        config = base / "home" / ".docker"
        config.mkdir(parents=True)
        auth = base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
        (config / "config.json").write_text(json.dumps({"auths": {HOST: {"auth": auth}}}))
        uid = pwd.getpwnam(USER).pw_uid
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(base / "home"), str(base / "repo")], check=True)
        yield base
    finally:
        subprocess.run(["userdel", USER], check=False)
        shutil.rmtree(base, ignore_errors=True)


def as_user(base: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    # the copy of the checkout has no .git: it names root's revision as an exported source tree would
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(base / "home"), "PYTHONPATH": str(base / "site"),
           "LANG": "C.UTF-8", "SOURCE_REVISION": record.source_revision()}
    proc = subprocess.run(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups",
                           "/usr/bin/python3", "build.py", *args], cwd=base / "repo", env=env,
                          capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory, registry_storage):
    directory = tmp_path_factory.mktemp("auth-registry")
    htpasswd = directory / "htpasswd"
    htpasswd.write_text(f"ci:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")
    r = Registry(directory, storage=registry_storage)
    r.env.update(REGISTRY_PORT=str(PORT), REGISTRY_HTPASSWD=str(htpasswd))
    if r.answers():
        pytest.fail(f"something already listens on {HOST}; set TEST_REGISTRY_PORT to a free port", pytrace=False)
    r.start()
    try:
        yield r
    finally:
        r.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_doctor_says_the_layers_come_through_the_archive(builder_user):
    proc = as_user(builder_user, "doctor")
    assert proc.returncode == 0
    assert "read from the image archive (docker save)" in proc.stdout
    assert "is not readable by this user" in proc.stdout


@pytest.fixture(scope="module")
def user_build(builder_user, runtime_image, docker_client):
    """`build.py build runtime` as the user (the raw build from the engine's cache)."""
    records = builder_user / "home" / "records"
    proc = as_user(builder_user, "build", "runtime", "--repository", REPOSITORY, "--records", str(records))
    try:
        yield proc, records
    finally:
        docker_client.untag([t for tags in docker_client.tags_by_image().values() for t in tags
                             if t.startswith(REPOSITORY + ":")])


def test_the_user_builds_verifies_and_tags_through_the_archive(user_build, runtime_image):
    proc, records = user_build
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layers from the archive" in proc.stdout
    assert f"built {runtime_image.image_id} " in proc.stdout  # root's build, read from the store
    assert "0 failed" in proc.stdout and "tagged " in proc.stdout
    [path] = records.glob("*.record.json")
    assert record.load_record(path)["verified"] is True


def test_the_user_pushes_with_credentials_from_the_docker_config(builder_user, user_build, auth_registry,
                                                               docker_client):
    proc, records = user_build
    assert proc.returncode == 0
    pushed = as_user(builder_user, "push", "runtime", "--repository", REPOSITORY,
                     "--registry", f"{HOST}/team", "--records", str(records), "--quiet")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    [path] = records.glob("*.record.json")
    pushes = record.load_record(path)["pushes"]
    assert pushes and all(p["ref"].startswith(HOST) for p in pushes)
    for p in pushes:
        docker_client.untag([f"{p['ref'].rpartition(':')[0]}@{p['digest']}"])
