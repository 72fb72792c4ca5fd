"""Pure-Python tests for builder.normalize: property tests on generated layer tars, and a
synthetic `docker save` image (no engine needed)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder import normalize as N

EPOCH = 1_700_000_000
EMPTY_TAR = bytes(1024)
PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape").replace(b"/", b"\0")


# ---------------------------------------------------------------------------------------------
# A generated layer: a logical file tree, rendered to tar bytes in many equivalent ways.


@dataclass(frozen=True)
class Node:
    kind: str  # dir | file | sym | fifo
    mode: int
    uid: int
    gid: int
    mtime: float
    data: bytes = b""  # file content, or symlink target (utf-8)
    xattrs: tuple[tuple[str, str], ...] = ()


@dataclass
class Model:
    nodes: dict[str, Node] = field(default_factory=dict)  # dirs, symlinks, fifos
    groups: list[tuple[list[str], Node]] = field(default_factory=list)  # files + hard links

    def all_paths(self) -> list[str]:
        return [*self.nodes, *(p for names, _ in self.groups for p in names)]


# path -> what the default rules do with it (absent: kept unchanged)
SPECIAL: dict[str, tuple[str, str]] = {
    "var/log/apt/history.log": ("file", "drop"),
    "var/log/apt": ("dir", "keep"),
    "var/log/dpkg.log": ("file", "drop"),
    "var/log/other.log": ("file", "keep"),
    "var/cache/apt/pkgcache.bin": ("file", "drop"),
    "var/cache/ldconfig/aux-cache": ("file", "drop"),
    "var/cache/debconf/config.dat-old": ("file", "drop"),
    "var/lib/dpkg/status-old": ("file", "drop"),
    "var/lib/dpkg/status": ("file", "keep"),
    "var/lib/apt/lists/archive_InRelease": ("file", "drop"),
    "var/lib/apt/lists/partial": ("dir", "keep"),
    "var/lib/apt/lists/partial/x": ("file", "drop"),
    "var/lib/apt/lists/lock": ("file", "keep"),
    "var/lib/apt/lists/.wh..wh..opq": ("file", "keep"),
    "tmp": ("dir", "keep"),
    "tmp/build-x/y": ("file", "drop"),
    "tmp/.wh.gone": ("file", "keep"),
    "root/.cache/pip/http/a": ("file", "drop"),
    "usr/lib/py/__pycache__": ("dir", "pycache"),
    "usr/lib/py/__pycache__/m.cpython-312.pyc": ("file", "pycache"),
    "etc/machine-id": ("file", "empty"),
}

COMPONENTS = ["a", "b", "c.txt", "usr", "lib", "é", "sp ace", "L" * 70, "a.b", "a-b", "Z"]
MODES = [0o644, 0o755, 0o600, 0o4755, 0o1777]
IDS = [0, 0, 1000, 65534, 3_000_000]  # the last needs a PAX record


def mtimes() -> st.SearchStrategy[float]:
    return st.one_of(
        st.integers(0, 2 * EPOCH).map(float),
        st.floats(0, 2 * EPOCH, allow_nan=False).map(lambda x: round(x, 3)),
        st.just(float(EPOCH)),
    )


@st.composite
def nodes(draw: st.DrawFn, kind: str) -> Node:
    data = b""
    if kind == "file":
        data = draw(st.binary(max_size=1200))
        if draw(st.booleans()):  # a pyc header: timestamp or hash-based, stamped before/after
            flags = draw(st.sampled_from([0, 1, 3, 2]))
            stamp = draw(st.sampled_from([0, EPOCH - 1, EPOCH, EPOCH + 1, 2**32 - 1]))
            data = b"\xcb\x0d\x0d\x0a" + flags.to_bytes(4, "little") + stamp.to_bytes(4, "little") + data
    elif kind == "sym":
        data = draw(st.sampled_from(["a", "../b", "/usr/lib/" + "T" * 120, "é"])).encode()
    xattrs: tuple[tuple[str, str], ...] = ()
    if kind == "file" and draw(st.booleans()):
        cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff"
        xattrs = (("security.capability", cap.decode("utf-8", "surrogateescape")),)
    return Node(
        kind,
        draw(st.sampled_from(MODES)),
        draw(st.sampled_from(IDS)),
        draw(st.sampled_from(IDS)),
        draw(mtimes()),
        data,
        xattrs,
    )


@st.composite
def models(draw: st.DrawFn) -> Model:
    paths = draw(
        st.lists(
            st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map("/".join),
            unique=True,
            max_size=10,
        )
    )
    specials = draw(st.lists(st.sampled_from(sorted(SPECIAL)), unique=True, max_size=8))
    model = Model()
    files: list[str] = []
    for p in specials:
        kind = SPECIAL[p][0]
        if kind == "file":
            files.append(p)
        else:
            model.nodes[p] = draw(nodes(kind))
    for p in paths:
        if p in specials:
            continue
        kind = draw(st.sampled_from(["dir", "file", "file", "file", "sym", "fifo"]))
        if kind == "file":
            files.append(p)
        else:
            model.nodes[p] = draw(nodes(kind))
    # split files into hard-link groups
    while files:
        n = draw(st.integers(1, min(3, len(files))))
        members, files = files[:n], files[n:]
        model.groups.append((members, draw(nodes("file"))))
    return model


@dataclass(frozen=True)
class Variant:
    """Everything that must not matter: order, link roots, late mtimes, names, atime/ctime."""

    order: list[str]
    late: dict[str, int]  # replacement mtime (>= EPOCH) per path whose mtime is >= EPOCH
    uname: str
    gname: str
    times: bool  # write atime/ctime PAX records
    fmt: int


@st.composite
def variants(draw: st.DrawFn, model: Model) -> Variant:
    paths = model.all_paths()
    has_xattrs = any(node.xattrs for _, node in model.groups)
    big_ids = any(
        node.uid >= 8**7 or node.gid >= 8**7
        for node in [*model.nodes.values(), *(n for _, n in model.groups)]
    )
    fmts = [tarfile.PAX_FORMAT] if has_xattrs or big_ids else [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]
    return Variant(
        order=draw(st.permutations(paths)),
        late={p: draw(st.integers(EPOCH, 3 * EPOCH)) for p in paths},
        uname=draw(st.sampled_from(["", "root", "builder", "ü" * 40])),
        gname=draw(st.sampled_from(["", "root", "staff"])),
        times=draw(st.booleans()),
        fmt=draw(st.sampled_from(fmts)),
    )


def render(model: Model, v: Variant) -> bytes:
    """A layer tar for ``model``; hard-link content sits on the first group member in order."""
    group_of = {p: i for i, (names, _) in enumerate(model.groups) for p in names}
    root: dict[int, str] = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=v.fmt) as tf:
        for p in v.order:
            if p in group_of:
                gi = group_of[p]
                node = model.groups[gi][1]
            else:
                gi, node = -1, model.nodes[p]
            ti = tarfile.TarInfo(p)
            ti.mode, ti.uid, ti.gid = node.mode, node.uid, node.gid
            ti.mtime = v.late[p] if node.mtime >= EPOCH else node.mtime
            if v.fmt == tarfile.GNU_FORMAT:
                ti.mtime = int(ti.mtime)  # GNU headers cannot hold fractions
            ti.uname, ti.gname = v.uname, v.gname
            pax: dict[str, str] = {}
            if v.times and v.fmt == tarfile.PAX_FORMAT:
                pax |= {"atime": str(v.late[p] + 7), "ctime": str(v.late[p] + 9)}
            data = None
            if node.kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif node.kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, node.data.decode()
            elif node.kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            elif gi in root:
                ti.type, ti.linkname = tarfile.LNKTYPE, root[gi]
            else:
                root[gi] = p
                ti.size = len(node.data)
                data = io.BytesIO(node.data)
            for k, val in node.xattrs:
                pax["SCHILY.xattr." + k] = val
            ti.pax_headers = pax
            tf.addfile(ti, data)
    return buf.getvalue()


def nlz(data: bytes, **options: object) -> bytes:
    return N.normalize_layer_bytes(data, EPOCH, **options)


# ---------------------------------------------------------------------------------------------
# Raw output checks


def raw_entries(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(typeflag, header block, payload) per header; asserts the exact two-zero-block end."""
    assert len(data) % 512 == 0
    pos, out = 0, []
    while True:
        block = data[pos : pos + 512]
        assert len(block) == 512, "archive must end with two zero blocks"
        if block == bytes(512):
            break
        size = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
        out.append((block[156:157], block, data[pos + 512 : pos + 512 + size]))
        pos += 512 + -(-size // 512) * 512
    assert data[pos:] == EMPTY_TAR, "exactly two zero blocks, no record padding"
    return out


def pax_keys(payload: bytes) -> list[bytes]:
    keys, pos = [], 0
    while pos < len(payload):
        n = int(payload[pos : payload.index(b" ", pos)])
        rec = payload[pos : pos + n]
        keys.append(rec.split(b" ", 1)[1].split(b"=", 1)[0])
        pos += n
    return keys


def check_structure(out: bytes) -> list[tarfile.TarInfo]:
    entries = raw_entries(out)
    for i, (typ, block, payload) in enumerate(entries):
        assert typ not in (b"g", b"L", b"K"), "no global PAX or GNU long-name records"
        assert block[265:297] == bytes(32) and block[297:329] == bytes(32), "no user/group names"
        if typ == b"x":
            keys = pax_keys(payload)
            assert keys == sorted(keys)
            assert keys and all(
                k in (b"path", b"linkpath", b"uid", b"gid", b"size", b"mtime")
                or k.startswith(b"SCHILY.xattr.")
                for k in keys
            )
            nxt = entries[i + 1]
            assert nxt[0] != b"x"
    infos = tarfile.open(fileobj=io.BytesIO(out)).getmembers()
    # PAX only where needed
    pax_before = [
        set(pax_keys(entries[i - 1][2])) if i and entries[i - 1][0] == b"x" else set()
        for i, e in enumerate(entries)
        if e[0] != b"x"
    ]
    assert len(pax_before) == len(infos)
    for keys, ti in zip(pax_before, infos):
        name = ti.name.encode("utf-8", "surrogateescape") + (b"/" if ti.isdir() else b"")
        link = ti.linkname.encode("utf-8", "surrogateescape")
        needed = {
            b"path": len(name) > 100 or not name.isascii(),
            b"linkpath": len(link) > 100 or not link.isascii(),
            b"uid": ti.uid >= 8**7,
            b"gid": ti.gid >= 8**7,
        }
        for k, need in needed.items():
            assert (k in keys) == need, (ti.name, k, keys)
        assert ti.uname == "" and ti.gname == ""
        assert ti.mtime <= EPOCH and ti.mtime == int(ti.mtime)
        assert "atime" not in ti.pax_headers and "ctime" not in ti.pax_headers
    keys_ = [key(ti.name) for ti in infos]
    assert keys_ == sorted(keys_), "entries sorted component-wise"
    return infos


def stable_pyc(path: str, data: bytes) -> bool:
    """The "valid" rule, restated: hash-based, or timestamp with source mtime <= EPOCH."""
    if not path.endswith(".pyc") or len(data) < 16:
        return False
    flags = int.from_bytes(data[4:8], "little")
    return bool(flags & 1) or (flags == 0 and int.from_bytes(data[8:12], "little") <= EPOCH)


def expected_fate(path: str, keep_pycache: object = "valid", data: bytes | None = None) -> str:
    fate = SPECIAL.get(path, ("", "keep"))[1]
    if fate == "pycache":
        if keep_pycache == "valid":
            return "keep" if data is None or stable_pyc(path, data) else "drop"
        return "keep" if keep_pycache else "drop"
    return fate


def check_content(out: bytes, model: Model, keep_pycache: object = "valid") -> None:
    infos = {ti.name: ti for ti in tarfile.open(fileobj=io.BytesIO(out)).getmembers()}
    tf = tarfile.open(fileobj=io.BytesIO(out))

    def meta(ti: tarfile.TarInfo, node: Node) -> None:
        assert (ti.mode, ti.uid, ti.gid) == (node.mode, node.uid, node.gid)
        assert ti.mtime == min(int(node.mtime // 1), EPOCH)
        got = {k[len("SCHILY.xattr.") :]: v for k, v in ti.pax_headers.items() if "xattr" in k}
        assert got == dict(node.xattrs)

    expected_names = set()
    for p, node in model.nodes.items():
        if expected_fate(p, keep_pycache) == "drop":
            assert p not in infos
            continue
        expected_names.add(p)
        ti = infos[p]
        meta(ti, node)
        kind = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "sym", tarfile.FIFOTYPE: "fifo"}[ti.type]
        assert kind == node.kind
        if kind == "sym":
            assert ti.linkname.encode() == node.data
    for names, node in model.groups:
        kept = [p for p in names if expected_fate(p, keep_pycache, node.data) != "drop"]
        for p in names:
            if p not in kept:
                assert p not in infos
        if not kept:
            continue
        expected_names.update(kept)
        empties = [p for p in kept if expected_fate(p) == "empty"]
        for p in empties:  # emptied names leave the group
            assert infos[p].type == tarfile.REGTYPE and infos[p].size == 0
            meta(infos[p], node)
        linked = [p for p in kept if p not in empties]
        if not linked:
            continue
        holder = min(linked, key=key)
        ti = infos[holder]
        assert ti.type == tarfile.REGTYPE
        meta(ti, node)
        assert tf.extractfile(ti).read() == node.data
        for p in linked:
            if p != holder:
                assert infos[p].type == tarfile.LNKTYPE and infos[p].linkname == holder
                meta(infos[p], node)
    assert set(infos) == expected_names


# ---------------------------------------------------------------------------------------------
# Properties


@PROPS
@given(st.data())
def test_independent_of_order_late_mtimes_names_times_and_link_roots(data: st.DataObject) -> None:
    model = data.draw(models())
    a = render(model, data.draw(variants(model)))
    b = render(model, data.draw(variants(model)))
    assert nlz(a) == nlz(b)


@PROPS
@given(st.data())
def test_idempotent_and_well_formed(data: st.DataObject) -> None:
    model = data.draw(models())
    keep_pycache = data.draw(st.sampled_from([False, True, "valid"]))
    out = nlz(render(model, data.draw(variants(model))), keep_pycache=keep_pycache)
    assert nlz(out, keep_pycache=keep_pycache) == out
    check_structure(out)
    check_content(out, model, keep_pycache)


@PROPS
@given(st.data())
def test_mtimes_before_epoch_matter(data: st.DataObject) -> None:
    """Clamping is min(mtime, epoch): an earlier mtime is content and changes the digest."""
    model = data.draw(models())
    if not model.groups:
        return
    v = data.draw(variants(model))
    names, node = model.groups[0]
    kept = [p for p in names if expected_fate(p, data=node.data) != "drop"]
    if not kept:
        return
    moved = Model(dict(model.nodes), [(names, _replace_mtime(node, EPOCH - 1000))] + model.groups[1:])
    base = Model(dict(model.nodes), [(names, _replace_mtime(node, EPOCH - 2000))] + model.groups[1:])
    assert nlz(render(moved, v)) != nlz(render(base, v))


def _replace_mtime(node: Node, mtime: float) -> Node:
    return Node(node.kind, node.mode, node.uid, node.gid, mtime, node.data, node.xattrs)


@PROPS
@given(st.lists(st.sampled_from([p for p, (k, f) in SPECIAL.items() if f == "drop"]), unique=True))
def test_layer_of_only_dropped_files_is_the_empty_tar(paths: list[str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for p in paths:
            ti = tarfile.TarInfo(p)
            ti.size = 3
            ti.mtime = EPOCH + 5
            tf.addfile(ti, io.BytesIO(b"abc"))
    out = nlz(buf.getvalue())
    assert out == EMPTY_TAR
    assert sha(out) == N.EMPTY_LAYER_DIGEST


def test_empty_layer_digest() -> None:
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()  # 10240 bytes: tarfile pads to a record
    assert len(buf.getvalue()) == 10240
    for src in (buf.getvalue(), EMPTY_TAR, b""):
        out = nlz(src)
        assert out == EMPTY_TAR
        assert sha(out) == N.EMPTY_LAYER_DIGEST


# ---------------------------------------------------------------------------------------------
# Examples


def tar_of(*entries: tuple[str, bytes | None, dict]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, attrs in entries:
            ti = tarfile.TarInfo(name)
            for k, val in attrs.items():
                setattr(ti, k, val)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def test_hard_link_content_moves_to_first_sorted_name() -> None:
    src = tar_of(
        ("z/data", b"payload", {"mtime": EPOCH + 1, "mode": 0o755}),
        ("a/link", None, {"type": tarfile.LNKTYPE, "linkname": "z/data", "mtime": EPOCH + 1}),
        ("m/link2", None, {"type": tarfile.LNKTYPE, "linkname": "a/link"}),  # chain
    )
    infos = tarfile.open(fileobj=io.BytesIO(nlz(src))).getmembers()
    assert [(t.name, t.type, t.linkname) for t in infos] == [
        ("a/link", tarfile.REGTYPE, ""),
        ("m/link2", tarfile.LNKTYPE, "a/link"),
        ("z/data", tarfile.LNKTYPE, "a/link"),
    ]
    assert all(t.mode == 0o755 for t in infos)


def test_emptied_name_leaves_its_hard_link_group() -> None:
    src = tar_of(
        ("etc/machine-id", b"0123456789abcdef", {}),
        ("srv/copy", None, {"type": tarfile.LNKTYPE, "linkname": "etc/machine-id"}),
    )
    out = tarfile.open(fileobj=io.BytesIO(nlz(src)))
    infos = {t.name: t for t in out.getmembers()}
    assert infos["etc/machine-id"].isreg() and infos["etc/machine-id"].size == 0
    assert out.extractfile(infos["srv/copy"]).read() == b"0123456789abcdef"


def test_hard_link_whose_root_is_dropped_keeps_content() -> None:
    src = tar_of(
        ("tmp/orig", b"payload", {}),
        ("usr/keep", None, {"type": tarfile.LNKTYPE, "linkname": "tmp/orig"}),
    )
    out = tarfile.open(fileobj=io.BytesIO(nlz(src)))
    (ti,) = out.getmembers()
    assert ti.name == "usr/keep" and ti.isreg() and out.extractfile(ti).read() == b"payload"


def test_sort_is_component_wise_parents_first() -> None:
    names = ["a.txt", "a/b", "a", "a-b", "a/b/c", "./x", "."]
    src = tar_of(*[(n, b"", {}) for n in names])
    got = [t.name for t in tarfile.open(fileobj=io.BytesIO(nlz(src))).getmembers()]
    assert got == [".", "./x", "a", "a/b", "a/b/c", "a-b", "a.txt"]


def test_dot_slash_prefixed_paths_follow_the_rules() -> None:
    src = tar_of(
        ("./var/log/dpkg.log", b"x", {}),
        ("./etc/machine-id", b"0123", {}),
        ("./usr/bin/tool", b"t", {}),
    )
    out = tarfile.open(fileobj=io.BytesIO(nlz(src)))
    sizes = {t.name: t.size for t in out.getmembers()}
    assert sizes == {"./etc/machine-id": 0, "./usr/bin/tool": 1}


def test_custom_drop_list_and_keep_exception() -> None:
    src = tar_of(
        ("opt/cache/a", b"1", {}),
        ("opt/cache/keep.me", b"2", {}),
        ("opt/cache/sub/keep.me", b"3", {}),
        ("opt/other", b"4", {}),
        ("x/y/z.log", b"5", {}),
    )
    out = nlz(src, drop=("opt/cache/*", "!opt/cache/keep.me", "**/*.log"))
    names = [t.name for t in tarfile.open(fileobj=io.BytesIO(out)).getmembers()]
    assert names == ["opt/cache/keep.me", "opt/other"]


def pyc(flags: int, stamp: int) -> bytes:
    return b"\xcb\x0d\x0d\x0a" + flags.to_bytes(4, "little") + stamp.to_bytes(4, "little") + b"\0" * 8


def test_keep_pycache_modes() -> None:
    src = tar_of(
        ("pkg/__pycache__", None, {"type": tarfile.DIRTYPE}),
        ("pkg/__pycache__/hashed.cpython-312.pyc", pyc(3, 0), {}),
        ("pkg/__pycache__/old.cpython-312.pyc", pyc(0, EPOCH - 5), {}),
        ("pkg/__pycache__/built.cpython-312.pyc", pyc(0, EPOCH + 5), {}),
        ("pkg/__pycache__/short.cpython-312.pyc", b"c", {}),
        ("pkg/__pycache__/tmp.pyc.12345", pyc(3, 0), {}),
        ("pkg/__pycache__/.wh.gone.cpython-312.pyc", b"", {}),  # a whiteout: always kept
        ("pkg/m.py", b"s", {}),
    )

    def names(**options: object) -> list[str]:
        return [t.name for t in tarfile.open(fileobj=io.BytesIO(nlz(src, **options))).getmembers()]

    assert names(keep_pycache=False) == ["pkg/__pycache__/.wh.gone.cpython-312.pyc", "pkg/m.py"]
    assert len(names(keep_pycache=True)) == 8
    assert names() == names(keep_pycache="valid") == [
        "pkg/__pycache__",
        "pkg/__pycache__/.wh.gone.cpython-312.pyc",
        "pkg/__pycache__/hashed.cpython-312.pyc",
        "pkg/__pycache__/old.cpython-312.pyc",
        "pkg/m.py",
    ]
    with pytest.raises(ValueError):
        names(keep_pycache="sometimes")


def test_bad_patterns_are_rejected() -> None:
    with pytest.raises(ValueError):
        nlz(EMPTY_TAR, drop=("usr/**",))


def test_header_pax_only_when_needed() -> None:
    plain = N.tar_header(b"usr/bin/x", b"0", mode=0o755, uid=0, gid=0, size=5, mtime=EPOCH)
    assert len(plain) == 512
    big = N.tar_header(b"f", b"0", mode=0o644, uid=0, gid=0, size=8**11, mtime=EPOCH)
    assert len(big) == 1536 and b" size=8589934592\n" in big
    longname = N.tar_header(b"d/" + b"n" * 120, b"0", mode=0o644, uid=0, gid=0, size=0, mtime=0)
    ti = tarfile.open(fileobj=io.BytesIO(longname + EMPTY_TAR)).getmembers()[0]
    assert ti.name == "d/" + "n" * 120 and ti.uname == "" and ti.mtime == 0


def test_compressed_layer_is_rejected() -> None:
    import gzip

    with pytest.raises(N.NormalizeError, match="compressed"):
        nlz(gzip.compress(tar_of(("a", b"x", {}))))


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_formats_from_a_real_tree(tmp_path: Path) -> None:
    """GNU tar's own gnu and posix output (with hard links, long names) normalize the same."""
    root = tmp_path / "root"
    (root / "d" / ("n" * 110)).mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"content\n")
    os.link(root / "d" / "f", root / "a-link")
    (root / "d" / ("n" * 110) / "g").write_bytes(b"g")
    (root / "sym").symlink_to("d/f")
    (root / "var/log/apt").mkdir(parents=True)
    (root / "var/log/apt/term.log").write_text("x")
    outs = []
    for fmt in ("gnu", "posix"):
        dst = tmp_path / f"{fmt}.tar"
        subprocess.run(
            ["tar", f"--format={fmt}", "-cf", str(dst), "-C", str(root), "."], check=True
        )
        outs.append(nlz(dst.read_bytes()))
    assert outs[0] == outs[1]
    infos = {t.name: t for t in check_structure(outs[0])}
    assert infos["./a-link"].isreg() and infos["./d/f"].islnk()
    assert "./var/log/apt/term.log" not in infos and "./var/log/apt" in infos


# ---------------------------------------------------------------------------------------------
# Config and the saved image


def raw_config(diff_ids: list[str], when: str, copy_hash: str) -> dict:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": when,
        "container": "c0ffee" * 10,
        "container_config": {"Hostname": "c0ffee", "Cmd": ["/bin/sh", "-c", "#(nop) ..."]},
        "docker_version": "20.10.24+dfsg1",
        "config": {"Hostname": "c0ffee", "Image": "sha256:" + "9" * 64, "Env": ["A=é"]},
        "history": [
            {"created": when, "comment": "Imported from -"},
            {"created": when, "created_by": f"/bin/sh -c #(nop) COPY dir:{copy_hash} in /app "},
            {"created": when, "created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
            {"created": when, "created_by": "/bin/sh -c echo hi > /x"},
        ],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


def test_normalize_config() -> None:
    ids = [sha(b"1"), sha(b"2"), sha(b"3")]
    out = N.normalize_config(raw_config([sha(b"x")] * 3, "2025-01-01T10:00:00.123Z", "ab" * 32), ids, EPOCH)
    cfg = json.loads(out)
    assert out == json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    assert cfg["created"] == "2023-11-14T22:13:20Z" == N.rfc3339(EPOCH)
    assert all(h["created"] == cfg["created"] for h in cfg["history"])
    assert not {"container", "container_config", "docker_version"} & set(cfg)
    assert cfg["config"] == {"Env": ["A=é"]}  # the build container's name and intermediate image gone
    assert [h.get("created_by") for h in cfg["history"]] == [None, f"COPY {ids[1]} in /app", "CMD",
                                                             "RUN /bin/sh -c echo hi > /x"]
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": ids}
    # history that does not line up with layers: hash dropped, not guessed
    odd = N.normalize_config(raw_config([], "x", "cd" * 32), [], EPOCH)
    assert b'"COPY in /app"' in odd


# One Dockerfile's steps as the classic builder and BuildKit (both Docker 20.10.24) wrote them in
# history, newest last, with the layers' diff IDs where a step made one.
CLASSIC_HISTORY = [
    "/bin/sh -c #(nop) COPY file:65ce2b0dee42faa327fce3d35c63464e0c97a86e831d7d8b12dfc04bd11b3051 in /x ",
    "/bin/sh -c #(nop) COPY --chown=1000:1000dir:06654aa53a4fa75df1710586831da36bc594e8f9f1847106def8a746a8db7272"
    " in /opt/sub/ ",
    "/bin/sh -c #(nop)  ENV A=1 B=two words",
    "/bin/sh -c #(nop)  ARG REV=unknown",
    "/bin/sh -c #(nop)  LABEL a=b rev=abc",
    "|1 REV=abc /bin/sh -c echo $A > /y  && echo z",
    "/bin/sh -c #(nop)  EXPOSE 22 8888",
    '/bin/sh -c #(nop)  HEALTHCHECK &{["CMD" "/usr/local/bin/healthcheck"] "15s" "5s" "1m0s" \'\\x03\'}',
    "/bin/sh -c #(nop) WORKDIR /home/user",
    '/bin/sh -c #(nop)  CMD ["/bin/sh"]',
]
BUILDKIT_HISTORY = [
    "COPY /x /x # buildkit",
    "COPY sub/ /opt/sub/ # buildkit",
    "ENV A=1 B=two words",
    "ARG REV=unknown",
    "LABEL a=b rev=abc",
    "RUN |1 REV=abc /bin/sh -c echo $A > /y  && echo z # buildkit",
    "EXPOSE map[22/tcp:{} 8888/tcp:{}]",
    'HEALTHCHECK &{["CMD" "/usr/local/bin/healthcheck"] "15s" "5s" "1m0s" \'\\x03\'}',
    "WORKDIR /home/user",
    'CMD ["/bin/sh"]',
]
MADE_LAYER = [True, True, False, False, False, True, False, False, False, False]


def test_the_classic_builder_and_buildkit_give_one_config() -> None:
    ids = [sha(b"base"), sha(b"x"), sha(b"sub"), sha(b"y")]
    configs = []
    classic, buildkit = {"User": "1000:1000"}, {"User": "1000:1000", "ArgsEscaped": True}
    for steps, run in ((CLASSIC_HISTORY, classic), (BUILDKIT_HISTORY, buildkit)):
        raw = raw_config(ids, "2025-01-01T10:00:00Z", "ab" * 32)
        raw["config"] = run
        raw["history"] = [{"created": "x", "comment": "Imported from -"}] + [
            {"created": "x", "created_by": by} | ({} if made else {"empty_layer": True})
            | ({"comment": "buildkit.dockerfile.v0"} if steps is BUILDKIT_HISTORY else {})
            for by, made in zip(steps, MADE_LAYER)]
        configs.append(N.normalize_config(raw, ids, EPOCH))
    assert configs[0] == configs[1]
    cfg = json.loads(configs[0])
    assert cfg["config"] == {"User": "1000:1000"}
    assert [h.get("created_by") for h in cfg["history"]] == [
        None, f"COPY {ids[1]} in /x", f"COPY {ids[2]} in /opt/sub/", "ENV", "ARG", "LABEL",
        "RUN |1 REV=abc /bin/sh -c echo $A > /y  && echo z", "EXPOSE", "HEALTHCHECK", "WORKDIR", "CMD"]


def test_the_classic_and_the_containerd_image_store_give_one_config() -> None:
    """The same build's run config as Docker 20.10 (classic store) and Docker 28 on the containerd
    image store write it, recorded from the runtime image: one set of canonical bytes."""
    classic = {"AttachStderr": False, "AttachStdin": False, "AttachStdout": False, "Cmd": ["/bin/bash"],
               "Domainname": "", "Entrypoint": ["/usr/bin/tini", "-g", "--"], "Env": ["LANG=C.UTF-8"],
               "Hostname": "", "Image": "", "Labels": {"a": "b"}, "OnBuild": None, "OpenStdin": False,
               "StdinOnce": False, "Tty": False, "User": "1000:1000", "Volumes": None, "WorkingDir": "/home/user"}
    containerd = {"Cmd": ["/bin/bash"], "Entrypoint": ["/usr/bin/tini", "-g", "--"], "Env": ["LANG=C.UTF-8"],
                  "Labels": {"a": "b"}, "User": "1000:1000", "WorkingDir": "/home/user"}
    ids = [sha(b"1"), sha(b"2"), sha(b"3")]
    configs = []
    for run in (classic, containerd):
        raw = raw_config([sha(b"x")] * 3, "2025-01-01T10:00:00Z", "ab" * 32)
        raw["config"] = run
        configs.append(N.normalize_config(raw, ids, EPOCH))
    assert configs[0] == configs[1]
    assert json.loads(configs[0])["config"] == containerd
    raw = raw_config([sha(b"x")] * 3, "2025-01-01T10:00:00Z", "ab" * 32)
    raw["config"] = {**containerd, "StopTimeout": 0}  # zero is a value, not an empty field
    assert json.loads(N.normalize_config(raw, ids, EPOCH))["config"]["StopTimeout"] == 0


def saved_image(layers: list[bytes], config: dict, *, tags: list[str] | None = None) -> bytes:
    """A `docker save` tar as Docker 20.10 writes it (v1 dirs, symlinks for repeated layers)."""
    raw = json.dumps(config).encode()
    buf = io.BytesIO()
    first: dict[str, str] = {}

    def add(tf: tarfile.TarFile, name: str, data: bytes | None, **attrs: object) -> None:
        ti = tarfile.TarInfo(name)
        ti.mtime = 1234567
        for k, val in attrs.items():
            setattr(ti, k, val)
        if data is not None:
            ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data) if data is not None else None)

    paths = []
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i, layer in enumerate(layers):
            d = hashlib.sha256(b"v1" + bytes([i]) + layer).hexdigest()
            add(tf, d, None, type=tarfile.DIRTYPE, mode=0o755)
            add(tf, f"{d}/VERSION", b"1.0")
            add(tf, f"{d}/json", b"{}")
            digest = sha(layer)
            if digest in first:
                add(tf, f"{d}/layer.tar", None, type=tarfile.SYMTYPE, linkname=f"../{first[digest]}/layer.tar")
            else:
                first[digest] = d
                add(tf, f"{d}/layer.tar", layer)
            paths.append(f"{d}/layer.tar")
        cfg_name = hashlib.sha256(raw).hexdigest() + ".json"
        add(tf, cfg_name, raw)
        add(tf, "manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": tags, "Layers": paths}]).encode())
    return buf.getvalue()


def image_case(seed: int, mtime: int) -> bytes:
    """Same content every seed; order, late mtimes, names and config noise vary with it."""
    entries = [
        ("app", None, {"type": tarfile.DIRTYPE, "mode": 0o755}),
        ("app/main.py", b"print('hi')\n", {}),
        ("app/__pycache__/main.cpython-312.pyc", bytes([seed]), {}),
        ("var/log/dpkg.log", b"log %d" % seed, {}),
        ("etc/machine-id", b"%032x" % seed, {}),
        ("usr/share/" + "long" * 30, b"x", {}),
    ]
    if seed % 2:
        entries.reverse()
    entries = [(n, d, {"mtime": mtime, "uname": f"u{seed}", **a}) for n, d, a in entries]
    layers = [tar_of(*entries), tar_of(), tar_of(("b", b"b", {"mtime": mtime})), tar_of()]
    cfg = raw_config([sha(x) for x in layers], f"2025-01-0{seed % 9 + 1}T00:00:00Z", "%064x" % seed)
    cfg["history"].append({"created": "now", "created_by": "RUN true"})  # 4 layers, 4 entries
    return saved_image(layers, cfg)


def run_normalize(src: bytes, tmp_path: Path, **options: object) -> tuple[bytes, N.NormalizeReport]:
    path = tmp_path / f"src-{hashlib.sha256(src).hexdigest()[:12]}.tar"
    path.write_bytes(src)
    out = io.BytesIO()
    report = N.normalize_to_file(path, out, EPOCH, **options)
    return out.getvalue(), report


def test_saved_image_normalizes_to_a_content_only_id(tmp_path: Path) -> None:
    out_a, rep_a = run_normalize(image_case(1, EPOCH + 10), tmp_path)
    out_b, rep_b = run_normalize(image_case(2, EPOCH + 99999), tmp_path)
    assert rep_a.source_image_id != rep_b.source_image_id
    assert rep_a.image_id == rep_b.image_id
    assert out_a == out_b, "the docker-load tar itself is deterministic"
    assert rep_a.bytes_out == len(out_a)

    tf = tarfile.open(fileobj=io.BytesIO(out_a))
    assert raw_entries(out_a)  # exact end blocks on the outer tar too
    manifest = json.loads(tf.extractfile("manifest.json").read())
    assert manifest == [
        {
            "Config": rep_a.image_id[7:] + ".json",
            "Layers": ["0/layer.tar", "1/layer.tar"],  # the two empty layers left out
            "RepoTags": None,
        }
    ]
    config = tf.extractfile(manifest[0]["Config"]).read()
    assert config == rep_a.config and sha(config) == rep_a.image_id
    layers = [tf.extractfile(p).read() for p in manifest[0]["Layers"]]
    assert [sha(x) for x in layers] == list(rep_a.diff_ids) == json.loads(config)["rootfs"]["diff_ids"]
    assert [r.dropped for r in rep_a.layers] == [False, True, False, True]
    assert N.EMPTY_LAYER_DIGEST not in rep_a.diff_ids
    history = json.loads(config)["history"]
    assert [bool(h.get("empty_layer")) for h in history] == [False, True, True, False, True]
    first = rep_a.layers[0]
    assert (first.removed, first.emptied) == (2, 1)
    assert set(first.removed_sample) == {"app/__pycache__/main.cpython-312.pyc", "var/log/dpkg.log"}


def test_saved_image_idempotent_and_tags(tmp_path: Path) -> None:
    out, rep = run_normalize(image_case(3, EPOCH + 1), tmp_path)
    again, rep2 = run_normalize(out, tmp_path)
    assert again == out and rep2.image_id == rep.image_id == rep2.source_image_id
    tagged, rep3 = run_normalize(out, tmp_path, repo_tags=["img:1"])
    assert rep3.image_id == rep.image_id
    manifest = json.loads(tarfile.open(fileobj=io.BytesIO(tagged)).extractfile("manifest.json").read())
    assert manifest[0]["RepoTags"] == ["img:1"]


def test_generator_streams_in_bounded_chunks(tmp_path: Path) -> None:
    src = tmp_path / "s.tar"
    src.write_bytes(image_case(4, EPOCH))
    gen = N.normalize_saved_image(src, EPOCH)
    chunks = []
    while True:
        try:
            chunks.append(next(gen))
        except StopIteration as stop:
            report = stop.value
            break
    assert all(len(c) <= 2 * N.CHUNK for c in chunks)
    assert sum(map(len, chunks)) == report.bytes_out


def test_saved_tar_with_two_images_is_rejected(tmp_path: Path) -> None:
    src = tarfile.open(fileobj=io.BytesIO(image_case(1, EPOCH)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == "manifest.json":
                data = json.dumps(json.loads(data) * 2).encode()
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    path = tmp_path / "two.tar"
    path.write_bytes(buf.getvalue())
    with pytest.raises(N.NormalizeError, match="exactly one image"):
        N.normalize_to_file(path, io.BytesIO(), EPOCH)


def test_on_layer_sees_each_written_layer_and_its_file_data(tmp_path: Path) -> None:
    """What a scan is handed is the normalized layer: its names, and data at the given offsets."""
    src = tmp_path / "s.tar"
    src.write_bytes(image_case(5, EPOCH + 7))
    seen: dict[str, list[N.LayerFile]] = {}
    out = io.BytesIO()
    report = N.normalize_to_file(src, out, EPOCH, on_layer=lambda i, d, files: seen.setdefault(d, files))
    assert list(seen) == list(dict.fromkeys(report.diff_ids))
    tf = tarfile.open(fileobj=io.BytesIO(out.getvalue()))
    first = tarfile.open(fileobj=tf.extractfile("0/layer.tar"))
    expected = {m.name: first.extractfile(m).read() if m.isfile() else None for m in first.getmembers()}
    files = seen[report.diff_ids[0]]
    assert [f.path for f in files] == list(expected)
    with open(src, "rb") as f:
        for entry in files:
            f.seek(entry.offset)
            assert (f.read(entry.size) if entry.is_file else None) == expected[entry.path], entry.path
    assert "etc/machine-id" in expected and expected["etc/machine-id"] == b""  # emptied: size 0


def test_scans_kept_while_normalizing_equal_scans_of_the_written_layers(tmp_path: Path, monkeypatch) -> None:
    """The build's glue (on_layer → hygiene.scan_and_keep) keeps, per diff ID, the scan that
    verify would make from the layer itself."""
    from builder import hygiene

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "s.tar"
    src.write_bytes(image_case(6, EPOCH + 3))
    out = io.BytesIO()
    with open(src, "rb") as data:
        report = N.normalize_to_file(src, out, EPOCH, on_layer=lambda i, d, files: hygiene.scan_and_keep(d, files, data))
    tf = tarfile.open(fileobj=io.BytesIO(out.getvalue()))
    for i, diff_id in enumerate(report.diff_ids):
        assert hygiene.kept(diff_id) == hygiene.scan_layer(tf.extractfile(f"{i}/layer.tar")), i


def test_what_normalization_remembers_holds_only_for_the_code_that_learned_it(tmp_path, monkeypatch) -> None:
    """A changed normalizer (rules, config handling) must not reuse a raw → normalized mapping an
    older one wrote: it would hand back the old image ID without normalizing."""
    from builder import normalize, pipeline

    source = tmp_path / "src"
    source.mkdir()
    for name in ("a.py", "b.py"):
        (source / name).write_text("x = 1\n")
    before = normalize.code_id(source)
    assert normalize.code_id(source) == before
    (source / "b.py").write_text("x = 2\n")
    assert normalize.code_id(source) != before

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipeline._keep_known_layers({"image:1:sha256:raw": {"id": "sha256:old", "config": "{}"}})
    assert "image:1:sha256:raw" in pipeline._known_layers()
    monkeypatch.setattr(normalize, "code_id", lambda: "another")
    assert pipeline._known_layers() == {}
