"""Rewrite an image so that its image ID depends only on its content.

Docker 20.10's classic builder writes wall-clock times, container ids and build-varying files
(apt lists and logs, ldconfig's aux-cache, bytecode of files written during the build ...)
into layers and config.
This module rewrites one image (saved by `docker save`, or read from a local engine's store by
builder/layerstore.py) into a ``docker load``-able tar in which:

* every layer is a canonical tar: entries sorted by path (component-wise, bytewise), mtimes
  clamped to ``SOURCE_DATE_EPOCH``, numeric uid/gid kept and user/group names empty, no
  atime/ctime, PAX records only where ustar cannot hold a value (sorted by key), hard-link
  groups carried by the first name in sorted order, build-varying files dropped, and the archive
  ending in exactly two zero blocks (an empty layer is the well-known 1024-zero-byte tar);
* the config has fixed ``created`` times, no container id, hostname, parent image or builder
  version, ``diff_ids`` recomputed, canonical JSON.

Tar headers are written by this module, not by :mod:`tarfile` (which is only used to *read*):
their exact bytes decide the image ID, so they must not change with the host's Python version.

Streaming, and why a single pass suffices: ``docker load`` (20.10) extracts the whole upload to
a temp dir before it reads ``manifest.json``, so entry order in the outer tar is free.  We write
the layers first and the config last, so each layer's digest is known by the time the config is
written.  The one thing needed *before* a layer's bytes is its size (for its outer tar header);
that is computed exactly from the index pass (headers + padded data sizes), without reading file
data.  So the cost is one header-only index pass plus one data pass per layer; no temp file, no
second hashing pass.  Layers are named by position (``<n>/layer.tar``), because their digest is
not known when their outer header is written.

Memory: the index of one layer at a time (a small tuple per entry) and a 1 MiB I/O buffer;
file data is never held whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import posixpath
import re
import struct
import tarfile
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, NamedTuple

from builder.errors import BuildFailed

__all__ = [
    "DEFAULT_DROP",
    "DEFAULT_EMPTY",
    "EMPTY_LAYER_DIGEST",
    "PYCACHE_DROP",
    "LayerFile",
    "LayerReport",
    "PycacheMode",
    "NormalizeError",
    "NormalizeReport",
    "load_normalized",
    "normalize_config",
    "normalize_layer",
    "normalize_layer_bytes",
    "normalize_saved_image",
    "normalize_to_file",
    "normalize_image",
    "normalize_in_engine",
    "load_stream",
    "canonical_json",
    "rfc3339",
    "tar_header",
]

EMPTY_LAYER_DIGEST = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
"""sha256 of 1024 zero bytes: the tar with no entries, the diff ID of every empty layer."""

# Path patterns, relative to the layer root (no leading "/" or "./").  A pattern is matched per
# path component: "*", "?" and "[...]" never match "/", and a "**" component matches zero or more
# whole components.  A drop pattern that matches a directory drops everything below it too.
# A pattern starting with "!" is an exception: a path it matches *exactly* is kept even when a
# drop pattern matches it (it does not protect what lies below it).  Whiteouts (".wh.*") are
# never dropped: they only say what a lower layer had, and are kept as they are.
DEFAULT_DROP: tuple[str, ...] = (
    "var/lib/apt/lists/*",
    "!var/lib/apt/lists/partial",  # apt expects the dir; its content varies
    "!var/lib/apt/lists/lock",  # empty file
    "var/cache/apt/*.bin",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "root/.cache/pip",
    "tmp/*",
)
PYCACHE_DROP = "**/__pycache__"
"""What ``keep_pycache=False`` adds to the drop list.

``keep_pycache`` is ``"valid"`` (the default), False (drop every ``__pycache__``) or True (keep
them all).  ``"valid"`` keeps only bytecode that is a function of its source and stays valid
after clamping: hash-based pycs (PEP 552; what py_compile writes when SOURCE_DATE_EPOCH is set,
e.g. Debian's stdlib pycs) and timestamp pycs whose recorded source mtime is <= the epoch (the
clamp leaves that source's mtime alone).  It drops the rest: pycs of files written during the
build record wall-clock mtimes, and the clamp would make them stale anyway.  Dropping *all* of
them would cost every Python start in the image a recompile of the stdlib it imports, since a
non-root user cannot write the pycs back.
"""
PycacheMode = bool | Literal["valid"]

DEFAULT_EMPTY: tuple[str, ...] = ("etc/machine-id", "var/lib/dbus/machine-id")
"""Regular files kept but truncated to size 0 (an empty machine-id means "not yet set")."""

BLOCK = 512
CHUNK = 1 << 20
_END = bytes(2 * BLOCK)
_REG, _LNK, _SYM, _CHR, _BLK, _DIR, _FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
_XATTR_PREFIX = "SCHILY.xattr."


class NormalizeError(BuildFailed):
    """The saved image cannot be normalized (not one image, compressed/sparse layer, truncated)."""


# --------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class LayerReport:
    """What normalization did to one layer."""

    source_diff_id: str  # from the source config (not recomputed)
    diff_id: str  # sha256 of the normalized layer tar
    bytes_in: int
    bytes_out: int
    entries_in: int
    entries_out: int
    removed: int  # entries dropped by the drop list
    emptied: int  # regular files truncated (DEFAULT_EMPTY)
    removed_sample: tuple[str, ...] = ()  # up to 10 removed paths, sorted, for diagnostics
    reused: bool = False  # the engine already held this layer: not sent again


@dataclass(frozen=True)
class NormalizeReport:
    """Result of normalizing one saved image; ``image_id`` is what ``docker load`` will report."""

    source_image_id: str
    image_id: str
    layers: tuple[LayerReport, ...]
    bytes_in: int  # layer + config bytes read from the saved tar
    bytes_out: int  # length of the produced docker-load tar
    config: bytes = field(repr=False, default=b"")  # the normalized config (its sha256 is the ID)
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went (normalize_in_engine)

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)


# --------------------------------------------------------------------------------------------
# Path rules


def _component_regex(part: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = part[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("(?!/)[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _glob_regex(pattern: str) -> str:
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "**":
        raise ValueError(f"bad path pattern {pattern!r}: empty, or ends in '**'")
    out: list[str] = []
    for i, part in enumerate(parts):
        if part == "**":
            out.append("(?:[^/]+/)*")
            continue
        out.append(_component_regex(part))
        if i < len(parts) - 1:
            out.append("/")
    return "".join(out)


_IN_PYCACHE = re.compile(r"(?:.*/)?__pycache__/.*", re.S)


@dataclass(frozen=True)
class _Rules:
    drop: re.Pattern[str] | None
    keep: re.Pattern[str] | None
    empty: re.Pattern[str] | None
    check_pyc: bool = False  # keep_pycache="valid": decide __pycache__ files by their header

    def dropped(self, rel: str) -> bool:
        if self.drop is None or posixpath.basename(rel).startswith(".wh."):
            return False
        if self.drop.fullmatch(rel) is None:
            return False
        return self.keep is None or self.keep.fullmatch(rel) is None

    def emptied(self, rel: str) -> bool:
        return self.empty is not None and self.empty.fullmatch(rel) is not None


def _compile_rules(
    drop: Iterable[str], empty: Iterable[str], keep_pycache: PycacheMode
) -> _Rules:
    if keep_pycache not in (False, True, "valid"):
        raise ValueError(f"keep_pycache must be False, True or 'valid', not {keep_pycache!r}")
    drops = [p for p in drop if not p.startswith("!")]
    keeps = [p[1:] for p in drop if p.startswith("!")]
    if keep_pycache != "valid" and not keep_pycache and PYCACHE_DROP not in drops:
        drops.append(PYCACHE_DROP)

    def alt(patterns: list[str], suffix: str) -> re.Pattern[str] | None:
        if not patterns:
            return None
        body = "|".join(_glob_regex(p) for p in patterns)
        return re.compile(f"(?:{body}){suffix}", re.S)

    return _Rules(
        alt(drops, "(?:/.*)?"), alt(keeps, ""), alt(list(empty), ""), keep_pycache == "valid"
    )


def _rel(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


# --------------------------------------------------------------------------------------------
# Tar header writer (ustar + PAX only where needed)

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
    pax: list[tuple[bytes, bytes]] = [(_XATTR_PREFIX.encode() + k, v) for k, v in xattrs]
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


# --------------------------------------------------------------------------------------------
# Layer: index, plan, emit


class _Src(NamedTuple):
    """One entry of a source layer tar: what the index pass keeps (no file data)."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    offset: int  # absolute offset of the data in the source file
    linkname: str
    dev: tuple[int, int] | None
    xattrs: tuple[tuple[bytes, bytes], ...]


class _Out(NamedTuple):
    """One entry of the normalized layer, in output order."""

    key: bytes  # path bytes with "/" replaced by NUL: sorts component-wise, parents first
    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    linkname: bytes
    dev: tuple[int, int] | None
    xattrs: tuple[tuple[bytes, bytes], ...]
    offset: int
    size: int


class LayerFile(NamedTuple):
    """An entry of a normalized layer, for scans: where its data lies in the saved tar."""

    path: str  # no leading "/" or "./"
    is_file: bool  # a regular file with its own data (not a hard link)
    size: int
    offset: int


@dataclass
class _LayerPlan:
    entries: list[_Out]
    out_size: int
    entries_in: int
    removed: list[str]
    emptied: int


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes at ``base`` in ``f`` (for tarfile)."""

    def __init__(self, f: BinaryIO, base: int, size: int) -> None:
        self._f, self._base, self._size, self._pos = f, base, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self._f.seek(self._base + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


_TYPES = {
    tarfile.REGTYPE: _REG,
    tarfile.AREGTYPE: _REG,
    tarfile.CONTTYPE: _REG,
    tarfile.LNKTYPE: _LNK,
    tarfile.SYMTYPE: _SYM,
    tarfile.CHRTYPE: _CHR,
    tarfile.BLKTYPE: _BLK,
    tarfile.DIRTYPE: _DIR,
    tarfile.FIFOTYPE: _FIFO,
}


def _index_layer(f: BinaryIO, base: int, size: int) -> tuple[dict[str, _Src], int]:
    """Read headers only (tarfile seeks over data); later duplicates of a name win, as in
    extraction.  Returns the entries by name and the count of entries read."""
    entries: dict[str, _Src] = {}
    count = 0
    if size == 0:
        return entries, 0
    head = _Window(f, base, size).read(3)
    if head[:2] == b"\x1f\x8b" or head == b"BZh" or head[:3] == b"\xfd7z" or head[:3] == b"(\xb5/":
        raise NormalizeError("layer is compressed; normalize expects `docker save` (plain tar)")
    try:
        # explicit encoding: names must decode the same whatever the host's locale
        tf = tarfile.open(
            fileobj=_Window(f, base, size),  # type: ignore[arg-type]
            mode="r:",
            encoding="utf-8",
            errors="surrogateescape",
        )
    except tarfile.ReadError as e:
        raise NormalizeError(f"layer is not a tar archive: {e}") from e
    with tf:
        while True:
            try:
                ti = tf.next()
            except tarfile.TarError as e:
                raise NormalizeError(f"bad layer tar near offset {tf.offset}: {e}") from e
            if ti is None:
                break
            tf.members.clear()  # keep memory flat: the index below is all we keep
            count += 1
            if ti.sparse is not None:
                raise NormalizeError(f"sparse file in layer: {ti.name!r}")
            typ = _TYPES.get(ti.type, ti.type)
            if typ in (_REG,) or typ not in _TYPES.values():
                data_size = ti.size
            else:
                data_size = 0
            if ti.offset_data + data_size > size:
                raise NormalizeError(f"layer tar truncated in {ti.name!r}")
            xattrs = tuple(
                sorted(
                    (
                        k[len(_XATTR_PREFIX) :].encode("utf-8", "surrogateescape"),
                        v.encode("utf-8", "surrogateescape"),
                    )
                    for k, v in ti.pax_headers.items()
                    if k.startswith(_XATTR_PREFIX)
                )
            )
            entries.pop(ti.name, None)
            entries[ti.name] = _Src(
                name=ti.name,
                type=typ,
                mode=ti.mode,
                uid=ti.uid,
                gid=ti.gid,
                mtime=math.floor(ti.mtime),
                size=data_size,
                offset=base + ti.offset_data,
                linkname=ti.linkname,
                dev=(ti.devmajor, ti.devminor) if typ in (_CHR, _BLK) else None,
                xattrs=xattrs,
            )
    return entries, count


def _key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape").replace(b"/", b"\0")


def _header_for(e: _Out) -> bytes:
    name = e.key.replace(b"\0", b"/")
    if e.type == _DIR and not name.endswith(b"/"):
        name += b"/"
    return tar_header(
        name,
        e.type,
        mode=e.mode,
        uid=e.uid,
        gid=e.gid,
        size=e.size,
        mtime=e.mtime,
        linkname=e.linkname,
        dev=e.dev,
        xattrs=e.xattrs,
    )


def _maybe_pax(e: _Out) -> bool:
    """Cheap superset of the cases where tar_header adds a PAX block (sizes the plan)."""
    return (
        bool(e.xattrs)
        or len(e.key) >= 100
        or len(e.linkname) > 100
        or not (e.key.isascii() and e.linkname.isascii())
        or not (0 <= e.uid < 8**7 and 0 <= e.gid < 8**7)
        or not (0 <= e.size < 8**11 and 0 <= e.mtime < 8**11)
    )


def _stable_pyc(f: BinaryIO, name: str, e: _Src, epoch: int) -> bool:
    """``name`` (content ``e``: a hard link's root) is a .pyc that embeds no build time and
    stays valid after clamping (see PYCACHE_DROP)."""
    if e.type != _REG or not name.endswith(".pyc") or e.size < 16:
        return False
    f.seek(e.offset)
    head = f.read(16)
    flags = int.from_bytes(head[4:8], "little")
    if flags & 1:
        return True  # hash-based (PEP 552)
    return flags == 0 and int.from_bytes(head[8:12], "little") <= epoch


def _plan_layer(f: BinaryIO, base: int, size: int, epoch: int, rules: _Rules) -> _LayerPlan:
    """Index a layer and decide its normalized entries (sorted) and exact output size."""
    src, entries_in = _index_layer(f, base, size)

    def dropped(name: str, content: _Src) -> bool:
        rel = _rel(name)
        if posixpath.basename(rel).startswith(".wh."):
            return False  # a whiteout deletes a lower layer's file: never drop it
        if rules.dropped(rel):
            return True
        if rules.check_pyc and content.type == _REG and _IN_PYCACHE.fullmatch(rel):
            return not _stable_pyc(f, name, content, epoch)
        return False

    # Hard-link groups: root regular file -> names linking to it (chains followed).
    groups: dict[str, list[str]] = {}
    for e in src.values():
        if e.type != _LNK:
            continue
        target, seen = src.get(e.linkname), 0
        while target is not None and target.type == _LNK and seen < 64:
            target, seen = src.get(target.linkname), seen + 1
        if target is not None and target.type == _REG and target.name != e.name:
            groups.setdefault(target.name, []).append(e.name)
    in_group = {n for links in groups.values() for n in links}

    def meta(e: _Src, key: bytes, typ: bytes, link: bytes, offset: int, n: int) -> _Out:
        return _Out(
            key, typ, e.mode, e.uid, e.gid, min(e.mtime, epoch), link, e.dev, e.xattrs, offset, n
        )

    out: list[_Out] = []
    removed: list[str] = []
    emptied = 0
    for e in src.values():
        if e.name in in_group:
            continue  # emitted with its group's root below
        links = groups.get(e.name)
        if links is not None:
            members = [e.name, *links]
            kept = [m for m in members if not dropped(m, e)]
            removed.extend(m for m in members if m not in kept)
            if not kept:
                continue
            # a name to empty leaves the group (its own empty file): emptying must not
            # truncate the other names, and a second pass must see the same content
            empties = [m for m in kept if rules.emptied(_rel(m))]
            emptied += len(empties)
            out.extend(meta(e, _key(m), _REG, b"", e.offset, 0) for m in empties)
            keys = sorted(_key(m) for m in kept if m not in empties)
            if keys:
                out.append(meta(e, keys[0], _REG, b"", e.offset, e.size))
                holder = keys[0].replace(b"\0", b"/")
                out.extend(meta(e, k, _LNK, holder, 0, 0) for k in keys[1:])
            continue
        rel = _rel(e.name)
        if dropped(e.name, e):
            removed.append(e.name)
            continue
        link = e.linkname.encode("utf-8", "surrogateescape") if e.type in (_LNK, _SYM) else b""
        n = e.size
        if e.type == _REG and n and rules.emptied(rel):
            n, emptied = 0, emptied + 1
        out.append(meta(e, _key(e.name), e.type, link, e.offset, n))
    del src, groups, in_group

    out.sort(key=lambda e: e.key)
    total = len(_END)
    for e in out:
        total += len(_header_for(e)) if _maybe_pax(e) else BLOCK
        total += e.size + (-e.size % BLOCK)
    return _LayerPlan(out, total, entries_in, sorted(removed), emptied)


def _emit_layer(f: BinaryIO, plan: _LayerPlan) -> Iterator[bytes]:
    """Yield the normalized layer's bytes: headers and file data copied by seeking."""
    for e in plan.entries:
        yield _header_for(e)
        if e.size:
            f.seek(e.offset)
            left = e.size
            while left:
                data = f.read(min(left, CHUNK))
                if not data:
                    raise NormalizeError("saved image truncated while copying file data")
                left -= len(data)
                yield data
            pad = -e.size % BLOCK
            if pad:
                yield bytes(pad)
    yield _END


def _options(
    drop: Iterable[str], empty: Iterable[str], keep_pycache: PycacheMode
) -> _Rules:  # small indirection so all public entry points share validation
    return _compile_rules(tuple(drop), tuple(empty), keep_pycache)


def normalize_layer(
    src: BinaryIO,
    dst: BinaryIO | Callable[[bytes], Any],
    epoch: int,
    *,
    offset: int = 0,
    size: int | None = None,
    drop: Iterable[str] = DEFAULT_DROP,
    empty: Iterable[str] = DEFAULT_EMPTY,
    keep_pycache: PycacheMode = "valid",
) -> LayerReport:
    """Normalize one plain layer tar (``size`` bytes at ``offset`` in seekable ``src``) into
    ``dst`` (a file object or a write callable).  Useful on its own, e.g. for a base rootfs
    tarball before ``docker import``."""
    if size is None:
        size = src.seek(0, 2) - offset
    write = dst.write if hasattr(dst, "write") else dst
    plan = _plan_layer(src, offset, size, epoch, _options(drop, empty, keep_pycache))
    digest = hashlib.sha256()
    n = 0
    for piece in _emit_layer(src, plan):
        digest.update(piece)
        n += len(piece)
        write(piece)  # type: ignore[operator]
    if n != plan.out_size:
        raise NormalizeError(f"internal: planned {plan.out_size} bytes, wrote {n}")
    return _layer_report("", "sha256:" + digest.hexdigest(), size, plan)


def normalize_layer_bytes(data: bytes, epoch: int, **options: Any) -> bytes:
    """In-memory convenience for tests and small layers."""
    out = io.BytesIO()
    normalize_layer(io.BytesIO(data), out, epoch, **options)
    return out.getvalue()


def _layer_report(source_diff_id: str, diff_id: str, size: int, plan: _LayerPlan) -> LayerReport:
    return LayerReport(
        source_diff_id=source_diff_id,
        diff_id=diff_id,
        bytes_in=size,
        bytes_out=plan.out_size,
        entries_in=plan.entries_in,
        entries_out=len(plan.entries),
        removed=len(plan.removed),
        emptied=plan.emptied,
        removed_sample=tuple(plan.removed[:10]),
    )


# --------------------------------------------------------------------------------------------
# Config

_CONTENT_HASH = re.compile(r"\b(dir|file|multi):[0-9a-f]{64}\b")


def rfc3339(epoch: int) -> str:
    """``SOURCE_DATE_EPOCH`` as Docker writes times, in UTC with a "Z" and no fraction."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def normalize_config(config: dict[str, Any], diff_ids: Sequence[str], epoch: int) -> bytes:
    """Return the canonical config bytes (their sha256 is the image ID).

    ``COPY dir:<hash>``/``file:<hash>`` in history hash the build context *with* mtimes; the
    hash is replaced by the hex of the diff ID of the layer the step made (content only), or
    dropped when history and layers do not line up.
    """
    cfg = json.loads(json.dumps(config))  # deep copy
    created = rfc3339(epoch)
    for key in ("container", "container_config", "docker_version", "id", "parent"):
        cfg.pop(key, None)
    cfg["created"] = created
    run = cfg.get("config")
    if isinstance(run, dict):
        if "Hostname" in run:
            run["Hostname"] = ""
        if "Image" in run:
            run["Image"] = ""  # the id of the builder's intermediate image: varies per build
    history = cfg.get("history")
    if isinstance(history, list):
        layered = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
        lined_up = len(layered) == len(diff_ids)
        layer_of = {id(h): i for i, h in enumerate(layered)}
        for h in history:
            if not isinstance(h, dict):
                continue
            h["created"] = created
            by = h.get("created_by")
            if isinstance(by, str):
                i = layer_of.get(id(h))
                if lined_up and i is not None:
                    hexid = diff_ids[i].split(":", 1)[-1]
                    by = _CONTENT_HASH.sub(lambda m: f"{m.group(1)}:{hexid}", by)
                else:
                    by = _CONTENT_HASH.sub(lambda m: m.group(1), by)
                h["created_by"] = by
    cfg["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return canonical_json(cfg)


# --------------------------------------------------------------------------------------------
# Saved image in, docker-load tar out


@dataclass(frozen=True)
class _Saved:
    config: bytes  # as saved: its sha256 is the source image ID
    layers: list[tuple[int, int]]  # (offset, size) of each layer tar in the saved file


def _read_saved(f: BinaryIO) -> _Saved:
    """Find manifest, config and layer spans in a `docker save` tar (20.10 or OCI-style)."""
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
    except tarfile.ReadError as e:
        raise NormalizeError(f"not a docker save tar: {e}") from e
    members = {posixpath.normpath(m.name): m for m in tf.getmembers()}

    def resolve(name: str) -> tarfile.TarInfo:
        name = posixpath.normpath(name)
        for _ in range(16):
            m = members.get(name)
            if m is None:
                raise NormalizeError(f"docker save tar lacks {name!r}")
            if not m.issym():
                if not m.isfile():
                    raise NormalizeError(f"{name!r} in docker save tar is not a file")
                return m
            name = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
        raise NormalizeError(f"symlink loop at {name!r} in docker save tar")

    def read(m: tarfile.TarInfo) -> bytes:
        f.seek(m.offset_data)
        return f.read(m.size)

    manifest = json.loads(read(resolve("manifest.json")))
    if not isinstance(manifest, list) or len(manifest) != 1:
        raise NormalizeError("docker save tar must hold exactly one image (save it by ID)")
    cm = resolve(manifest[0]["Config"])
    raw = read(cm)
    layers = [(m.offset_data, m.size) for m in map(resolve, manifest[0].get("Layers") or [])]
    return _Saved(raw, layers)


def _outer_header(name: str, size: int, epoch: int) -> bytes:
    return tar_header(name.encode(), _REG, mode=0o644, uid=0, gid=0, size=size, mtime=epoch)


def normalize_saved_image(
    src_path: str | os.PathLike[str], epoch: int, **options: Any
) -> Generator[bytes, None, NormalizeReport]:
    """Yield a normalized ``docker load`` tar for the one image saved (by ID) at ``src_path``.

    Options as for :func:`normalize_image`; ``on_layer``'s offsets point into ``src_path``.
    """
    with open(src_path, "rb") as f:
        saved = _read_saved(f)
        return (yield from normalize_image(saved.config, [(f, offset, size) for offset, size in saved.layers],
                                           epoch, **options))


def normalize_image(
    config_raw: bytes,
    layers: Sequence[tuple[BinaryIO, int, int]],
    epoch: int,
    *,
    drop: Iterable[str] = DEFAULT_DROP,
    empty: Iterable[str] = DEFAULT_EMPTY,
    keep_pycache: PycacheMode = "valid",
    repo_tags: Sequence[str] | None = None,
    reuse: Callable[[str, list[str]], str | None] | None = None,
    on_layer: Callable[[int, str, list[LayerFile]], None] | None = None,
) -> Generator[bytes, None, NormalizeReport]:
    """Yield a normalized ``docker load`` tar for an image: its config as the engine has it and
    each layer tar as (seekable file, offset, size), lowest first.

    Chunks are about 1 MiB.  The generator's return value (``yield from``, or
    ``StopIteration.value``) is the :class:`NormalizeReport`; :func:`normalize_to_file` and
    :func:`load_normalized` hand it back directly.  ``repo_tags`` go into manifest.json, so
    ``docker load`` tags the image itself.  The output tar is itself deterministic.

    ``reuse(source_diff_id, diff_ids_so_far)`` may return the normalized diff ID of a layer the
    engine already holds on exactly that chain; the layer is then left out of the upload
    (``docker load`` never opens a layer file whose chain it has), which is what makes a
    flavor's normalization cost its own layers only.

    ``on_layer(index, diff_id, files)`` is called after each layer written, with its entries as
    :data:`LayerFile` (data offsets point into that layer's file): a scan can read the layer's
    files without a second ``docker save``.
    """
    rules = _options(drop, empty, keep_pycache)
    epoch = int(epoch)
    buf = bytearray()
    written = 0

    def put(piece: bytes) -> Iterator[bytes]:
        nonlocal written
        written += len(piece)
        if len(piece) >= CHUNK and not buf:
            yield piece
            return
        buf.extend(piece)
        if len(buf) >= CHUNK:
            out = bytes(buf)
            buf.clear()
            yield out

    source = json.loads(config_raw)
    source_diff_ids = (source.get("rootfs") or {}).get("diff_ids") or []
    if len(source_diff_ids) != len(layers):
        raise NormalizeError(f"config lists {len(source_diff_ids)} diff_ids, manifest {len(layers)} layers")
    reports: list[LayerReport] = []
    paths: list[str] = []
    for i, (f, offset, size) in enumerate(layers):
        path = f"{i}/layer.tar"
        known = reuse(str(source_diff_ids[i]), [r.diff_id for r in reports]) if reuse else None
        if known:
            reports.append(LayerReport(str(source_diff_ids[i]), known, size, 0, 0, 0, 0, 0, reused=True))
            paths.append(path)
            continue
        plan = _plan_layer(f, offset, size, epoch, rules)
        yield from put(_outer_header(path, plan.out_size, epoch))
        digest = hashlib.sha256()
        n = 0
        for piece in _emit_layer(f, plan):
            digest.update(piece)
            n += len(piece)
            yield from put(piece)
        if n != plan.out_size:
            raise NormalizeError(f"internal: layer {i} planned {plan.out_size} bytes, got {n}")
        pad = -n % BLOCK
        if pad:  # never: a tar is whole blocks; kept for the outer format's sake
            yield from put(bytes(pad))
        diff_id = "sha256:" + digest.hexdigest()
        reports.append(_layer_report(str(source_diff_ids[i]), diff_id, size, plan))
        paths.append(path)
        if on_layer:
            on_layer(i, diff_id, [LayerFile(e.key.replace(b"\0", b"/").decode("utf-8", "surrogateescape"),
                                            e.type == _REG, e.size, e.offset) for e in plan.entries])
        del plan

    config = normalize_config(source, [r.diff_id for r in reports], epoch)
    image_hex = hashlib.sha256(config).hexdigest()
    config_name = f"{image_hex}.json"
    manifest = canonical_json(
        [{"Config": config_name, "Layers": paths, "RepoTags": list(repo_tags) if repo_tags else None}]
    )
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        yield from put(_outer_header(name, len(data), epoch))
        yield from put(data + bytes(-len(data) % BLOCK))
    yield from put(_END)
    if buf:
        yield bytes(buf)
        buf.clear()
    return NormalizeReport(
        source_image_id="sha256:" + hashlib.sha256(config_raw).hexdigest(),
        image_id="sha256:" + image_hex,
        layers=tuple(reports),
        bytes_in=sum(size for _, _, size in layers) + len(config_raw),
        bytes_out=written,
        config=config,
    )


def normalize_to_file(
    src_path: str | os.PathLike[str],
    dst: BinaryIO | str | os.PathLike[str],
    epoch: int,
    **options: Any,
) -> NormalizeReport:
    """Write the normalized docker-load tar to ``dst`` (path or binary file object)."""
    if isinstance(dst, (str, os.PathLike)):
        with open(dst, "wb") as out:
            return normalize_to_file(src_path, out, epoch, **options)
    gen = normalize_saved_image(src_path, epoch, **options)
    while True:
        try:
            dst.write(next(gen))
        except StopIteration as stop:
            return stop.value


def load_normalized(
    client: Any,
    src_path: str | os.PathLike[str],
    epoch: int,
    **options: Any,
) -> NormalizeReport:
    """Normalize the saved image at ``src_path`` and stream it straight into ``docker load``.

    ``client`` is a ``docker.APIClient`` or ``docker.DockerClient``.  Nothing but the saved tar
    touches the disk on our side (the engine itself unpacks the upload into its tmp dir).
    Raises :class:`NormalizeError` when the engine rejects the upload or does not then hold
    the expected image ID.
    """
    return load_stream(client, normalize_saved_image(src_path, epoch, **options))


def load_stream(client: Any, upload: Generator[bytes, None, NormalizeReport]) -> NormalizeReport:
    """Stream a normalizer's output into ``docker load``; its report once the engine holds the image."""
    import docker.errors  # local: the rest of this module works without the SDK

    api = getattr(client, "api", client)
    box: list[NormalizeReport] = []

    def body() -> Iterator[bytes]:
        box.append((yield from upload))

    try:
        # quiet=False: the engine then reports progress while it registers layers, which
        # keeps the client's read timeout from firing on big images.
        messages = list(api.load_image(body(), quiet=False))
    except docker.errors.APIError as e:
        raise NormalizeError(f"docker load rejected the normalized image: {e}") from e
    for m in messages:
        if isinstance(m, dict) and m.get("error"):
            raise NormalizeError(f"docker load failed: {m['error']}")
    if not box:
        raise NormalizeError("docker load returned before the upload was complete")
    report = box[0]
    try:
        api.inspect_image(report.image_id)
    except docker.errors.ImageNotFound as e:
        raise NormalizeError(f"docker load did not produce {report.image_id}: {messages}") from e
    return report


def normalize_in_engine(client: Any, image_id: str, epoch: int, *, cache: dict[str, str] | None = None,
                        tmp_dir: str | None = None,
                        scan: Callable[[str, list[LayerFile], BinaryIO], None] | None = None,
                        **options: Any) -> NormalizeReport:
    """Normalize an image in the engine and load the result back; returns the report (new image ID).

    The layers are read from the engine's own store when it is local (builder/layerstore.py:
    the bytes `docker save` would send, without its copy of the whole image); otherwise the
    image is saved to a temp file first. ``cache`` maps "<epoch>:<source diff ID>" to
    normalized diff IDs from earlier runs: a layer found there whose normalized chain the
    engine already holds is not rewritten or sent again. The cache is updated in place.
    ``scan(diff_id, files, layer_file)`` runs for each layer written, in a thread beside the
    upload.
    """
    import tempfile
    import time
    from concurrent.futures import ThreadPoolExecutor

    from builder import layerstore

    api = getattr(client, "api", client)
    cache = {} if cache is None else cache
    chains = set()
    for image in api.images(all=True):
        layers = api.inspect_image(image["Id"])["RootFS"].get("Layers") or []
        chains.update(tuple(layers[:n]) for n in range(1, len(layers) + 1))

    def reuse(source: str, done: list[str]) -> str | None:
        known = cache.get(f"{epoch}:{source}")
        return known if known and tuple(done + [known]) in chains else None

    clock = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(what: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[what] = round(now - clock, 1)
        clock = now

    with contextlib.ExitStack() as stack:
        local = layerstore.local_image(api, image_id)
        if local is not None:
            files = [stack.enter_context(local.open_layer(i)) for i in range(len(local.layers))]
            config_raw, layers = local.config, [(f, 0, f.size) for f in files]
            opener: Callable[[int], BinaryIO] = lambda i: files[i].clone()  # noqa: E731
            lap("open_store")
        else:
            saved = stack.enter_context(
                tempfile.NamedTemporaryFile(prefix="pytorch-cuda-save-", suffix=".tar", dir=tmp_dir))
            for chunk in api.get_image(image_id):
                saved.write(chunk)
            saved.flush()
            parsed = _read_saved(saved)
            config_raw, layers = parsed.config, [(saved, offset, size) for offset, size in parsed.layers]
            opener = lambda i: open(saved.name, "rb")  # noqa: E731 - offsets are into the whole file
            lap("save")
        scanner = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        scans = []

        def scan_layer(i: int, diff_id: str, files: list[LayerFile]) -> None:
            with opener(i) as data:
                scan(diff_id, files, data)

        def on_layer(i: int, diff_id: str, files: list[LayerFile]) -> None:
            scans.append(scanner.submit(scan_layer, i, diff_id, files))

        report = load_stream(client, normalize_image(config_raw, layers, epoch, reuse=reuse,
                                                     on_layer=on_layer if scan else None, **options))
        lap("rewrite_load")
        for done in scans:
            done.result()  # the scan's error, if any, is the build's
        lap("scan_wait")
    report = dataclasses.replace(report, seconds=seconds)
    cache.update({f"{epoch}:{layer.source_diff_id}": layer.diff_id for layer in report.layers})
    return report


def relabel_in_engine(client: Any, config: bytes, labels: dict[str, str], epoch: int) -> str:
    """Load a copy of a normalized image whose config has `labels` added; returns the new image ID.

    Only the config travels: every layer's chain is already in the engine, so `docker load`
    reads no layer file. The result is as reproducible as the labels are.
    """
    data = json.loads(config)
    data.setdefault("config", {}).setdefault("Labels", {}).update(labels)
    new_config = canonical_json(data)
    image_hex = hashlib.sha256(new_config).hexdigest()
    layers = [f"{i}/layer.tar" for i in range(len(data["rootfs"]["diff_ids"]))]
    manifest = canonical_json([{"Config": f"{image_hex}.json", "Layers": layers, "RepoTags": None}])
    upload = bytearray()
    for name, body in ((f"{image_hex}.json", new_config), ("manifest.json", manifest)):
        upload += _outer_header(name, len(body), epoch) + body + bytes(-len(body) % BLOCK)
    upload += _END
    api = getattr(client, "api", client)
    for message in api.load_image(bytes(upload), quiet=False):
        if isinstance(message, dict) and message.get("error"):
            raise NormalizeError(f"docker load of the relabelled config failed: {message['error']}")
    return "sha256:" + image_hex
