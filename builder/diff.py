"""`diff IMAGE_A IMAGE_B`: explain why two images differ (or that they do not).

Config fields first, then per layer (by position) the files added, removed or changed — content,
mode, owner, mtime — largest first. Used to chase a reproducibility failure and to compare
two releases. Both images are read through the engine (its store or `docker save`); only
per-file metadata and content hashes are kept in memory.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import IO, Any, TextIO

from builder.engine import Engine
from builder.normalize import Archive
from builder.normalize.tarformat import Window


@dataclass(frozen=True)
class Entry:
    size: int
    mode: int
    owner: str  # "uid:gid"
    mtime: int
    content: str  # sha256 for regular files, link target for links, "" otherwise


def layer_entries(layer: IO[bytes]) -> dict[str, Entry]:
    entries = {}
    with tarfile.open(fileobj=layer, mode="r|") as tar:
        for member in tar:
            content = ""
            if member.isfile():
                digest = hashlib.sha256()
                stream = tar.extractfile(member)
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
                content = digest.hexdigest()
            elif member.issym() or member.islnk():
                content = f"-> {member.linkname}"
            entries[member.name.lstrip("./")] = Entry(member.size, member.mode, f"{member.uid}:{member.gid}",
                                                      int(member.mtime), content)
    return entries


def archive_entries(archive: Archive) -> tuple[dict[str, Any], list[dict[str, Entry]]]:
    """Config and per-layer entries (stack order) of an image archive."""
    return json.loads(archive.config), [layer_entries(Window(f, offset, size)) for f, offset, size in archive.layers]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    return [f"config {key}: {json.dumps(fa.get(key))[:120]} → {json.dumps(fb.get(key))[:120]}"
            for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]


def layer_changes(a: dict[str, Entry], b: dict[str, Entry]) -> list[tuple[int, str]]:
    """(size, line) for each path that differs, so the caller can sort largest first."""
    changes = []
    for path in sorted(set(a) | set(b)):
        old, new = a.get(path), b.get(path)
        if old == new:
            continue
        if old is None:
            changes.append((new.size, f"  + {path} ({new.size} bytes)"))
        elif new is None:
            changes.append((old.size, f"  - {path} ({old.size} bytes)"))
        else:
            what = [name for name in ("content", "size", "mode", "owner", "mtime")
                    if getattr(old, name) != getattr(new, name)]
            detail = ", ".join(f"{w} {getattr(old, w)} → {getattr(new, w)}" if w in ("mode", "owner", "mtime", "size")
                               else "content" for w in what)
            changes.append((max(old.size, new.size), f"  ~ {path}: {detail}"))
    return changes


def explain(c: Engine, image_a: str, image_b: str, out: TextIO, limit: int = 40,
            c_b: Engine | None = None) -> bool:
    """Write the differences; returns True when the images are identical (same ID).

    c_b: the engine that holds image_b, when it is not c (two engines built "the same" image)."""
    c_b = c_b or c
    id_a, id_b = c.image_id(image_a), c_b.image_id(image_b)
    out.write(f"A {image_a} = {id_a}\nB {image_b} = {id_b}\n")
    if id_a == id_b:
        out.write("identical: same image ID\n")
        return True
    with c.layers(id_a) as (archive_a, _), c_b.layers(id_b) as (archive_b, _):
        config_a, layers_a = archive_entries(archive_a)
        config_b, layers_b = archive_entries(archive_b)
    for line in config_changes({k: v for k, v in config_a.items() if k != "rootfs"},
                               {k: v for k, v in config_b.items() if k != "rootfs"}):
        out.write(line + "\n")
    diff_a, diff_b = config_a["rootfs"]["diff_ids"], config_b["rootfs"]["diff_ids"]
    for i in range(max(len(layers_a), len(layers_b))):
        la = layers_a[i] if i < len(layers_a) else {}
        lb = layers_b[i] if i < len(layers_b) else {}
        da = diff_a[i][:19] if i < len(diff_a) else "(none)"
        db = diff_b[i][:19] if i < len(diff_b) else "(none)"
        if da == db:
            out.write(f"layer {i}: same ({da})\n")
            continue
        changes = sorted(layer_changes(la, lb), key=lambda c: -c[0])
        out.write(f"layer {i}: {da} → {db}, {len(changes)} path(s) differ\n")
        for _, line in changes[:limit]:
            out.write(line + "\n")
        if len(changes) > limit:
            out.write(f"  … and {len(changes) - limit} more\n")
        if not changes:
            out.write("  same files; the tar itself differs (entry order, headers or padding)\n")
    return False
