"""An image's layers read straight from a local engine's store: what `docker save` would send.

`docker save` (Docker 20.10) first copies the whole image into its own temp dir, then streams
it: for a 7 GB image that is 45 s before the first byte, most of what normalizing costs. The
engine rebuilds each layer tar from two things it keeps per layer: the tar's headers and
padding, exactly as registered (tar-split, `layerdb/sha256/<chain ID>/tar-split.json.gz`), and
the files, in the layer's directory (overlay2: `overlay2/<cache-id>/diff`). When the engine is
local and its data root readable (root on the build machine), this module does the same
reassembly in place, lazily: a layer becomes a seekable file whose headers come from tar-split
and whose file data is read from the layer directory only where a reader asks for it. The
config is the engine's own copy, checked against the image ID. Whether to come here at all is the
probe's decision (builder/engine/probe.py); an image whose files are not as expected returns None,
and the caller saves it instead.
"""
from __future__ import annotations

import base64
import bisect
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.normalize import SeekableReader


@dataclass
class LocalImage:
    config: bytes  # the image's config, byte for byte (its sha256 is the image ID)
    layers: list[Path]  # layerdb directory of each layer, lowest first
    root: Path  # the engine's data root

    def open_layer(self, i: int) -> "ReassembledTar":
        return ReassembledTar(self.layers[i], self.root)


class ReassembledTar(SeekableReader):
    """One layer tar, byte-identical to the registered one, as a read-only seekable file."""

    def __init__(self, layerdb: Path, root: Path) -> None:
        cache_id = (layerdb / "cache-id").read_text().strip()
        self._dir = root / "overlay2" / cache_id / "diff"
        self._starts: list[int] = []
        self._pieces: list[bytes | tuple[bytes, int]] = []  # raw bytes, or (relative path, size)
        self._pos = 0
        size = 0
        with gzip.open(layerdb / "tar-split.json.gz", "rt", encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                if entry["type"] == 2:  # a segment: headers, padding, end blocks
                    data = base64.b64decode(entry["payload"] or "")
                    piece: bytes | tuple[bytes, int] = data
                    length = len(data)
                elif entry.get("size"):  # a file's data, read from the layer directory
                    name = base64.b64decode(entry["name_raw"]) if entry.get("name_raw") else entry["name"].encode()
                    piece, length = (os.path.normpath(b"/" + name).lstrip(b"/"), entry["size"]), entry["size"]
                    if os.lstat(self._dir / os.fsdecode(piece[0])).st_size != length:
                        raise OSError(f"{name!r} in {self._dir} is not {length} bytes")
                else:
                    continue
                if length:
                    self._starts.append(size)
                    self._pieces.append(piece)
                    size += length
        self.size = size
        self._open: tuple[bytes, Any] | None = None

    def clone(self) -> "ReassembledTar":
        """Another reader of the same layer (its own position and open file), for another thread."""
        other = ReassembledTar.__new__(ReassembledTar)
        SeekableReader.__init__(other)
        other._dir, other._starts, other._pieces, other.size = self._dir, self._starts, self._pieces, self.size
        other._pos, other._open = 0, None
        return other

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes, never past the end of the piece the position is in."""
        if self._pos >= self.size or n == 0:
            return b""
        i = bisect.bisect_right(self._starts, self._pos) - 1
        start, piece = self._starts[i], self._pieces[i]
        within = self._pos - start
        if isinstance(piece, bytes):
            data = piece[within:] if n is None or n < 0 else piece[within:within + n]
        else:
            path, length = piece
            want = length - within if n is None or n < 0 else min(n, length - within)
            if self._open is None or self._open[0] != path:
                if self._open:
                    self._open[1].close()
                self._open = (path, open(self._dir / os.fsdecode(path), "rb"))
            f = self._open[1]
            f.seek(within)
            data = f.read(want)
            if len(data) != want:
                raise OSError(f"{path!r} in {self._dir} is shorter than its tar header says")
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._open:
            self._open[1].close()
            self._open = None
        super().close()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The layer store's key of each layer: its diff ID hashed with everything below it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else
                     "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def local_image(api: Any, image_id: str, data_root: str) -> LocalImage | None:
    """The image's config and layers from the local overlay2 store at ``data_root``, or None when
    what is there is not what the engine says it holds."""
    try:
        root = Path(data_root)
        image = root / "image" / "overlay2"
        full_id = api.inspect_image(image_id)["Id"]
        config = (image / "imagedb" / "content" / "sha256" / full_id.split(":", 1)[1]).read_bytes()
        if "sha256:" + hashlib.sha256(config).hexdigest() != full_id:
            return None
        diff_ids = json.loads(config).get("rootfs", {}).get("diff_ids") or []
        layers = [image / "layerdb" / "sha256" / chain.split(":", 1)[1] for chain in chain_ids(diff_ids)]
        for layer, diff_id in zip(layers, diff_ids):
            if (layer / "diff").read_text().strip() != diff_id or not (layer / "tar-split.json.gz").is_file():
                return None
            (root / "overlay2" / (layer / "cache-id").read_text().strip() / "diff").stat()
    except (OSError, ValueError, KeyError):
        return None
    return LocalImage(config=config, layers=layers, root=root)
