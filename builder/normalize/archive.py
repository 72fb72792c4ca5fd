"""Image archives as engines write them (`docker save`), read into a config and plain layer tars.

Two layouts exist in the field: the classic one (``manifest.json`` naming a config file and
uncompressed ``layer.tar`` files; Docker up to 24, and the overlay2 store after) and the OCI
image layout (``index.json`` → manifest → blobs, layers often gzip-compressed; the containerd
image store of Docker 25+). Docker 25+ writes both into one archive. ``manifest.json`` is
preferred when present; else the OCI index is followed. A compressed layer is decompressed
once into a temporary file (the normalizer seeks within layers) and checked against the
config's diff ID.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

from builder.normalize import image
from builder.normalize.tarformat import CHUNK, NormalizeError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")


@dataclass(frozen=True)
class Archive:
    """One image of an archive: its config as saved (its sha256 is the source image ID) and each
    layer as (seekable file, offset, size) of a plain tar, lowest first."""

    config: bytes
    layers: list[tuple[BinaryIO, int, int]]


def _members(f: BinaryIO) -> dict[str, tarfile.TarInfo]:
    f.seek(0)  # the archive may just have been written through this very file object
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
    except tarfile.ReadError as e:
        raise NormalizeError(f"not an image archive (docker save tar): {e}") from e
    return {posixpath.normpath(m.name): m for m in tf.getmembers()}


def _resolve(members: dict[str, tarfile.TarInfo], name: str) -> tarfile.TarInfo:
    name = posixpath.normpath(name)
    for _ in range(16):
        m = members.get(name)
        if m is None:
            raise NormalizeError(f"image archive lacks {name!r}")
        if not m.issym():
            if not m.isfile():
                raise NormalizeError(f"{name!r} in the image archive is not a file")
            return m
        name = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
    raise NormalizeError(f"symlink loop at {name!r} in the image archive")


def _read(f: BinaryIO, m: tarfile.TarInfo) -> bytes:
    f.seek(m.offset_data)
    return f.read(m.size)


def _blob(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _index_entry(index: dict[str, Any]) -> dict[str, Any]:
    """The one image an OCI index names (attestation manifests, platform "unknown", aside)."""
    entries = [m for m in index.get("manifests") or []
               if (m.get("platform") or {}).get("architecture") not in ("unknown",)]
    if len(entries) != 1:
        raise NormalizeError(f"image archive index lists {len(entries)} images; save one image by ID")
    return entries[0]


def _oci_manifest(f: BinaryIO, members: dict[str, tarfile.TarInfo], index: dict[str, Any]) -> dict[str, Any]:
    """Follow an OCI index (possibly nested) down to the one image manifest it holds."""
    for _ in range(4):
        entry = _index_entry(index)
        doc = json.loads(_read(f, _resolve(members, _blob(entry["digest"]))))
        if doc.get("mediaType", entry.get("mediaType")) not in _INDEX_TYPES and "layers" in doc:
            return doc
        index = doc
    raise NormalizeError("image archive index nests too deeply")


def _layer_file(f: BinaryIO, m: tarfile.TarInfo, diff_id: str, stack: contextlib.ExitStack,
                tmp_dir: str | None) -> tuple[BinaryIO, int, int]:
    """A layer as a plain tar: in place when it is one, else decompressed into a temp file."""
    f.seek(m.offset_data)
    magic = f.read(4)
    if magic.startswith(GZIP_MAGIC):
        f.seek(m.offset_data)
        out = stack.enter_context(tempfile.NamedTemporaryFile(prefix="pytorch-cuda-layer-", suffix=".tar", dir=tmp_dir))
        digest = hashlib.sha256()
        with gzip.GzipFile(fileobj=Span(f, m.offset_data, m.size), mode="rb") as z:
            for chunk in iter(lambda: z.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if "sha256:" + digest.hexdigest() != diff_id:
            raise NormalizeError(f"layer {m.name} of the image archive does not decompress to {diff_id}")
        size = out.tell()
        return out, 0, size
    if magic.startswith(ZSTD_MAGIC):
        raise NormalizeError(f"layer {m.name} of the image archive is zstd-compressed; save the image from an "
                             f"engine that stores layers uncompressed or gzip-compressed")
    return f, m.offset_data, m.size


def own_reader(f: BinaryIO) -> BinaryIO:
    """Another reader of a layer file, with a position of its own, for another thread: the
    store's reassembled tar clones itself, an archive's file is opened again."""
    return f.clone() if hasattr(f, "clone") else open(f.name, "rb")  # type: ignore[attr-defined,union-attr]


class Span:
    """``size`` bytes of a file from where it stands: read() within one member's or layer's bytes."""

    def __init__(self, f: BinaryIO, base: int, size: int) -> None:
        self._f, self._base, self._left = f, base, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = self._f.read(n)
        self._left -= len(data)
        return data


def open_archive(f: BinaryIO, stack: contextlib.ExitStack, tmp_dir: str | None = None) -> Archive:
    """The one image in the archive ``f`` (seekable; rewound here). Temp files live as long as ``stack``."""
    members = _members(f)
    if "manifest.json" in members:
        manifest = json.loads(_read(f, _resolve(members, "manifest.json")))
        if not isinstance(manifest, list) or len(manifest) != 1:
            raise NormalizeError("image archive must hold exactly one image (save it by ID)")
        config = _read(f, _resolve(members, manifest[0]["Config"]))
        layer_names = list(manifest[0].get("Layers") or [])
    elif "index.json" in members:
        doc = _oci_manifest(f, members, json.loads(_read(f, _resolve(members, "index.json"))))
        config = _read(f, _resolve(members, _blob(doc["config"]["digest"])))
        layer_names = [_blob(layer["digest"]) for layer in doc.get("layers") or []]
    else:
        raise NormalizeError("image archive has neither manifest.json nor index.json")
    diff_ids = (json.loads(config).get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(layer_names):
        raise NormalizeError(f"image archive: config lists {len(diff_ids)} diff_ids, manifest {len(layer_names)} layers")
    layers = [_layer_file(f, _resolve(members, name), diff_id, stack, tmp_dir)
              for name, diff_id in zip(layer_names, diff_ids)]
    return Archive(config=config, layers=layers)


SMALL_BLOB = 4 << 20  # indexes, manifests and configs are far smaller; layers are not read


def config_digest(stream: BinaryIO, key: str) -> str | None:
    """The config digest of the image an engine keys as ``key`` (its manifest or index digest),
    read from a streamed image archive: only the small blobs are kept, and reading stops as soon
    as the chain key → (index →) manifest is complete (the manifest names the config). None when
    the archive ends first.
    """
    blobs: dict[str, Any] = {}

    def follow(digest: str) -> str | None:
        for _ in range(4):
            doc = blobs.get(digest)
            if doc is None:
                return None
            if "config" in doc and "layers" in doc:
                return str(doc["config"]["digest"])
            digest = _index_entry(doc)["digest"]
        raise NormalizeError("image archive index nests too deeply")

    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.lstrip("./")
            if not (member.isfile() and name.startswith("blobs/") and member.size <= SMALL_BLOB):
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            try:
                doc = json.loads(data)
            except ValueError:
                continue  # a small layer
            algorithm, _, hexdigest = name[len("blobs/"):].partition("/")
            if isinstance(doc, dict):
                blobs[f"{algorithm}:{hexdigest}"] = doc
                found = follow(key)
                if found is not None:
                    return found
    return None


def normalize_saved_image(src_path: str | os.PathLike[str], epoch: int,
                          **options: Any) -> Generator[bytes, None, image.NormalizeReport]:
    """Yield a normalized ``docker load`` tar for the one image archived at ``src_path``.

    Options as for :func:`builder.normalize.image.normalize_image`.
    """
    with open(src_path, "rb") as f, contextlib.ExitStack() as stack:
        saved = open_archive(f, stack)
        return (yield from image.normalize_image(saved.config, saved.layers, epoch, **options))


def normalize_to_file(src_path: str | os.PathLike[str], dst: BinaryIO | str | os.PathLike[str], epoch: int,
                      **options: Any) -> image.NormalizeReport:
    """Write the normalized docker-load tar to ``dst`` (path or binary file object)."""
    if isinstance(dst, (str, os.PathLike)):
        with open(dst, "wb") as out:
            return normalize_to_file(src_path, out, epoch, **options)
    return image.drain(normalize_saved_image(src_path, epoch, **options), dst.write)
