"""builder.engine.store on a store laid out the way Docker 20.10's overlay2 keeps it, made here
from a real tar (the tar-split file is written by this test, as the engine would): the
reassembled layer must be the tar, byte for byte. The real engine's store is checked in
tests/integration (its reassembly equals `docker save`)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from builder.engine import store as layerstore


def sample_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("etc/", None), ("etc/a.txt", b"alpha\n"), ("etc/" + "long-" * 30, b"x" * 700),
                           ("etc/empty", b""), ("etc/\u00e9t\u00e9", b"non-ascii\n")):
            ti = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                ti.type = tarfile.DIRTYPE
            else:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        link = tarfile.TarInfo("etc/hard")
        link.type, link.linkname = tarfile.LNKTYPE, "etc/a.txt"
        tf.addfile(link)
    return buf.getvalue()


def make_store(root: Path, layer: bytes) -> str:
    """One-layer image in a store at root; returns the image ID."""
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    cache = "c" * 64
    diff_dir = root / "overlay2" / cache / "diff"
    diff_dir.mkdir(parents=True)
    lines, pos = [], 0
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        for member in tf.getmembers():
            lines.append({"type": 2, "payload": base64.b64encode(layer[pos:member.offset_data]).decode()})
            lines.append({"type": 1, "name": member.name, "size": member.size if member.isfile() else 0})
            if member.isfile():
                (diff_dir / member.name).parent.mkdir(parents=True, exist_ok=True)
                (diff_dir / member.name).write_bytes(layer[member.offset_data:member.offset_data + member.size])
            pos = member.offset_data + (member.size if member.isfile() else 0)
    lines.append({"type": 2, "payload": base64.b64encode(layer[pos:]).decode()})
    db = root / "image" / "overlay2" / "layerdb" / "sha256" / diff_id[7:]
    db.mkdir(parents=True)
    (db / "diff").write_text(diff_id)
    (db / "cache-id").write_text(cache)
    with gzip.open(db / "tar-split.json.gz", "wt") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    content = root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    content.mkdir(parents=True)
    (content / image_id[7:]).write_bytes(config)
    return image_id


class FakeAPI:
    """The one engine call local_image makes (whether to read the store at all is the probe's call)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def inspect_image(self, image_id: str) -> dict:
        return {"Id": image_id}


def read_all(f) -> bytes:
    out = b""
    while chunk := f.read(1000):
        out += chunk
    return out


def test_reassembled_layer_is_the_registered_tar(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    layer = sample_tar()
    image_id = make_store(tmp_path, layer)
    local = layerstore.local_image(FakeAPI(tmp_path), image_id, str(tmp_path))
    assert local is not None
    with local.open_layer(0) as f:
        assert f.size == len(layer)
        assert read_all(f) == layer
        for start in (0, 511, 512, 1700, len(layer) - 1500):  # random access, as the index pass does
            f.seek(start)
            assert read_all(f)[:1500] == layer[start:start + 1500], start


def test_a_store_that_is_not_as_the_engine_says_is_refused(tmp_path):
    image_id = make_store(tmp_path, sample_tar())
    assert layerstore.local_image(FakeAPI(tmp_path), image_id, str(tmp_path / "elsewhere")) is None
    config = next((tmp_path / "image" / "overlay2" / "imagedb" / "content" / "sha256").iterdir())
    good = config.read_bytes()
    config.write_bytes(good + b" ")  # no longer the config whose digest is the image ID
    assert layerstore.local_image(FakeAPI(tmp_path), image_id, str(tmp_path)) is None
    config.write_bytes(good)
    next((tmp_path / "overlay2").glob("*/diff/etc/a.txt")).write_bytes(b"changed size\n")
    local = layerstore.local_image(FakeAPI(tmp_path), image_id, str(tmp_path))
    with pytest.raises(OSError, match="is not 6 bytes"):  # a size that disagrees with its header
        local.open_layer(0)


def test_chain_ids_follow_the_layer_store():
    assert layerstore.chain_ids(["sha256:a"]) == ["sha256:a"]
    second = "sha256:" + hashlib.sha256(b"sha256:a sha256:b").hexdigest()
    assert layerstore.chain_ids(["sha256:a", "sha256:b"]) == ["sha256:a", second]


def test_a_clone_reads_on_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    layer = sample_tar()
    local = layerstore.local_image(FakeAPI(tmp_path), make_store(tmp_path, layer), str(tmp_path))
    with local.open_layer(0) as first:
        first.seek(700)
        with first.clone() as second:
            assert read_all(second) == layer
        assert read_all(first) == layer[700:]


def test_a_forced_store_that_does_not_hold_the_image_fails_and_auto_falls_back(tmp_path, monkeypatch):
    """`--layer-source store` means the store or nothing; auto reads the archive instead."""
    import contextlib

    from builder.engine import Engine
    from builder.engine.probe import probe
    from builder.errors import BuildFailed

    image_id = make_store(tmp_path, sample_tar())
    info = json.loads((Path(__file__).parent.parent / "fixtures" / "docker-info" / "20.10-overlay2.json").read_text())
    info["DockerRootDir"] = str(tmp_path / "pruned")  # the engine says the image is there; its files are not
    client = type("Client", (), {"api": FakeAPI(tmp_path)})()
    saved = []

    @contextlib.contextmanager
    def fake_saved(self, image, tmp_dir=None):
        saved.append(image)
        yield "the archive"

    monkeypatch.setattr(Engine, "saved", fake_saved)
    for requested in ("store", "auto"):
        engine = Engine(client, probe(info, {"Version": "20.10.24"}, "unix:///var/run/docker.sock", requested,
                                      readable=lambda _path: True, buildkit_client=False))
        assert engine.info.layer_source == "store"
        if requested == "store":
            with pytest.raises(BuildFailed, match="--layer-source store: the engine's store .* does not hold"):
                with engine.layers(image_id):
                    pass
            assert saved == []
        else:
            with engine.layers(image_id) as (archive, source):
                assert (archive, source) == ("the archive", "archive")
            assert saved == [image_id]
