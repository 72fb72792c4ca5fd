"""Image archives as engines save them: the classic layout (manifest.json, plain layer tars) and
the OCI layout the containerd image store writes (index.json → manifest → gzip blobs). Both
must normalize to the same image ID; an archive just written through the same file object
must be read from its start."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import tarfile
import tempfile

import pytest

from builder import normalize as N
from tests.support import tar_of

EPOCH = 1_700_000_000


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_800_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


LAYERS = [layer_tar({"etc/a.txt": b"alpha\n", "var/log/dpkg.log": b"when\n"}), layer_tar({"opt/b": b"b" * 3000})]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config() -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in LAYERS]}}).encode()


archive = tar_of


def classic() -> bytes:
    cfg = config()
    members = {f"{i}/layer.tar": layer for i, layer in enumerate(LAYERS)}
    members[f"{sha(cfg)[7:]}.json"] = cfg
    members["manifest.json"] = json.dumps([{"Config": f"{sha(cfg)[7:]}.json", "RepoTags": None,
                                            "Layers": [f"{i}/layer.tar" for i in range(len(LAYERS))]}]).encode()
    return archive(members)


def oci(compress: bool = True, nested: bool = True) -> bytes:
    """What `docker save` writes on the containerd image store: an index naming an index (or a
    manifest), gzip layer blobs, no manifest.json."""
    cfg = config()
    blobs = {sha(cfg): cfg}
    layers = []
    for layer in LAYERS:
        body = gzip.compress(layer, mtime=0) if compress else layer
        blobs[sha(body)] = body
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(body),
                       "size": len(body)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(cfg),
                                      "size": len(cfg)}, "layers": layers}).encode()
    blobs[sha(manifest)] = manifest
    top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
           "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"}}
    if nested:
        inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [top]}).encode()
        blobs[sha(inner)] = inner
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(inner), "size": len(inner)}
    members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
               "index.json": json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()}
    members.update({f"blobs/sha256/{d[7:]}": body for d, body in blobs.items()})
    return archive(members)


def normalized_id(data: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(data)
        f.flush()
        return N.normalize_to_file(f.name, io.BytesIO(), EPOCH).image_id


def test_the_oci_layout_with_gzip_layers_normalizes_like_the_classic_one():
    expected = normalized_id(classic())
    assert normalized_id(oci(compress=True, nested=True)) == expected
    assert normalized_id(oci(compress=False, nested=False)) == expected


def test_an_archive_just_written_through_the_same_file_is_read_from_its_start():
    """The save path writes `docker save` into a temp file and reads it through the same object."""
    with tempfile.TemporaryFile() as f, contextlib.ExitStack() as stack:
        f.write(oci())
        f.flush()  # the position is now at the end
        found = N.open_archive(f, stack)
        assert sha(found.config) == sha(config())
        assert len(found.layers) == 2


def test_a_layer_that_does_not_decompress_to_its_diff_id_is_refused():
    cfg = json.loads(config())
    cfg["rootfs"]["diff_ids"][0] = "sha256:" + "0" * 64
    bad = oci().replace(config(), json.dumps(cfg).encode().ljust(len(config())))
    with tempfile.TemporaryFile() as f, contextlib.ExitStack() as stack:
        f.write(bad)
        with pytest.raises(N.NormalizeError, match="blobs/sha256/.*does not decompress to sha256:0000"):
            N.open_archive(f, stack)


def test_an_archive_of_neither_layout_says_so():
    with tempfile.TemporaryFile() as f, contextlib.ExitStack() as stack:
        f.write(archive({"something.txt": b"x"}))
        with pytest.raises(N.NormalizeError, match="neither manifest.json nor index.json"):
            N.open_archive(f, stack)


def top_digest(data: bytes) -> str:
    """What the containerd image store calls the image: the digest index.json points to."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return json.loads(tar.extractfile("index.json").read())["manifests"][0]["digest"]


class Tripwire(io.RawIOBase):
    """An archive stream that fails the test when read past ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int):
        self.data, self.limit, self.pos = data, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), len(self.data) - self.pos)
        assert self.pos + n <= self.limit or n == 0, "read into the layers"
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("nested", [False, True])
def test_the_config_digest_is_found_from_the_engines_key(nested):
    data = oci(nested=nested)
    assert N.config_digest(io.BytesIO(data), top_digest(data)) == sha(config())
    assert N.config_digest(io.BytesIO(data), "sha256:" + "0" * 64) is None  # a key the archive does not hold


def test_the_config_digest_is_read_without_reading_the_layers():
    """Manifest and config first (as the engine writes them), then a layer: reading stops before it."""
    data = oci(nested=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    small = {n: b for n, b in members.items() if not n.startswith("blobs/") or b.startswith(b"{")}
    layers = {n: b + b"\0" * (1 << 20) for n, b in members.items() if n not in small}
    reordered = tar_of({**small, **layers})
    limit = len(tar_of(small)) + tarfile.RECORDSIZE  # the small members and tarfile's read-ahead
    stream = io.BufferedReader(Tripwire(reordered, limit), buffer_size=512)
    assert N.config_digest(stream, top_digest(data)) == sha(config())
