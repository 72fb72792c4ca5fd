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
