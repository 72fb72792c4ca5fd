"""The project's own push (builder/upload.py) against real registries (scripts/start-registry, each
with its own storage) and the real engine, on a small image with a layer of several blocks: one
manifest digest to every registry, the digest `describe` computes without pushing, a pull by that
digest gives the image ID back, a second push uploads nothing, a push to another repository of
the registry mounts the blobs instead, and the layers read through the image archive give the
same blobs as the engine's store. Images, tags and registries made here
are removed at the end, also when a test fails."""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import uuid

import docker.errors
import pytest

from builder import blobs, engine, registry, upload
from builder.errors import BuildFailed
from tests.support import ROOT, start_registry, stop_registry

pytestmark = pytest.mark.engine

PORTS = [int(p) for p in os.environ.get("TEST_UPLOAD_REGISTRY_PORTS", "5071,5072").split(",")]
RUN = uuid.uuid4().hex[:8]
REPO = f"ci/upload-{RUN}"


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    folders = [tmp_path_factory.mktemp(f"upload-registry-{p}") for p in PORTS]
    try:
        yield [start_registry(p, f) for p, f in zip(PORTS, folders)]
    finally:
        for p, f in zip(PORTS, folders):
            stop_registry(p, f)


@pytest.fixture(scope="module")
def small_image(docker_client):
    """Three layers: 40 MiB that compress to three blocks, and two small ones."""
    rng = random.Random(RUN)
    big = b"".join(rng.randbytes(1 << 20) + b"text that compresses " * 50000 for _ in range(20))
    files = {"big.bin": big, "small.txt": f"upload test {RUN}\n".encode(), "other.txt": b"one more layer\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = "FROM scratch\n" + "".join(f"COPY {name} /{name}\n" for name in files)
        for name, data in [("Dockerfile", dockerfile.encode()), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image_id = docker_client.build(buf, target="", quiet=True)
    docker_client.tag(image_id, [f"pytorch-cuda-upload-{RUN}:test"])
    try:
        yield image_id
    finally:
        try:
            docker_client.client.images.remove(image_id, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture(scope="module")
def described(docker_client, small_image):
    return upload.describe(docker_client, small_image)


def test_describe_names_the_config_by_the_image_id_and_blobs_that_decompress_to_the_layers(
        docker_client, small_image, described):
    assert blobs.digest_of(described.config) == docker_client.image_id(small_image)
    assert [b.diff_id for b in described.blobs] == docker_client.diff_ids(small_image)
    assert described.blobs[0].size > 0 and len(described.blobs) == 3


def test_one_manifest_digest_to_every_registry_and_the_pull_gives_the_image_back(
        docker_client, small_image, described, registries):
    digests = []
    for address in registries:
        pushed = upload.push(docker_client, small_image, address, REPO, ["v1"], say=lambda line: None)
        assert pushed.uploaded == 3 and pushed.skipped == 0
        digests.append(pushed.digest)
        assert registry.fetch_manifest(address, REPO, "v1")[1] == pushed.digest
        assert registry.remote_problems(address, REPO, pushed.digest, expected_image_id=small_image) == []
    assert digests == [described.digest] * len(registries)
    ref = f"{registries[0]}/{REPO}@{described.digest}"
    docker_client.remove_image(small_image, force=True)  # the pull must bring every layer back
    try:
        assert registry.pull_back(docker_client, ref, expected_image_id=small_image) == small_image
    finally:
        docker_client.tag(small_image, [f"pytorch-cuda-upload-{RUN}:test"])
        docker_client.untag([ref])


def test_a_second_push_uploads_nothing(docker_client, small_image, registries, described):
    pushed = upload.push(docker_client, small_image, registries[0], REPO, ["v2"], say=lambda line: None)
    assert (pushed.uploaded, pushed.skipped, pushed.digest) == (0, 3, described.digest)
    assert registry.fetch_manifest(registries[0], REPO, "v2")[1] == described.digest


def test_a_push_to_another_repository_mounts_the_blobs_from_the_first(docker_client, small_image, registries,
                                                                     described):
    upload.push(docker_client, small_image, registries[0], REPO, ["v1"], say=lambda line: None)  # there already
    other = f"{REPO}-mirror"
    assert not upload.Registry(registries[0], other).has_blob(described.blobs[0].digest)  # not there until mounted
    pushed = upload.push(docker_client, small_image, registries[0], other, ["v1"], mount_from=REPO,
                         say=lambda line: None)
    assert (pushed.uploaded, pushed.skipped, pushed.digest) == (0, 3, described.digest)
    assert registry.remote_problems(registries[0], other, described.digest, expected_image_id=small_image) == []


def test_zstd_gives_its_own_digest_an_oci_manifest_and_docker_20_cannot_pull_it(docker_client, small_image,
                                                                                 registries):
    """zstd blobs in an OCI manifest: the registry holds them all, and the config is the same bytes
    (the same image ID); Docker 20.10 cannot pull such layers (test_engines pulls them into
    Docker 28). What the README says about which engines pull zstd rests on this."""
    repo = f"{REPO}-zstd"
    expected = upload.describe(docker_client, small_image, compression=blobs.ZSTD)
    pushed = upload.push(docker_client, small_image, registries[1], repo, ["zstd"], compression=blobs.ZSTD,
                         say=lambda line: None)
    assert pushed.digest == expected.digest and pushed.uploaded == 3
    manifest, digest = registry.fetch_manifest(registries[1], repo, "zstd")
    assert digest == expected.digest and manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    assert registry.remote_problems(registries[1], repo, digest, expected_image_id=small_image) == []
    if docker_client.info.major >= 23:
        return
    gzip_ref = f"{registries[1]}/{REPO}@" + upload.push(docker_client, small_image, registries[1], REPO, ["v1"],
                                                        say=lambda line: None).digest
    docker_client.remove_image(small_image, force=True)  # a pull skips layers of an image it has
    try:
        events = docker_client.client.api.pull(f"{registries[1]}/{repo}@{digest}", stream=True, decode=True)
        errors = [e["error"] for e in events if "error" in e]
        assert errors and "failed to register layer" in errors[0], errors  # gzip is what it reads
    finally:  # the gzip copy back, as the other tests use it
        registry.pull_back(docker_client, gzip_ref, expected_image_id=small_image)
        docker_client.tag(small_image, [f"pytorch-cuda-upload-{RUN}:test"])
        docker_client.untag([gzip_ref])


def test_a_registry_that_goes_away_mid_push_gets_no_tag_and_a_second_push_finishes(docker_client, small_image,
                                                                                      tmp_path):
    """The registry is stopped once the first layer is in, while the others stream: the push fails
    naming the registry, no tag is written; back up on the same storage, pushing again uploads only
    what is missing and writes the tag."""
    port, repo = PORTS[-1] + 1, f"{REPO}-fault"
    address = start_registry(port, tmp_path)
    stopped: list[str] = []

    def stop_after_the_first_layer(line: str) -> None:
        if line.startswith("uploaded layer") and not stopped:
            stop_registry(port, tmp_path)
            stopped.append(line)

    try:
        with pytest.raises(BuildFailed) as caught:
            upload.push(docker_client, small_image, address, repo, ["v1"], retries=2,
                        say=stop_after_the_first_layer)
        assert stopped, "the push ended before the registry could be stopped"
        message = str(caught.value)
        assert address in message and "run the push again" in message and "onnection refused" in message, message
        start_registry(port, tmp_path)
        assert registry.fetch_manifest(address, repo, "v1") is None  # no tag names a partial image
        again = upload.push(docker_client, small_image, address, repo, ["v1"], say=lambda line: None)
        assert again.skipped >= 1 and again.uploaded + again.skipped == 3
        assert registry.remote_problems(address, repo, "v1", expected_image_id=small_image) == []
    finally:
        stop_registry(port, tmp_path)


def test_a_registry_that_does_not_answer_is_named_and_nothing_is_pushed(docker_client, small_image):
    with pytest.raises(BuildFailed, match=r"registry 127\.0\.0\.1:\d+ does not answer .*nothing was pushed"):
        upload.push(docker_client, small_image, f"127.0.0.1:{PORTS[-1] + 2}", REPO, ["v1"], say=lambda line: None)


def test_the_image_archive_gives_the_same_blobs_as_the_store(docker_client, small_image, described, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing remembered: every layer compressed again
    with blobs.compressors(2) as pool:
        again = upload.describe(engine.connect("archive"), small_image, pool=pool)
    assert again == described


def test_build_py_digest_prints_what_the_push_gives(small_image, described):
    ref = f"pytorch-cuda-upload-{RUN}:test"
    plain = subprocess.run([sys.executable, "build.py", "digest", ref], cwd=ROOT, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == described.digest
    as_json = json.loads(subprocess.run([sys.executable, "build.py", "digest", ref, "--json"], cwd=ROOT,
                                        capture_output=True, text=True, check=True).stdout)
    assert as_json["manifest_digest"] == described.digest and as_json["image_id"] == small_image
    assert [(x["diff_id"], x["digest"], x["size"]) for x in as_json["layers"]] == \
        [(b.diff_id, b.digest, b.size) for b in described.blobs]
    assert as_json["compression"] == blobs.scheme()
    missing = subprocess.run([sys.executable, "build.py", "digest", f"no-such-image-{RUN}:x"], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no image" in missing.stderr
