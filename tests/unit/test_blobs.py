"""The project's own layer blobs: the same tar gives the same bytes with or without parallel
compression, on any machine (a pinned digest of a fixed input, gzip and zstd: a new library,
level or block size changes it, and so would a CPU whose code path chose other matches), and
every gzip (zstd) reader reads the concatenated members (frames) back as the tar."""
from __future__ import annotations

import gzip
import io
import json
import random
import zlib

import pytest
import zstandard

from builder import blobs

# 40.5 MiB: three blocks, random and repetitive stretches (what compresses and what does not)
SAMPLE_DIFF_ID = "sha256:5aee2fa0429c125d7dbc50ff2679c9459e0aed6bc55c49ed7df44cabe8b05b45"
SAMPLE_DIGEST = "sha256:5d2807c0a749d1f3150918365177c641c97330f15fb74c1ca80809e912811d6b"
SAMPLE_SIZE = 21061308
SAMPLE_ZSTD_DIGEST = "sha256:061abb9840854383ed69324432623fdc8fdb3c20ab62f3e9814a10067f95c7d4"
SAMPLE_ZSTD_SIZE = 20983307


@pytest.fixture(scope="module")
def sample() -> bytes:
    rng = random.Random(20261206)
    return b"".join(rng.randbytes(1 << 19) + (f"line {i} of a layer: usr/lib/python3.12/site-packages/torch/\n"
                                              * 9000).encode() for i in range(40))


def members(data: bytes) -> int:
    count = 0
    while data:
        d = zlib.decompressobj(wbits=31)
        d.decompress(data)
        data = d.unused_data
        count += 1
    return count


def test_the_blob_of_a_fixed_input_is_pinned(sample):
    out = io.BytesIO()
    blob = blobs.compress(io.BytesIO(sample), out.write)
    assert blob == blobs.Blob(diff_id=SAMPLE_DIFF_ID, digest=SAMPLE_DIGEST, size=SAMPLE_SIZE), blobs.scheme()
    assert len(out.getvalue()) == SAMPLE_SIZE


def test_parallel_compression_gives_the_same_bytes(sample):
    out = io.BytesIO()
    with blobs.compressors(2) as pool:
        blob = blobs.compress(io.BytesIO(sample), out.write, pool=pool)
    assert blob.digest == SAMPLE_DIGEST
    assert blobs.digest_of(out.getvalue()) == SAMPLE_DIGEST


def test_the_zstd_blob_of_the_fixed_input_is_pinned_and_the_same_in_parallel(sample):
    out = io.BytesIO()
    with blobs.compressors(2) as pool:
        blob = blobs.compress(io.BytesIO(sample), out.write, pool=pool, compression=blobs.ZSTD)
    assert blob == blobs.Blob(diff_id=SAMPLE_DIFF_ID, digest=SAMPLE_ZSTD_DIGEST, size=SAMPLE_ZSTD_SIZE), \
        blobs.scheme(blobs.ZSTD)
    assert blobs.compress(io.BytesIO(sample), compression=blobs.ZSTD) == blob
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out.getvalue()), read_across_frames=True)
    assert reader.read() == sample  # one frame per block, read back as one stream


def test_one_gzip_member_per_block_read_back_as_one_stream(sample):
    out = io.BytesIO()
    blobs.compress(io.BytesIO(sample), out.write)
    assert members(out.getvalue()) == -(-len(sample) // blobs.BLOCK) == 3
    assert gzip.decompress(out.getvalue()) == sample


def test_an_empty_layer_is_one_empty_member():
    out = io.BytesIO()
    blob = blobs.compress(io.BytesIO(b""), out.write)
    assert gzip.decompress(out.getvalue()) == b""
    assert blob.size == len(out.getvalue()) and blob.diff_id == blobs.digest_of(b"")


def test_the_manifest_names_the_config_by_the_image_id_and_is_one_serialization():
    config = b'{"architecture":"amd64"}'
    layer = blobs.Blob(diff_id="sha256:" + "a" * 64, digest="sha256:" + "b" * 64, size=12)
    text = blobs.manifest(config, [layer])
    assert text == blobs.manifest(config, [layer])
    doc = json.loads(text)
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json" and doc["schemaVersion"] == 2
    assert doc["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                             "digest": blobs.digest_of(config)}
    assert doc["layers"] == [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 12,
                              "digest": "sha256:" + "b" * 64}]
    oci = json.loads(blobs.manifest(config, [layer], blobs.ZSTD))
    assert oci["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert oci["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert oci["config"]["digest"] == blobs.digest_of(config)  # the same config bytes: the same image ID
    assert [layer["mediaType"] for layer in oci["layers"]] == ["application/vnd.oci.image.layer.v1.tar+zstd"]


def test_compressed_blobs_are_remembered_by_diff_id(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert blobs.known() == {}
    one = blobs.Blob(diff_id="sha256:" + "1" * 64, digest="sha256:" + "2" * 64, size=3)
    two = blobs.Blob(diff_id="sha256:" + "3" * 64, digest="sha256:" + "4" * 64, size=5)
    blobs.remember([one])
    blobs.remember([two])
    assert blobs.known() == {one.diff_id: one, two.diff_id: two}
    assert blobs.known(blobs.ZSTD) == {}  # each compression its own index
    assert blobs.scheme() == "gzip:libdeflate-0.8.1:level6:block16MiB"
    assert blobs.scheme(blobs.ZSTD) == "zstd:zstandard-0.25.0:level3:block16MiB"


class Trickle(io.BytesIO):
    """A reader that returns short reads, as the engine store's reassembled tar does at file ends."""

    def read(self, n: int = -1) -> bytes:
        return super().read(min(n, 7919) if n and n > 0 else 7919)


def test_short_reads_cut_the_same_blocks(sample):
    assert blobs.compress(Trickle(sample[:(1 << 20) * 20])) == blobs.compress(io.BytesIO(sample[:(1 << 20) * 20]))
