"""The runtime image, built once per session by the real pipeline, run by the real engine."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile

import pytest

from builder import aptlock, engine, hygiene, layerstore, normalize, verify
from builder.context import find_ca_bundle
from tests.support import ROOT, TEST_REPOSITORY


def test_tags_name_what_is_inside(runtime_image, docker_client):
    assert runtime_image.refs == [
        f"{TEST_REPOSITORY}:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime",
        f"{TEST_REPOSITORY}:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime-20261128",
        f"{TEST_REPOSITORY}:2.8-cu128-runtime",
    ]
    assert sorted(engine.tags_of(docker_client, runtime_image.image_id)) >= sorted(runtime_image.refs)
    assert not any(t.endswith(":latest") for t in engine.tags_of(docker_client, runtime_image.image_id))


def test_versions_inside_match_the_manifest(runtime_image):
    found = runtime_image.facts
    assert found["torch"] == "2.8.0+cu128"
    assert found["cuda"] == "12.8"
    assert found["cudnn"] == 91002
    assert found["nccl"] == "2.27.3"
    assert found["python"].startswith("3.12.")
    assert (found["os_id"], found["os_version"]) == ("ubuntu", "24.04")


def test_image_config(runtime_image, docker_client, the_manifest):
    config = docker_client.api.inspect_image(runtime_image.image_id)["Config"]
    assert config["User"] == f"{the_manifest.user['uid']}:{the_manifest.user['uid']}"
    assert config["Entrypoint"][:3] == ["/usr/bin/tini", "-g", "--"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in config["Env"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in config["Env"]
    assert config["Labels"]["pytorch-cuda.cudnn"] == "9.10.2.21"
    assert config["Labels"]["org.opencontainers.image.version"] == "2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime"


@pytest.fixture(scope="module")
def verify_output(runtime_image) -> subprocess.CompletedProcess:
    """`build.py verify` on the runtime image, run once: it is the slowest thing we ask of it."""
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "verify", runtime_image.refs[0]],
                          capture_output=True, text=True, cwd=ROOT)
    print(proc.stdout, proc.stderr)
    return proc


def test_verify_passes_every_check(verify_output):
    assert verify_output.returncode == 0
    lines = verify_output.stdout.splitlines()
    for check_id, _ in verify.CHECKS:
        assert any(line.startswith("PASS") and f" {check_id} " in line for line in lines), check_id
    assert f"{len(verify.CHECKS)} passed, 0 failed" in verify_output.stdout


def test_the_build_ca_reached_no_layer_and_no_history(verify_output, runtime_image, docker_client):
    """The CA bundle pip used on this machine (SSL_CERT_FILE) was looked for in every layer by verify."""
    assert find_ca_bundle(None) is not None, "this machine's builds need a CA bundle; the test assumes one"
    hygiene_line = next(l for l in verify_output.stdout.splitlines() if " hygiene " in l)
    assert hygiene_line.startswith("PASS"), hygiene_line
    history = " ".join(h["CreatedBy"] for h in docker_client.api.history(runtime_image.image_id))
    assert "build-ca" not in history and "PIP_CERT" not in history


def test_reading_the_engine_store_and_docker_save_normalize_alike(runtime_image, docker_client):
    """The build read its layers from the engine's store; normalizing `docker save` of the same
    raw build gives the same image ID (a remote engine takes that path)."""
    assert layerstore.local_image(docker_client.api, runtime_image.raw_id) is not None
    with tempfile.NamedTemporaryFile(prefix="pytorch-cuda-test-", suffix=".tar") as saved, \
            open(os.devnull, "wb") as sink:  # 7 GB: removed on the way out, even on failure
        for chunk in docker_client.api.get_image(runtime_image.raw_id):
            saved.write(chunk)
        saved.flush()
        epoch = runtime_image.variant.manifest.source_date_epoch
        assert normalize.normalize_to_file(saved.name, sink, epoch).image_id == runtime_image.image_id


def test_the_base_layer_was_imported_normalized(runtime_image, docker_client, the_manifest):
    """mmdebstrap's tar is normalized before `docker import`, so the image's first layer is the
    base's own layer: no build rewrites or re-sends it."""
    base_layers = docker_client.api.inspect_image(the_manifest.base_ref)["RootFS"]["Layers"]
    assert docker_client.api.inspect_image(runtime_image.image_id)["RootFS"]["Layers"][:1] == base_layers


def test_its_ubuntu_packages_are_the_recorded_ones(runtime_image, docker_client, the_manifest):
    """The base's packages, read back with dpkg, are the committed [os] record (the build checked it)."""
    recorded = aptlock.read(aptlock.lock_path(the_manifest))["os"]
    assert aptlock.installed(docker_client, runtime_image.image_id) == recorded
    assert {"python3.12", "tini", "apt", "ca-certificates"} <= recorded.keys()


def test_verify_reads_the_scans_the_build_made(runtime_image, docker_client):
    """The build scanned each layer as it normalized it, so verify saves no image; those scans
    equal a scan of the image as `docker save` gives it now."""
    diff_ids = docker_client.api.inspect_image(runtime_image.image_id)["RootFS"]["Layers"]
    kept = [hygiene.kept(d) for d in diff_ids]
    assert all(scan is not None for scan in kept), "a layer of the build has no kept scan"
    assert hygiene.scan_saved(engine.saved_stream(docker_client, runtime_image.image_id)) == kept


def leaky_context(base: str, dockerfile: str, ca: bytes) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.replace("BASE", base).encode()), ("build-ca.pem", ca)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.mark.parametrize("dockerfile", [
    # copied under another name, then "removed" in a later layer: still shipped
    "FROM BASE\nCOPY build-ca.pem /etc/pip-ca.crt\nRUN rm /etc/pip-ca.crt\n",
    # merged into the system store, the way a careless Dockerfile trusts a proxy
    "FROM BASE\nUSER root\nCOPY build-ca.pem /usr/local/share/ca-certificates/proxy.crt\n"
    "RUN update-ca-certificates >/dev/null\n",
], ids=["copied-then-deleted", "merged-into-system-store"])
def test_a_leaky_build_is_caught(runtime_image, docker_client, the_manifest, dockerfile):
    ca = find_ca_bundle(None)
    image_id = engine.build(docker_client, leaky_context(the_manifest.base_ref, dockerfile, ca.read_bytes()),
                            target="", quiet=True)
    try:
        findings = hygiene.scan_image(docker_client, image_id, ca)
        assert findings, "the leak was not detected"
        assert any("build CA" in f or "build-only CA certificate" in f for f in findings), findings
    finally:
        docker_client.images.remove(image_id, force=True)
