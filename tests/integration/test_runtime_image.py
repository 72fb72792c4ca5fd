"""The runtime image, built once per session by the real pipeline, run by the real engine."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import pytest

from builder import aptlock, engine, hygiene, normalize, verify
from builder.context import find_ca_bundle
from tests.support import ROOT, TEST_REPOSITORY, make_wheel


def test_tags_name_what_is_inside(runtime_image, docker_client):
    assert runtime_image.refs == [
        f"{TEST_REPOSITORY}:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime",
        f"{TEST_REPOSITORY}:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime-20261128",
        f"{TEST_REPOSITORY}:2.8-cu128-runtime",
    ]
    assert sorted(docker_client.tags_of(runtime_image.image_id)) >= sorted(runtime_image.refs)
    assert not any(t.endswith(":latest") for t in docker_client.tags_of(runtime_image.image_id))


def test_versions_inside_match_the_manifest(runtime_image):
    found = runtime_image.facts
    assert found["torch"] == "2.8.0+cu128"
    assert found["cuda"] == "12.8"
    assert found["cudnn"] == 91002
    assert found["nccl"] == "2.27.3"
    assert found["python"].startswith("3.12.")
    assert (found["os_id"], found["os_version"]) == ("ubuntu", "24.04")


def test_image_config(runtime_image, docker_client, the_manifest):
    config = docker_client.run_config(runtime_image.image_id)
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
    """Every check passes; security-pocket may warn instead (the apt lock grew older than
    verify.POCKET_MAX_AGE_DAYS), which does not fail verify."""
    assert verify_output.returncode == 0
    lines = verify_output.stdout.splitlines()
    for check_id, _ in verify.CHECKS:
        states = ("PASS", "WARN") if check_id == "security-pocket" else ("PASS",)
        assert any(line.startswith(states) and f" {check_id} " in line for line in lines), check_id
    warned = sum(line.startswith("WARN") for line in lines)
    assert f"{len(verify.CHECKS) - warned} passed, {warned} warned, 0 failed" in verify_output.stdout


def test_the_build_ca_reached_no_layer_and_no_history(verify_output, runtime_image, docker_client):
    """The CA bundle pip used on this machine (SSL_CERT_FILE) was looked for in every layer by verify."""
    assert find_ca_bundle(None) is not None, "this machine's builds need a CA bundle; the test assumes one"
    hygiene_line = next(l for l in verify_output.stdout.splitlines() if " hygiene " in l)
    assert hygiene_line.startswith("PASS"), hygiene_line
    history = " ".join(docker_client.history(runtime_image.image_id))
    assert "build-ca" not in history and "PIP_CERT" not in history


def test_the_image_archive_and_the_engine_store_give_one_image_id(runtime_image, docker_client):
    """The build read its layers from the engine's store (root, local overlay2); the image archive
    (`docker save`, what a remote or non-root build reads) of the same raw build normalizes to
    the same image ID and the same layer scans. One save of 7 GB, streamed through the
    normalizer into the scans and a hash, nothing written but the save's temp file."""
    assert docker_client.info.layer_source == "store", docker_client.info.layer_source_reason  # root, local overlay2
    assert runtime_image.layer_source in ("store", ""), runtime_image.layer_source  # "": normalized by an earlier run
    archive_engine = engine.connect("archive")
    epoch = runtime_image.variant.manifest.source_date_epoch
    scans: dict[str, hygiene.LayerScan] = {}
    with archive_engine.layers(runtime_image.raw_id) as (archive, source):
        assert source == "archive"

        def scan(i: int, diff_id: str, files: list) -> None:
            with open(archive.layers[i][0].name, "rb") as data:
                scans[diff_id] = hygiene.scan_files(files, data)

        report = normalize.drain(normalize.normalize_image(archive.config, archive.layers, epoch, on_layer=scan),
                                 lambda chunk: None)
    assert report.image_id == runtime_image.image_id
    assert scans == {d: hygiene.kept(d) for d in report.diff_ids}, "the scans the build kept differ"


def test_the_base_layer_was_imported_normalized(runtime_image, docker_client, the_manifest):
    """mmdebstrap's tar is normalized before `docker import`, so the image's first layer is the
    base's own layer: no build rewrites or re-sends it."""
    base_layers = docker_client.diff_ids(the_manifest.base_ref)
    assert docker_client.diff_ids(runtime_image.image_id)[:1] == base_layers


def test_its_ubuntu_packages_are_the_locked_ones(runtime_image, docker_client, the_manifest):
    """The base's packages, read back with dpkg, are the committed [os] pins (the build checked it)."""
    locked = aptlock.read(aptlock.lock_path(the_manifest)).versions("os")
    assert aptlock.installed(docker_client, runtime_image.image_id) == locked
    assert {"python3.12", "tini", "apt", "ca-certificates"} <= locked.keys()


def test_apt_in_the_image_reads_the_release_and_both_update_pockets(runtime_image, containers):
    """A user's `apt-get install` gets security fixes; no trace of the build's local repository."""
    result = containers.run(runtime_image.image_id, ["sh", "-c", "cat /etc/apt/sources.list.d/*; "
                                                     "ls /etc/apt/sources.list /var/lib/apt/lists 2>&1"])
    assert "Suites: noble noble-updates noble-security" in result.output
    assert "file:" not in result.output and "trusted=yes" not in result.output


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
    image_id = docker_client.build(leaky_context(the_manifest.base_ref, dockerfile, ca.read_bytes()),
                            target="", quiet=True)
    try:
        findings = hygiene.scan_image(docker_client, image_id, ca)
        assert findings, "the leak was not detected"
        assert any("build CA" in f or "build-only CA certificate" in f for f in findings), findings
    finally:
        docker_client.remove_image(image_id, force=True)


@pytest.fixture
def wheels(tmp_path):
    """A local wheel directory: a new package, and a `torch` 2.9.0 that must not replace the image's."""
    for name, version in (("hello_user", "1.0"), ("hello_uv", "1.0"), ("torch", "2.9.0")):
        make_wheel(tmp_path, name, version)
    os.chmod(tmp_path, 0o755)
    return tmp_path


def test_the_user_installs_with_pip_and_uv_and_keeps_them(runtime_image, containers, wheels):
    """pip and uv install as the image's user (no root, no sudo); a new shell imports what they put there."""
    box = containers.start(runtime_image.image_id, command=["sleep", "infinity"],
                           volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}})
    pip = box.exec_run(["pip", "install", "--no-index", "--find-links", "/wheels", "hello_user"])
    assert pip.exit_code == 0, pip.output.decode()
    uv = box.exec_run(["uv", "pip", "install", "--no-index", "--find-links", "/wheels", "hello_uv"])
    assert uv.exit_code == 0, uv.output.decode()
    new_shell = box.exec_run(["bash", "-lc", "id -u; python -c 'import hello_user, hello_uv; print(hello_user.VERSION)'"])
    assert new_shell.output.decode().split() == ["1000", "1.0"], new_shell.output.decode()


def test_an_install_that_would_replace_torch_fails_with_the_reason(runtime_image, containers, wheels):
    """PIP_CONSTRAINT / UV_CONSTRAINT keep torch at the image's version, loudly."""
    box = containers.start(runtime_image.image_id, command=["sleep", "infinity"],
                           volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}})
    for command in (["pip", "install", "--no-index", "--find-links", "/wheels", "torch==2.9.0"],
                    ["uv", "pip", "install", "--no-index", "--find-links", "/wheels", "torch==2.9.0"]):
        result = box.exec_run(command)
        assert result.exit_code != 0, result.output.decode()
        assert "2.8.0" in result.output.decode(), result.output.decode()
    still = box.exec_run(["python", "-c", "import importlib.metadata as m; print(m.version('torch'))"])
    assert still.output.decode().strip() == "2.8.0"  # PyPI's torch: 2.8.0 in its metadata


def test_torchvision_and_torchaudio_are_the_pair_released_with_torch(runtime_image):
    found = runtime_image.facts
    assert (found["torchvision"].split("+")[0], found["torchaudio"].split("+")[0]) == ("0.23.0", "2.8.0")
    assert found["torchvision_op"]["ok"] and found["torchaudio_op"]["ok"], found


def test_gpu_conventions_labels_and_notice(runtime_image, docker_client, containers, the_manifest):
    config = docker_client.run_config(runtime_image.image_id)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=12.0"  # minor-version compatibility: any CUDA 12 driver
    assert "/usr/local/nvidia/lib64" in env["LD_LIBRARY_PATH"].split(":")
    labels = config["Labels"]
    for key in ("source", "url", "vendor", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"] == the_manifest.data["project"][key]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] in (commit, f"{commit}-dirty")
    notice = containers.run(runtime_image.image_id, ["cat", "/usr/share/doc/pytorch-cuda/NOTICE"])
    assert "NVIDIA Software License Agreement" in notice.output
