"""builder.normalize against the real Docker engine (20.10, classic builder), on a tiny image.

The base is a rootfs made from a few host binaries (dash, date, ln, cat) and their libraries,
imported with `docker import`; two `--no-cache` builds on it differ in times and in build-varying
files, and must normalize to one image ID.  Every image and tag made here is removed at teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from builder import engine, rewrite
from builder import normalize as N

pytestmark = pytest.mark.engine

EPOCH = 1_700_000_000
RUN_STEP = (
    "echo hello > /hello.txt && ln /hello.txt /hello2.txt"
    " && date +%N > /var/log/apt/history.log && date +%N > /etc/machine-id"
    " && date +%N > /tmp/scratch && date +%N > /app/__pycache__/x.pyc && echo ok > /app/y"
)


RUN_ID = uuid.uuid4().hex[:12]
LABEL = f"normtest.run={RUN_ID}"  # on the base and every build step: teardown finds them all


class Tracker:
    """Remembers what the tests made in the engine, so teardown can remove all of it, even
    the intermediate images of a build that failed half-way."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.refs: list[str] = []

    def add(self, ref: str) -> str:
        self.refs.append(ref)
        return ref

    def cleanup(self) -> None:
        labelled = self.client.images.list(all=True, filters={"label": LABEL})
        labelled.sort(key=lambda i: i.attrs.get("Created", ""), reverse=True)  # children first
        pending = list(dict.fromkeys([*reversed(self.refs), *(i.id for i in labelled)]))
        for _ in range(5):
            left = []
            for ref in pending:
                try:
                    self.client.images.remove(ref, force=True)
                except docker.errors.ImageNotFound:
                    pass
                except docker.errors.APIError:
                    left.append(ref)  # e.g. a child still exists: retry in the next pass
            pending = left
            if not pending:
                return
        raise AssertionError(f"teardown could not remove images: {pending}")


@pytest.fixture(scope="module")
def eng() -> engine.Engine:
    try:
        return engine.connect()
    except Exception as exc:  # the engine marker: fail, never skip, when no engine answers
        pytest.fail(f"these tests need a Docker engine: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def client(eng: engine.Engine) -> docker.DockerClient:
    """The SDK itself, for the set-up only the tests do (import, build a tiny image)."""
    return eng.client


def load_normalized(eng: engine.Engine, saved: Path, **options) -> N.NormalizeReport:
    return rewrite.load_stream(eng, N.normalize_saved_image(saved, EPOCH, **options))


@pytest.fixture(scope="module")
def tracker(client: docker.DockerClient) -> Iterator[Tracker]:
    t = Tracker(client)
    try:
        yield t
    finally:
        t.cleanup()


def host_rootfs() -> bytes:
    """A tar with dash as /bin/sh, date, ln, cat and the shared libraries they need."""
    files: dict[str, str] = {}
    for tool, dest in (("dash", "bin/sh"), ("date", "bin/date"), ("ln", "bin/ln"), ("cat", "bin/cat")):
        path = shutil.which(tool)
        assert path, f"host lacks {tool}"
        files[dest] = path
        ldd = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"(/\S+) \(0x", ldd):
            files[lib.lstrip("/")] = lib
    dirs = {"etc", "tmp", "var/log/apt", "app/__pycache__"}
    for dest in files:
        dirs.add(os.path.dirname(dest))
    all_dirs = set()
    for d in dirs:
        while d:
            all_dirs.add(d)
            d = os.path.dirname(d)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for d in sorted(all_dirs):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, 1
            tf.addfile(ti)
        for dest, src in sorted(files.items()):
            with open(os.path.realpath(src), "rb") as f:
                data = f.read()
            ti = tarfile.TarInfo(dest)
            ti.size, ti.mode, ti.mtime = len(data), 0o755, 1
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def build_context(base: str, mtime: float) -> io.BytesIO:
    dockerfile = (
        f"FROM {base}\nLABEL {LABEL}\nCOPY data/ /data/\nRUN {RUN_STEP}\nCMD [\"/bin/sh\"]\n"
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        files = (
            ("Dockerfile", dockerfile),
            ("data/a.txt", b"a\n"),
            ("data/b.txt", b"b\n"),
            ("data/" + "long-" * 25 + ".txt", b"long name: a PAX path record\n"),
            ("data/\u00e9t\u00e9.txt", b"non-ASCII name: a PAX path record\n"),
        )
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), mtime
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("data/sym")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "a.txt", mtime
        tf.addfile(link)
    buf.seek(0)
    return buf


def save(eng: engine.Engine, image_id: str, path: Path) -> Path:
    with open(path, "wb") as f:
        for chunk in eng.save_stream(image_id):
            f.write(chunk)
    return path


def saved_parts(path: Path) -> tuple[bytes, list[bytes]]:
    """(config bytes, plain layer tars) of a one-image archive, in either layout."""
    with open(path, "rb") as f, contextlib.ExitStack() as stack:
        archive = N.open_archive(f, stack)
        layers = []
        for layer, offset, size in archive.layers:
            layer.seek(offset)
            layers.append(layer.read(size))
        return archive.config, layers


@pytest.fixture(scope="module")
def two_builds(
    eng: engine.Engine, client: docker.DockerClient, tracker: Tracker, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Two `--no-cache` builds of one Dockerfile, a few seconds apart, saved by ID."""
    base = tracker.add(f"normtest-base:{RUN_ID}")
    repo, tag = base.split(":")
    client.api.import_image_from_data(host_rootfs(), repository=repo, tag=tag, changes=[f"LABEL {LABEL}"])
    tmp = tmp_path_factory.mktemp("builds")
    saved = []
    for i in range(2):
        if i:
            time.sleep(1.1)  # different `created` seconds and mtimes
        image, _ = client.images.build(
            fileobj=build_context(base, time.time()),
            custom_context=True,
            nocache=True,
            rm=True,
            forcerm=True,
        )
        tracker.add(image.id)
        saved.append(save(eng, image.id, tmp / f"raw{i}.tar"))
        config, _ = saved_parts(saved[-1])  # the containerd store names the build by its manifest
        eng.remember("sha256:" + hashlib.sha256(config).hexdigest(), image.id)
    return saved[0], saved[1]


def test_two_builds_differ_raw_but_normalize_to_one_id(
    eng: engine.Engine, tracker: Tracker, two_builds: tuple[Path, Path]
) -> None:
    raw_a, raw_b = two_builds
    cfg_a, _ = saved_parts(raw_a)
    cfg_b, _ = saved_parts(raw_b)
    assert cfg_a != cfg_b, "raw builds must differ, or this test proves nothing"

    rep_a = load_normalized(eng, raw_a)
    tracker.add(rep_a.image_id)
    rep_b = load_normalized(eng, raw_b)
    tracker.add(rep_b.image_id)
    assert rep_a.source_image_id != rep_b.source_image_id
    assert rep_a.image_id == rep_b.image_id
    assert rep_a.diff_ids == rep_b.diff_ids
    assert eng.image_id(rep_a.image_id) == rep_a.image_id

    copy_layer = rep_a.layers[1]
    assert copy_layer.entries_out == 6  # data/ + 5 files, names long and not ASCII included
    run_layer = rep_a.layers[-1]
    assert run_layer.removed >= 3 and run_layer.emptied == 1  # apt log, /tmp, __pycache__
    config = json.loads(rep_a.config)
    assert config["created"] == N.rfc3339(EPOCH)
    assert "container" not in config and "container_config" not in config


def test_normalized_image_runs(
    eng: engine.Engine, client: docker.DockerClient, tracker: Tracker, two_builds: tuple[Path, Path]
) -> None:
    rep = load_normalized(eng, two_builds[0])
    tracker.add(rep.image_id)
    script = (
        "cat /hello2.txt /data/sym /app/y /data/long-*.txt /data/\u00e9t\u00e9.txt;"
        " wc=$(cat /etc/machine-id); echo \"mid=[$wc]\";"
        " for p in /var/log/apt/history.log /tmp/scratch /app/__pycache__/x.pyc; do"
        " test -e $p && echo \"present $p\"; done; true"
    )
    out = eng.run(rep.image_id, ["/bin/sh", "-c", script]).output
    assert out.split("\n") == [
        "hello",
        "a",
        "ok",
        "long name: a PAX path record",
        "non-ASCII name: a PAX path record",
        "mid=[]",
        "",
    ]


def test_load_then_save_gives_back_the_same_bytes(
    eng: engine.Engine,
    client: docker.DockerClient,
    tracker: Tracker,
    two_builds: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    ours = tmp_path / "normalized.tar"
    rep = N.normalize_to_file(two_builds[1], ours, EPOCH)
    tag = tracker.add(f"normtest:{RUN_ID}")
    loaded = load_normalized(eng, two_builds[1], repo_tags=[tag])
    assert loaded.image_id == rep.image_id
    assert eng.image_id(tag) == rep.image_id  # tagged by docker load itself

    resaved = save(eng, rep.image_id, tmp_path / "resaved.tar")
    config, layers = saved_parts(resaved)
    our_config, our_layers = saved_parts(ours)
    assert config == our_config == rep.config
    assert hashlib.sha256(config).hexdigest() == rep.image_id[7:]
    assert ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers] == list(rep.diff_ids)
    assert layers == our_layers, "the engine keeps layer bytes exactly (tar-split)"

    again = N.normalize_to_file(resaved, tmp_path / "again.tar", EPOCH)
    assert again.image_id == rep.image_id and again.source_image_id == rep.image_id


def test_the_layers_the_engine_hands_over_are_the_saved_bytes(
    eng: engine.Engine, two_builds: tuple[Path, Path]
) -> None:
    """Layers as the engine adapter hands them over (reassembled from the local store where the
    probe chose it, else from the image archive) are the saved bytes, and normalizing either
    gives one output."""
    config, layers = saved_parts(two_builds[0])
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    local_overlay2 = eng.info.local and eng.info.storage_driver == "overlay2" and eng.info.image_store == "graphdriver"
    assert (eng.info.layer_source == "store") == local_overlay2, eng.info.layer_source_reason  # root runs the tests
    with eng.layers(image_id) as (archive, source):
        assert source == eng.info.layer_source
        assert archive.config == config
        for (f, offset, size), layer in zip(archive.layers, layers):
            f.seek(offset)
            got = bytearray()
            while len(got) < size and (chunk := f.read(size - len(got))):  # the store reads piece by piece
                got += chunk
            assert got == layer
        via_engine = b"".join(N.normalize_image(archive.config, archive.layers, EPOCH))
    via_save = io.BytesIO()
    N.normalize_to_file(two_builds[0], via_save, EPOCH)
    assert via_engine == via_save.getvalue()


def test_a_relabelled_copy_has_the_labels_and_the_same_layers(
    eng: engine.Engine, tracker: Tracker, two_builds: tuple[Path, Path]
) -> None:
    """What the build record does to a verified image: a copy whose config gains labels."""
    rep = load_normalized(eng, two_builds[0])
    tracker.add(rep.image_id)
    labelled = rewrite.relabel_in_engine(eng, rep.config, {"org.example.checked": "yes"}, EPOCH)
    tracker.add(labelled)
    assert labelled != rep.image_id
    assert eng.image_id(labelled) == labelled
    assert eng.run_config(labelled)["Labels"]["org.example.checked"] == "yes"
    assert eng.diff_ids(labelled) == list(rep.diff_ids)


def test_an_image_the_adapter_never_loaded_is_named_by_its_config_digest(
    eng: engine.Engine, two_builds: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adapter that remembers nothing (another user, a fresh cache) still finds the image ID of
    a build: the engine's own name for it is its config digest on a graph-driver store, and its
    manifest digest on the containerd store, whose streamed archive then names the config."""
    config, _ = saved_parts(two_builds[1])
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    engine_key = eng.ref(image_id)
    assert (engine_key != image_id) == (eng.info.image_store == "containerd")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = engine.Engine(eng.client, eng.info)
    assert fresh.image_id(engine_key) == image_id
