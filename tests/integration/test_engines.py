"""The engines users run: the runtime image built on Docker 28, with the overlay2 store and with the
containerd image store, each started beside the default engine by scripts/start-engine, is the
image the default engine built (same image ID). On the containerd store the layers come through
the image archive (OCI layout, gzip layers) and the image is found by its config digest although
that engine names it by its manifest digest. Each engine is stopped and its data root removed
afterwards (a containerd-store build takes about 28 GB). To make room on CI's disk (about 80 GB),
this module runs last (tests/conftest.py) and first releases the default engine's BuildKit cache:
the runtime stages and pip's downloads no later module builds on; each engine's own BuildKit
cache goes once its runtime is built."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from builder import blobs, diff, engine, pipeline, registry, upload
from tests.support import ROOT, start_registry, stop_registry, tar_of

STORES = {"overlay2": [], "containerd": ["--containerd-store"]}
# the backend each store's build uses: BuildKit (auto) on overlay2; the classic builder on the
# containerd store, where BuildKit built runtime (448 s) but its content store's compressed copy
# of every layer, beside the snapshots, left normalization's archive no room on CI's disk
BACKENDS = {"graphdriver": "auto", "containerd": "classic"}  # by the probe's image_store
REGISTRY_PORT = int(os.environ.get("TEST_ENGINES_REGISTRY_PORT", "5073"))  # and the next port


@pytest.fixture(scope="module")
def room(docker_client, runtime_image) -> None:
    """The default engine's BuildKit cache released (runtime_image itself stays)."""
    docker_client.client.api.prune_builds(all=True)


@pytest.fixture(scope="module", params=list(STORES))
def modern_engine(request, room, monkeypatch_module) -> engine.Engine:
    flags = ["--engine", "28", *STORES[request.param]]
    proc = subprocess.run([str(ROOT / "scripts" / "start-engine"), *flags], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail(f"scripts/start-engine {' '.join(flags)} failed: {proc.stderr[-2000:]}", pytrace=False)
    host = proc.stdout.strip().splitlines()[-1]
    assert host.startswith("DOCKER_HOST=unix://"), proc.stdout
    monkeypatch_module.setenv("DOCKER_HOST", host.split("=", 1)[1])
    try:
        yield engine.connect()
    finally:
        monkeypatch_module.delenv("DOCKER_HOST")
        subprocess.run([str(ROOT / "scripts" / "stop-engine"), *flags, "--purge"], cwd=ROOT, check=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_tiny_image_tests_pass_on_docker_28(modern_engine):
    """tests/integration/test_normalize_engine.py (load, run, round trip, layers handed over,
    relabel) against this engine: the adapter's every path on a tiny image, in seconds."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "integration" / "test_normalize_engine.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == 0


@pytest.fixture(scope="module")
def modern_runtime(modern_engine, the_manifest) -> pipeline.Built:
    """runtime built on this engine by the default backend: BuildKit (through the docker CLI) on the
    overlay2 store, the classic builder on the containerd image store."""
    built = pipeline.build(modern_engine, the_manifest.variant("runtime"), quiet=True,
                           backend=BACKENDS[modern_engine.info.image_store])
    # room for the push: the raw build, its stages and pip's downloads (the normalized image stays)
    modern_engine.remove_image(built.raw_id, force=True)
    modern_engine.client.api.prune_builds(all=True)
    return built


@pytest.fixture(scope="module")
def runtime_digest(runtime_image, docker_client) -> str:
    """The manifest digest a push of runtime from the default engine gives (computed, not pushed)."""
    with blobs.compressors() as pool:
        return upload.describe(docker_client, runtime_image.image_id, pool=pool).digest


def test_runtime_built_on_docker_28_is_the_default_engines_image(modern_engine, modern_runtime, runtime_image,
                                                                 docker_client):
    info = modern_engine.info
    assert info.major >= 28
    built = modern_runtime
    expected_source = "archive" if info.image_store == "containerd" else "store"
    assert built.layer_source == expected_source, info.layer_source_reason
    assert modern_engine.image_id(built.image_id) == built.image_id  # found by its config digest
    assert modern_engine.diff_ids(built.image_id) == json.loads(built.config)["rootfs"]["diff_ids"]
    print(f"Docker {info.server_version} ({info.image_store} store): {built.image_id}; "
          f"default engine: {runtime_image.image_id}")
    if built.image_id != runtime_image.image_id:  # say what differs: config, then files per layer
        out = io.StringIO()
        diff.explain(docker_client, runtime_image.image_id, built.image_id, out, c_b=modern_engine)
        pytest.fail(f"Docker {info.server_version} ({info.image_store} store) built {built.image_id}, "
                    f"the default engine {runtime_image.image_id}; A is the default engine's, B this one's:\n"
                    f"{out.getvalue()}", pytrace=False)


def test_its_push_has_the_digest_the_default_engine_computes(modern_engine, modern_runtime, runtime_image,
                                                              runtime_digest, tmp_path, monkeypatch):
    """The project's own upload from this engine gives the manifest digest that `describe` computed
    from the default engine's copy. On overlay2 it is pushed to a fresh registry and pulled back
    by that digest as the image ID; on the containerd store, whose layers come through its OCI
    archive, the blobs are computed from that archive (`describe`, what the push uploads): the
    registry's and the pulled copy's 8 GB would not fit beside the store on CI's disk."""
    if modern_engine.info.image_store == "containerd":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no blob index: every layer compressed here
        with blobs.compressors() as pool:
            assert upload.describe(modern_engine, modern_runtime.image_id, pool=pool).digest == runtime_digest
        return
    address = start_registry(REGISTRY_PORT, tmp_path)
    try:
        pushed = upload.push(modern_engine, modern_runtime.image_id, address, "ci/engines", ["runtime"],
                             say=lambda line: None)
        print(f"{modern_engine.info.image_store} store: pushed {pushed.digest} in {pushed.seconds} s")
        assert pushed.digest == runtime_digest
        ref = f"{address}/ci/engines@{pushed.digest}"
        assert registry.pull_back(modern_engine, ref, expected_image_id=runtime_image.image_id) == \
            runtime_image.image_id
    finally:
        stop_registry(REGISTRY_PORT, tmp_path)
        shutil.rmtree(tmp_path, ignore_errors=True)  # the registry's 4 GB of blobs



@pytest.fixture(scope="module")
def zstd_pushed(docker_client, tmp_path_factory):
    """A small image of the default engine, pushed by the project with zstd to a fresh registry:
    (its ref by digest, its image ID). Docker 20.10 cannot pull it (tests/integration/test_upload.py)."""
    files = {"Dockerfile": b"FROM scratch\nCOPY a.txt /a.txt\nCOPY b.bin /b.bin\n", "a.txt": b"zstd from the project\n",
             "b.bin": os.urandom(3 << 20)}
    image_id = docker_client.build(io.BytesIO(tar_of(files)), target="", quiet=True)
    folder = tmp_path_factory.mktemp("zstd-registry")
    address = start_registry(REGISTRY_PORT + 1, folder)
    try:
        pushed = upload.push(docker_client, image_id, address, "ci/zstd", ["v1"], compression=blobs.ZSTD,
                             say=lambda line: None)
        yield f"{address}/ci/zstd@{pushed.digest}", image_id
    finally:
        stop_registry(REGISTRY_PORT + 1, folder)
        docker_client.remove_image(image_id, force=True)


def test_it_pulls_the_projects_zstd_push(modern_engine, zstd_pushed):
    """Docker 23 and later pull zstd layers (an OCI manifest): this engine gets the image ID back."""
    ref, image_id = zstd_pushed
    try:
        assert registry.pull_back(modern_engine, ref, expected_image_id=image_id) == image_id
        assert len(modern_engine.diff_ids(image_id)) == 2
    finally:
        if modern_engine.image_exists(image_id):
            modern_engine.remove_image(image_id, force=True)
