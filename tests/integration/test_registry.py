"""builder.registry against a real registry (Debian's docker-registry, started by scripts/start-registry
on 127.0.0.1:$TEST_REGISTRY_PORT with its own storage) and the real engine, on small images made here.

Round trip by tag and by digest with the local copy removed; a registry that is down at first and
comes back within the backoff; a registry that goes away in the middle of a push (a clear error,
and no tag pointing to missing blobs once it is back); nothing listening at all. Every image,
tag and registry process made here is removed at teardown, also when a test fails.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest

from builder import engine, registry
from builder.errors import BuildFailed, UserError
from tests.support import ROOT

pytestmark = pytest.mark.engine

PORT = int(os.environ.get("TEST_REGISTRY_PORT", "5055"))
HOST = f"127.0.0.1:{PORT}"
NAMESPACE = "ci/team"
RUN = uuid.uuid4().hex[:8]
LOCAL = f"pytorch-cuda-regtest-{RUN}"  # local repository of the images made here


class Registry:
    """One docker-registry process on HOST, with storage that survives a stop/start."""

    def __init__(self, directory: Path, storage: Path | None = None):
        self.env = {**os.environ, "REGISTRY_PORT": str(PORT), "REGISTRY_DIR": str(directory)}
        if storage is not None:
            self.env["REGISTRY_STORAGE"] = str(storage)
        self.directory = directory

    def start(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "start-registry")], env=self.env, check=True,
                       capture_output=True, timeout=60)

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "stop-registry")], env=self.env, check=True,
                       capture_output=True, timeout=60)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=1):
                return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def reg(tmp_path_factory, registry_storage):
    probe = Registry(tmp_path_factory.mktemp("probe"))
    if probe.answers():
        pytest.fail(f"something already listens on {HOST}; set TEST_REGISTRY_PORT to a free port", pytrace=False)
    r = Registry(tmp_path_factory.mktemp("registry"), storage=registry_storage)
    r.start()
    try:
        yield r
    finally:
        r.stop()
        shutil.rmtree(r.directory, ignore_errors=True)


class Images:
    """Builds small FROM-scratch images under LOCAL and removes every one of them at the end."""

    def __init__(self, client: engine.Engine):
        self.client = client
        self.ids: list[str] = []

    def build(self, name: str, files: dict[str, bytes]) -> tuple[str, list[str]]:
        """Two tags per image, like the builder's full and dated tags; tagged at once so no
        dangling-image prune by another session takes it away."""
        buf = io.BytesIO()
        dockerfile = "FROM scratch AS small\n" + "".join(f"COPY {f} /{f}\n" for f in files)
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for fname, data in [("Dockerfile", dockerfile.encode()), *files.items()]:
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        image_id = self.client.build(buf, target="small", quiet=True)
        refs = [f"{LOCAL}:{name}", f"{LOCAL}:{name}-20261128"]
        self.client.tag(image_id, refs)
        self.ids.append(image_id)
        return image_id, refs

    def remove_all(self) -> None:
        for image_id in self.ids:
            try:
                self.client.client.images.remove(image_id, force=True)  # every tag and digest ref, and its build parents
            except docker.errors.ImageNotFound:
                pass
        left = [t for i in self.client.client.images.list() for t in i.tags if LOCAL in t]
        self.client.untag(left)


@pytest.fixture(scope="module")
def images(docker_client):
    made = Images(docker_client)
    try:
        yield made
    finally:
        made.remove_all()


def remote_tags(client: engine.Engine, image_id: str) -> list[str]:
    return [t for t in client.client.images.get(image_id).tags if t.startswith(HOST)]


def files(seed: str, size: int = 2048) -> dict[str, bytes]:
    return {"a.bin": os.urandom(size), "b.txt": f"{seed} {RUN}\n".encode()}


# --- the round trip ---------------------------------------------------------------------------


def test_push_then_pull_by_tag_and_by_digest_gives_the_same_image(reg, images, docker_client, capsys):
    image_id, refs = images.build("roundtrip", files("roundtrip"))
    digests = registry.push(docker_client, image_id, refs, HOST, NAMESPACE, retries=2, backoff=0.2)
    out = capsys.readouterr().out
    remote = [registry.remote_ref(r, HOST, NAMESPACE) for r in refs]
    assert remote[0] == f"{HOST}/{NAMESPACE}/{LOCAL}:roundtrip"
    assert sorted(digests) == sorted(remote)
    digest = digests[remote[0]]
    assert digest.startswith("sha256:") and digests[remote[1]] == digest  # one manifest, two tags
    assert "pushing" in out and f"pushed {remote[0]}@{digest}" in out and "2 layer(s) uploaded" in out
    assert "2 already in the registry" in out  # the second tag reuses every layer
    assert remote_tags(docker_client, image_id) == []  # the push-only tags are gone again
    assert sorted(docker_client.client.images.get(image_id).tags) == sorted(refs)

    repo = f"{NAMESPACE}/{LOCAL}"
    assert registry.registry_has_tag(HOST, repo, "roundtrip")
    assert not registry.registry_has_tag(HOST, repo, "no-such-tag")
    assert registry.remote_problems(HOST, repo, "roundtrip", expected_image_id=image_id) == []
    assert registry.remote_problems(HOST, repo, digest, expected_image_id=image_id) == []
    assert registry.fetch_manifest(HOST, repo, "roundtrip")[1] == digest

    docker_client.client.images.remove(image_id, force=True)
    assert not docker_client.image_exists(image_id)
    pulled = docker_client.client.images.pull(f"{HOST}/{repo}", tag="roundtrip")
    assert pulled.id == image_id

    docker_client.client.images.remove(image_id, force=True)
    assert registry.pull_back(docker_client, f"{HOST}/{repo}@{digest}", expected_image_id=image_id) == image_id
    assert docker_client.image_exists(f"{HOST}/{repo}@{digest}")
    with pytest.raises(BuildFailed, match="does not hold the verified image"):
        registry.pull_back(docker_client, f"{HOST}/{repo}@{digest}", expected_image_id="sha256:" + "0" * 64)


def test_remote_problems_reports_a_missing_tag_and_a_wrong_image(reg, images, docker_client):
    image_id, refs = images.build("wrongid", files("wrongid"))
    registry.push(docker_client, image_id, refs[:1], HOST, NAMESPACE, quiet=True, retries=1)
    repo = f"{NAMESPACE}/{LOCAL}"
    assert registry.remote_problems(HOST, repo, "absent") == [f"{HOST}/{repo}:absent: no such manifest"]
    problems = registry.remote_problems(HOST, repo, "wrongid", expected_image_id="sha256:" + "0" * 64)
    assert problems == [f"config digest {image_id} is not the image ID sha256:{'0' * 64}"]


def test_a_local_tag_with_the_remote_name_is_put_back(reg, images, docker_client):
    pushed_id, refs = images.build("keep", files("keep"))
    other_id, _ = images.build("other", files("other"))
    remote = registry.remote_ref(refs[0], HOST, NAMESPACE)
    docker_client.tag(other_id, [remote])
    registry.push(docker_client, pushed_id, refs[:1], HOST, NAMESPACE, quiet=True, retries=1)
    assert docker_client.image_id(remote) == other_id
    assert registry.remote_problems(HOST, f"{NAMESPACE}/{LOCAL}", "keep", expected_image_id=pushed_id) == []


# --- failures ---------------------------------------------------------------------------------


def test_a_registry_down_at_first_is_retried_until_it_answers(reg, images, docker_client, capsys):
    image_id, refs = images.build("late", files("late"))
    reg.stop()
    assert not reg.answers()
    starter = threading.Timer(1.5, reg.start)  # within the backoff: tries at 0, 1, 3, 7 s
    starter.start()
    try:
        digests = registry.push(docker_client, image_id, refs[:1], HOST, NAMESPACE, quiet=True,
                                retries=5, backoff=1.0)
    finally:
        starter.join()
    err = capsys.readouterr().err
    assert "attempt 1/5 failed" in err and "connection refused" in err
    (remote, digest), = digests.items()
    assert registry.remote_problems(HOST, f"{NAMESPACE}/{LOCAL}", "late", expected_image_id=image_id) == []
    assert registry.fetch_manifest(HOST, f"{NAMESPACE}/{LOCAL}", "late")[1] == digest
    assert remote_tags(docker_client, image_id) == []


def test_a_registry_that_goes_away_mid_push_leaves_no_broken_tag(reg, images, docker_client, capsys):
    """The registry is stopped while layer bytes stream. The engine retries the layer uploads
    itself (about 50 s), then the push fails with a clear error; back up on the same storage, the
    registry has either no tag or a complete image, and pushing again finishes the job."""
    image_id, refs = images.build("midpush", {"a.bin": os.urandom(32 << 20), "b.bin": os.urandom(32 << 20)})
    layers = len(docker_client.diff_ids(image_id))
    seen: dict[str, str] = {}
    stopped_with: list[dict[str, str]] = []

    def stop_when_streaming(event: dict) -> None:
        if event.get("id"):
            seen[event["id"]] = event.get("status", "")
        current = (event.get("progressDetail") or {}).get("current", 0)
        if not stopped_with and event.get("status") == "Pushing" and current > (1 << 20):
            reg.stop()
            stopped_with.append(dict(seen))

    try:
        with pytest.raises(BuildFailed) as caught:
            registry.push(docker_client, image_id, refs[:1], HOST, NAMESPACE, retries=2, backoff=0.5,
                          on_event=stop_when_streaming)
    finally:
        reg.start()
    assert stopped_with, "the push finished before the registry could be stopped"
    assert sum(s == "Pushed" for s in stopped_with[0].values()) < layers  # stopped in the middle
    message = str(caught.value)
    remote = registry.remote_ref(refs[0], HOST, NAMESPACE)
    assert f"push {remote} failed after 2 attempt(s)" in message and "connection refused" in message
    assert "no tag points to a partial image" in message
    out = capsys.readouterr().out
    assert "the engine retries it in 5 s" in out and "Retrying in 4" not in out  # one line per wait
    assert remote_tags(docker_client, image_id) == []

    repo = f"{NAMESPACE}/{LOCAL}"
    if registry.registry_has_tag(HOST, repo, "midpush"):
        assert registry.remote_problems(HOST, repo, "midpush", expected_image_id=image_id) == []

    digests = registry.push(docker_client, image_id, refs[:1], HOST, NAMESPACE, quiet=True, retries=2, backoff=0.5)
    assert registry.remote_problems(HOST, repo, "midpush", expected_image_id=image_id) == []
    assert registry.fetch_manifest(HOST, repo, "midpush")[1] == digests[remote]


def test_nothing_listening_fails_after_the_last_retry(images, docker_client, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    image_id, refs = images.build("nowhere", files("nowhere"))
    started = time.monotonic()
    with pytest.raises(BuildFailed, match=r"failed after 3 attempt\(s\): .*connection refused"):
        registry.push(docker_client, image_id, refs, f"127.0.0.1:{free}", "team", quiet=True, retries=3, backoff=0.2)
    assert time.monotonic() - started >= 0.2 + 0.4  # it waited between the tries
    assert capsys.readouterr().err.count("retrying in") == 2
    assert sorted(docker_client.client.images.get(image_id).tags) == sorted(refs)  # only the push-only tags went


def test_an_unknown_image_is_a_user_error(docker_client):
    with pytest.raises(UserError, match="in the engine: build it first"):
        registry.push(docker_client, "sha256:" + "0" * 64, ["x:y"], HOST, "team", quiet=True)


# --- pure parts -------------------------------------------------------------------------------


def test_registry_argument_parsing():
    assert registry.parse_registry("127.0.0.1:5000/team") == ("127.0.0.1:5000", "team")
    assert registry.parse_registry("registry.example.com/ml/images/") == ("registry.example.com", "ml/images")
    assert registry.parse_registry("localhost:5000") == ("localhost:5000", "")
    for bad in ("team/project", "registry.example.com/Team", "host.example.com/a//b-", ""):
        with pytest.raises(UserError):
            registry.parse_registry(bad)
    assert registry.remote_ref("pytorch-cuda:2.8.0-runtime", "h.example.com", "") == "h.example.com/pytorch-cuda:2.8.0-runtime"
    assert registry.remote_ref("old.example.com:5000/x/pytorch-cuda:t", "h:1", "ns") == "h:1/ns/pytorch-cuda:t"
    assert registry.registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry.registry_url("localhost:5000") == "http://localhost:5000"
    assert registry.registry_url("registry.example.com") == "https://registry.example.com"


@pytest.mark.parametrize("message, transient", [
    ('Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused', True),
    ("read tcp 10.0.0.2:51234->10.0.0.9:443: read: connection reset by peer", True),
    ("received unexpected HTTP status: 503 Service Unavailable", True),
    ("received unexpected HTTP status: 502 Bad Gateway", True),
    ("net/http: TLS handshake timeout", True),
    ("unauthorized: authentication required", False),
    ("denied: requested access to the resource is denied", False),
    ("manifest invalid: manifest invalid", False),
    ("An image does not exist locally with the tag: x", False),
])
def test_which_failures_are_retried(message, transient):
    assert registry.is_transient(message) is transient


def test_a_permanent_failure_is_not_retried(capsys):
    calls = []

    def denied():
        calls.append(1)
        raise registry.TransferError("unauthorized: authentication required", transient=False)

    with pytest.raises(BuildFailed, match="docker login"):
        registry._attempt("push x", denied, retries=5, backoff=0.01, err=__import__("sys").stderr)
    assert len(calls) == 1 and capsys.readouterr().err == ""


def test_progress_lines_per_layer():
    out = io.StringIO()
    progress = registry.Progress(out, quiet=False)
    events = [{"status": "The push refers to repository [h/x]"},
              {"status": "Preparing", "id": "l1"}, {"status": "Waiting", "id": "l1"}]
    events += [{"status": "Pushing", "id": "l1", "progressDetail": {"current": n * 100_000_000, "total": 1_000_000_000}}
               for n in range(1, 11)]
    events += [{"status": "Pushing", "id": "l1", "progressDetail": {"current": 1_000_000_000 + 5, "total": 1_000_000_000}}]
    events += [{"status": f"Retrying in {n} second{'s' if n > 1 else ''}", "id": "l2"} for n in (5, 4, 3, 2, 1, 10, 9)]
    events += [{"status": "Pushed", "id": "l1"}, {"status": "Layer already exists", "id": "l3"}]
    for e in events:
        progress.update(e)
    lines = out.getvalue().splitlines()
    assert lines[0] == "The push refers to repository [h/x]"
    assert "  l1: pushing 100.0 MB / 1.0 GB (10%)" in lines and "  l1: pushing 1.0 GB / 1.0 GB (100%)" in lines
    assert sum("l1: pushing" in line for line in lines) == 10  # one per 10 % step, not per event
    assert [line for line in lines if "l2" in line] == ["  l2: upload failed, the engine retries it in 5 s",
                                                         "  l2: upload failed, the engine retries it in 10 s"]
    assert lines[-2:] == ["  l1: Pushed", "  l3: Layer already exists"]
    assert progress.summary() == "1 layer(s) uploaded (1.0 GB), 1 already in the registry"
    quiet = io.StringIO()
    silent = registry.Progress(quiet, quiet=True)
    for e in events:
        silent.update(e)
    assert quiet.getvalue() == ""
