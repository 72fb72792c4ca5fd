"""Layers as a registry stores them: blobs the project compresses itself, so that one image gives
one set of blobs, and one manifest digest, whatever engine or machine pushes it.

An engine's `docker push` compresses with its own Go version's gzip, and Docker 20.10 and 28 give
different bytes for the same layer. Here every layer tar is cut into fixed 16 MiB blocks, each
compressed on its own, and the blocks are concatenated. gzip (the default): libdeflate (the
`deflate` wheel, pinned in pyproject.toml) at one level; a multi-member gzip file, which every
gzip reader (Go's included, so every engine) reads as one stream. zstd (an option): libzstd as
the `zstandard` wheel (pinned) bundles it, one frame per block; a multi-frame zstd stream, which
Docker 23 and later and containerd 1.5 and later pull, and Docker 20.10 does not. Blocks compress
in parallel; the output depends only on the tar, the block size, the level and the library's
version (their CPU-specific code speeds up the same computation, it does not choose other
matches), and unit tests pin the digest of a fixed input so a change of any of them is caught.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import BinaryIO

import deflate
import zstandard

from builder import cache

BLOCK = 16 << 20


def _gzip_block(block: bytes) -> bytes:
    return deflate.gzip_compress(block, GZIP.level)


def _zstd_block(block: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD.level, write_checksum=True, write_content_size=True).compress(block)


@dataclass(frozen=True)
class Compression:
    """One way to compress layers, and the manifest that names such layers: gzip blobs go in a
    Docker schema 2 manifest (every engine pulls it), zstd blobs in an OCI image manifest."""

    name: str
    library: str  # the pinned wheel whose version the bytes depend on
    implementation: str  # what that wheel compresses with, as the scheme names it
    level: int
    block: Callable[[bytes], bytes]  # a module-level function: it runs in the compressor processes
    layer_type: str
    config_type: str
    manifest_type: str


GZIP = Compression("gzip", "deflate", "libdeflate", 6, _gzip_block, "application/vnd.docker.image.rootfs.diff.tar.gzip",
                   "application/vnd.docker.container.image.v1+json",
                   "application/vnd.docker.distribution.manifest.v2+json")
ZSTD = Compression("zstd", "zstandard", "zstandard", 3, _zstd_block, "application/vnd.oci.image.layer.v1.tar+zstd",
                   "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.manifest.v1+json")
COMPRESSIONS = {c.name: c for c in (GZIP, ZSTD)}


def scheme(compression: Compression = GZIP) -> str:
    """What the blobs' bytes depend on besides the layer: recorded beside each digest."""
    return (f"{compression.name}:{compression.implementation}-{version(compression.library)}:"
            f"level{compression.level}:block{BLOCK >> 20}MiB")


@dataclass(frozen=True)
class Blob:
    diff_id: str  # sha256 of the uncompressed tar (the image config's rootfs entry)
    digest: str   # sha256 of the compressed bytes (what the manifest names and the registry stores)
    size: int


def workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@contextlib.contextmanager
def compressors(processes: int | None = None) -> Iterator[concurrent.futures.Executor]:
    """Processes that compress blocks (libdeflate's binding holds the GIL, so threads would take
    turns); forkserver: the builder's own threads (the engine client's) are not forked."""
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(processes or workers(), mp_context=context) as pool:
        yield pool


def _blocks(reader: BinaryIO) -> Iterator[bytes]:
    """Whole BLOCK-sized blocks (the last one shorter), however the reader cuts its reads: the
    block boundaries are part of the output."""
    while True:
        parts, want = [], BLOCK
        while want:
            data = reader.read(want)
            if not data:
                break
            parts.append(data)
            want -= len(data)
        if not parts:
            return
        yield b"".join(parts)


def compress(reader: BinaryIO, sink: Callable[[bytes], None] | None = None, *,
             pool: concurrent.futures.Executor | None = None, compression: Compression = GZIP) -> Blob:
    """Compress one layer tar into its blob, handed to sink in order; the blob's digests and size.
    With a pool (compressors()), blocks compress in parallel, at most two per worker in flight."""
    diff_id, digest, size = hashlib.sha256(), hashlib.sha256(), 0
    in_flight = 2 * workers() if pool else 1
    pending: deque[concurrent.futures.Future[bytes]] = deque()

    def submit(block: bytes) -> None:
        if pool is None:
            done: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            done.set_result(compression.block(block))
            pending.append(done)
        else:
            pending.append(pool.submit(compression.block, block))

    def drain_one() -> None:
        nonlocal size
        member = pending.popleft().result()
        digest.update(member)
        size += len(member)
        if sink:
            sink(member)

    empty = True
    for block in _blocks(reader):
        empty = False
        diff_id.update(block)
        submit(block)
        while len(pending) >= in_flight:
            drain_one()
    if empty:  # an empty layer is still one gzip member (zstd frame)
        submit(b"")
    while pending:
        drain_one()
    return Blob(diff_id=f"sha256:{diff_id.hexdigest()}", digest=f"sha256:{digest.hexdigest()}", size=size)


def manifest(config: bytes, blobs: list[Blob], compression: Compression = GZIP) -> bytes:
    """The image manifest (Docker schema 2 for gzip, which every engine pulls; OCI for zstd),
    serialized one way only: its digest is the registry digest users pin."""
    doc = {
        "schemaVersion": 2,
        "mediaType": compression.manifest_type,
        "config": {"mediaType": compression.config_type, "size": len(config), "digest": digest_of(config)},
        "layers": [{"mediaType": compression.layer_type, "size": b.size, "digest": b.digest} for b in blobs],
    }
    return json.dumps(doc, indent=3).encode() + b"\n"


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# --- what was compressed before: diff ID → blob, per scheme (a layer's blob never changes) ---

def _index_path(compression: Compression):
    return cache.path("blobs", f"{scheme(compression).replace(':', '-')}.json")


def known(compression: Compression = GZIP) -> dict[str, Blob]:
    """Blobs compressed before on this machine, by diff ID (empty when none or unreadable)."""
    try:
        entries = json.loads(_index_path(compression).read_text())
    except (OSError, ValueError):
        return {}
    return {d: Blob(diff_id=d, digest=e["digest"], size=e["size"]) for d, e in entries.items()
            if isinstance(e, dict) and {"digest", "size"} <= e.keys()}


def remember(blobs: list[Blob], compression: Compression = GZIP) -> None:
    """Add blobs to the index (written whole, then renamed: a reader never sees half an index)."""
    entries = {d: {"digest": b.digest, "size": b.size} for d, b in known(compression).items()}
    entries |= {b.diff_id: {"digest": b.digest, "size": b.size} for b in blobs}
    path = _index_path(compression)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, path)
