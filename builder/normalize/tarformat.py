"""The tar format as the normalizer writes it: constants, the header writer, and file views.

Tar headers are written here, not by :mod:`tarfile` (which is only used to *read*): their
exact bytes decide the image ID, so they must not change with the host's Python version.
"""
from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

from builder.errors import BuildFailed

EMPTY_LAYER_DIGEST = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
"""sha256 of 1024 zero bytes: the tar with no entries, the diff ID of every empty layer."""

BLOCK = 512
CHUNK = 1 << 20
END = bytes(2 * BLOCK)
REG, LNK, SYM, CHR, BLK, DIR, FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
XATTR_PREFIX = "SCHILY.xattr."


class NormalizeError(BuildFailed):
    """The image cannot be normalized (not one image, unknown compression, sparse layer, truncated)."""


class SeekableReader(io.RawIOBase):
    """Read-only, seekable file plumbing over ``size`` bytes; subclasses give ``read``.

    tarfile and the normalizer seek around a layer; what lies beneath (a window on a bigger
    file, a layer reassembled from an engine's store) only has to answer reads.
    """

    size: int = 0
    _pos: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = max(0, {0: 0, 1: self._pos, 2: self.size}[whence] + pos)
        return self._pos

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class Window(SeekableReader):
    """A view of ``size`` bytes at ``base`` in ``f``."""

    def __init__(self, f: BinaryIO, base: int, size: int) -> None:
        self._f, self._base, self.size, self._pos = f, base, size, 0

    def read(self, n: int | None = -1) -> bytes:
        left = self.size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self._f.seek(self._base + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
assert _USTAR.size == BLOCK


def _octal(value: int, width: int) -> bytes:
    if not 0 <= value < 8 ** (width - 1):  # struct would truncate it silently
        raise NormalizeError(f"value {value} does not fit a {width}-byte tar header field")
    return b"%0*o\0" % (width - 1, value)


_PRINTABLE = bytes(c if 32 <= c < 127 else 63 for c in range(256))


def _ascii_field(value: bytes) -> bytes:
    """What goes into a ustar name field when the real value is in a PAX record."""
    return value[:100].translate(_PRINTABLE)


def _pax_record(key: bytes, value: bytes) -> bytes:
    payload = b" " + key + b"=" + value + b"\n"
    n = len(payload)
    while len(str(n)) + len(payload) != n:
        n = len(str(n)) + len(payload)
    return b"%d" % n + payload


def _ustar_block(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    dev: tuple[int, int] | None,
) -> bytes:
    devmajor, devminor = (b"", b"") if dev is None else (_octal(dev[0], 8), _octal(dev[1], 8))
    block = bytearray(
        _USTAR.pack(
            name,
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",
            typeflag,
            linkname,
            b"ustar\0",
            b"00",
            b"",
            b"",
            devmajor,
            devminor,
            b"",
        )
    )
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_header(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes = b"",
    dev: tuple[int, int] | None = None,
    xattrs: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """One entry's header: a ustar block, preceded by a PAX block only when a value needs it.

    PAX is needed for names/links over 100 bytes or not ASCII, uid/gid >= 8**7, size/mtime
    >= 8**11 or negative mtimes, and xattrs; records are sorted by key.  User/group names are
    always empty.  ``name`` is written as given (directories must end in "/").
    """
    pax: list[tuple[bytes, bytes]] = [(XATTR_PREFIX.encode() + k, v) for k, v in xattrs]
    name_field, link_field = name, linkname
    if len(name) > 100 or not name.isascii():
        pax.append((b"path", name))
        name_field = _ascii_field(name)
    if len(linkname) > 100 or not linkname.isascii():
        pax.append((b"linkpath", linkname))
        link_field = _ascii_field(linkname)
    nums = {"uid": (uid, 8**7), "gid": (gid, 8**7), "size": (size, 8**11), "mtime": (mtime, 8**11)}
    fields: dict[str, int] = {}
    for key, (value, limit) in nums.items():
        if 0 <= value < limit:
            fields[key] = value
        else:
            pax.append((key.encode(), b"%d" % value))
            fields[key] = 0
    ustar = _ustar_block(
        name_field,
        typeflag,
        mode & 0o7777,
        fields["uid"],
        fields["gid"],
        fields["size"],
        fields["mtime"],
        link_field,
        dev,
    )
    if not pax:
        return ustar
    records = b"".join(_pax_record(k, v) for k, v in sorted(pax))
    head = _ustar_block(b"././@PaxHeader", b"x", 0, 0, 0, len(records), 0, b"", None)
    return head + records + bytes(-len(records) % BLOCK) + ustar

