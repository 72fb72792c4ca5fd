"""One layer made canonical: index its headers, plan the output, emit it.

Entries sorted by path (component-wise, bytewise), mtimes clamped to ``SOURCE_DATE_EPOCH``,
numeric uid/gid kept and user/group names empty, no atime/ctime, PAX records only where ustar
cannot hold a value, hard-link groups carried by the first name in sorted order, build-varying
files dropped, and the archive ending in exactly two zero blocks.

Cost: one header-only index pass plus one data pass; the output size is known from the index
before a byte of data is read, which lets an outer tar header precede the layer. Memory: the
index of one layer (a small tuple per entry) and a 1 MiB buffer.
"""
from __future__ import annotations

import hashlib
import math
import io
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from builder.normalize import paths
from builder.normalize.tarformat import (
    BLK, BLOCK, CHR, CHUNK, DIR, END, FIFO, LNK, REG, SYM, XATTR_PREFIX, NormalizeError, Window, tar_header,
)


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
    dropped: bool = False  # it held nothing: left out of the image (see normalize_image)




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
class LayerPlan:
    entries: list[_Out]
    out_size: int
    entries_in: int
    removed: list[str]
    emptied: int


_TYPES = {
    tarfile.REGTYPE: REG,
    tarfile.AREGTYPE: REG,
    tarfile.CONTTYPE: REG,
    tarfile.LNKTYPE: LNK,
    tarfile.SYMTYPE: SYM,
    tarfile.CHRTYPE: CHR,
    tarfile.BLKTYPE: BLK,
    tarfile.DIRTYPE: DIR,
    tarfile.FIFOTYPE: FIFO,
}


def _index_layer(f: BinaryIO, base: int, size: int) -> tuple[dict[str, _Src], int]:
    """Read headers only (tarfile seeks over data); later duplicates of a name win, as in
    extraction.  Returns the entries by name and the count of entries read."""
    entries: dict[str, _Src] = {}
    count = 0
    if size == 0:
        return entries, 0
    head = Window(f, base, size).read(3)
    if head[:2] == b"\x1f\x8b" or head == b"BZh" or head[:3] == b"\xfd7z" or head[:3] == b"(\xb5/":
        raise NormalizeError("layer is compressed; normalize expects `docker save` (plain tar)")
    try:
        # explicit encoding: names must decode the same whatever the host's locale
        tf = tarfile.open(
            fileobj=Window(f, base, size),  # type: ignore[arg-type]
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
            if typ in (REG,) or typ not in _TYPES.values():
                data_size = ti.size
            else:
                data_size = 0
            if ti.offset_data + data_size > size:
                raise NormalizeError(f"layer tar truncated in {ti.name!r}")
            xattrs = tuple(
                sorted(
                    (
                        k[len(XATTR_PREFIX) :].encode("utf-8", "surrogateescape"),
                        v.encode("utf-8", "surrogateescape"),
                    )
                    for k, v in ti.pax_headers.items()
                    if k.startswith(XATTR_PREFIX)
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
                dev=(ti.devmajor, ti.devminor) if typ in (CHR, BLK) else None,
                xattrs=xattrs,
            )
    return entries, count


def _key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape").replace(b"/", b"\0")


def _header_for(e: _Out) -> bytes:
    name = e.key.replace(b"\0", b"/")
    if e.type == DIR and not name.endswith(b"/"):
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
    if e.type != REG or not name.endswith(".pyc") or e.size < 16:
        return False
    f.seek(e.offset)
    head = f.read(16)
    flags = int.from_bytes(head[4:8], "little")
    if flags & 1:
        return True  # hash-based (PEP 552)
    return flags == 0 and int.from_bytes(head[8:12], "little") <= epoch


def plan_layer(f: BinaryIO, base: int, size: int, epoch: int, rules: paths.Rules) -> LayerPlan:
    """Index a layer and decide its normalized entries (sorted) and exact output size."""
    src, entries_in = _index_layer(f, base, size)

    def dropped(name: str, content: _Src) -> bool:
        rel = paths.relative(name)
        if posixpath.basename(rel).startswith(".wh."):
            return False  # a whiteout deletes a lower layer's file: never drop it
        if rules.dropped(rel):
            return True
        if rules.check_pyc and content.type == REG and paths.IN_PYCACHE.fullmatch(rel):
            return not _stable_pyc(f, name, content, epoch)
        return False

    # Hard-link groups: root regular file -> names linking to it (chains followed).
    groups: dict[str, list[str]] = {}
    for e in src.values():
        if e.type != LNK:
            continue
        target, seen = src.get(e.linkname), 0
        while target is not None and target.type == LNK and seen < 64:
            target, seen = src.get(target.linkname), seen + 1
        if target is not None and target.type == REG and target.name != e.name:
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
            empties = [m for m in kept if rules.emptied(paths.relative(m))]
            emptied += len(empties)
            out.extend(meta(e, _key(m), REG, b"", e.offset, 0) for m in empties)
            keys = sorted(_key(m) for m in kept if m not in empties)
            if keys:
                out.append(meta(e, keys[0], REG, b"", e.offset, e.size))
                holder = keys[0].replace(b"\0", b"/")
                out.extend(meta(e, k, LNK, holder, 0, 0) for k in keys[1:])
            continue
        rel = paths.relative(e.name)
        if dropped(e.name, e):
            removed.append(e.name)
            continue
        link = e.linkname.encode("utf-8", "surrogateescape") if e.type in (LNK, SYM) else b""
        n = e.size
        if e.type == REG and n and rules.emptied(rel):
            n, emptied = 0, emptied + 1
        out.append(meta(e, _key(e.name), e.type, link, e.offset, n))
    del src, groups, in_group

    out.sort(key=lambda e: e.key)
    total = len(END)
    for e in out:
        total += len(_header_for(e)) if _maybe_pax(e) else BLOCK
        total += e.size + (-e.size % BLOCK)
    return LayerPlan(out, total, entries_in, sorted(removed), emptied)


def emit_layer(f: BinaryIO, plan: LayerPlan) -> Iterator[bytes]:
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
    yield END


def normalize_layer(
    src: BinaryIO,
    dst: BinaryIO | Callable[[bytes], Any],
    epoch: int,
    *,
    offset: int = 0,
    size: int | None = None,
    drop: Iterable[str] = paths.DEFAULT_DROP,
    empty: Iterable[str] = paths.DEFAULT_EMPTY,
    keep_pycache: paths.PycacheMode = "valid",
) -> LayerReport:
    """Normalize one plain layer tar (``size`` bytes at ``offset`` in seekable ``src``) into
    ``dst`` (a file object or a write callable).  Useful on its own, e.g. for a base rootfs
    tarball before ``docker import``."""
    if size is None:
        size = src.seek(0, 2) - offset
    write = dst.write if hasattr(dst, "write") else dst
    plan = plan_layer(src, offset, size, epoch, paths.rules(drop, empty, keep_pycache))
    digest = hashlib.sha256()
    n = 0
    for piece in emit_layer(src, plan):
        digest.update(piece)
        n += len(piece)
        write(piece)  # type: ignore[operator]
    if n != plan.out_size:
        raise NormalizeError(f"internal: planned {plan.out_size} bytes, wrote {n}")
    return layer_report("", "sha256:" + digest.hexdigest(), size, plan)


def normalize_layer_bytes(data: bytes, epoch: int, **options: Any) -> bytes:
    """In-memory convenience for tests and small layers."""
    out = io.BytesIO()
    normalize_layer(io.BytesIO(data), out, epoch, **options)
    return out.getvalue()


def layer_report(source_diff_id: str, diff_id: str, size: int, plan: LayerPlan) -> LayerReport:
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

