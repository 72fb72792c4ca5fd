"""An image made canonical: its config, and the ``docker load`` tar that carries it.

The config gets fixed ``created`` times, no container id, hostname, parent image or builder
version, ``diff_ids`` recomputed, canonical JSON; its sha256 is the image ID, the same on every
engine that loads it.

Streaming, and why a single pass suffices: ``docker load`` reads the whole upload before it
reads ``manifest.json``, so entry order in the outer tar is free. The layers go first and the
config last, so each layer's digest is known by the time the config is written; a layer's size,
needed before its bytes for its outer header, comes from the index pass. Layers are named by
position (``<n>/layer.tar``), because their digest is not known when their outer header is
written.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from builder.normalize import layer, paths
from builder.normalize.tarformat import BLOCK, CHUNK, EMPTY_LAYER_DIGEST, END, REG, NormalizeError, tar_header


@dataclass(frozen=True)
class NormalizeReport:
    """Result of normalizing one saved image; ``image_id`` is what ``docker load`` will report."""

    source_image_id: str
    image_id: str
    layers: tuple[layer.LayerReport, ...]
    bytes_in: int  # layer + config bytes read from the saved tar
    bytes_out: int  # length of the produced docker-load tar
    config: bytes = field(repr=False, default=b"")  # the normalized config (its sha256 is the ID)
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went (builder/rewrite.py)
    layer_source: str = ""  # where the layers were read: "store" or "archive" (builder/rewrite.py)

    @property
    def diff_ids(self) -> tuple[str, ...]:
        """The normalized image's layers (the dropped empty ones are not among them)."""
        return tuple(layer.diff_id for layer in self.layers if not layer.dropped)


_CLASSIC_NOP = re.compile(r"^/bin/sh -c #\(nop\)\s+")
_BUILDKIT_MARK = " # buildkit"
_CLASSIC_COPY_DEST = re.compile(r" in (?P<dest>\S+) ?$")  # "[--chown=u:g]dir:<hash> in <dest> "


def canonical_step(created_by: str, diff_hex: str | None) -> str:
    """One spelling of a Dockerfile step in history, whichever builder wrote it, so the classic
    builder and BuildKit give one config (one image ID).

    The builders agree on RUN's command (``|N ARG=v /bin/sh -c …``), so it is kept, as ``RUN …``.
    They disagree on the rest: the classic builder writes ``/bin/sh -c #(nop) COPY dir:<hash of
    the context with mtimes> in /dest``, BuildKit ``COPY src /dest # buildkit``; ``EXPOSE 22
    8888`` against ``EXPOSE map[22/tcp:{} …]``. A COPY or ADD becomes ``COPY sha256:<diff ID of
    its layer> in /dest`` (content only); a step that only sets config keeps its keyword, its
    values are in the config. Anything else (an import's empty entry) is kept as it is.
    """
    classic = _CLASSIC_NOP.match(created_by)
    if created_by.endswith(_BUILDKIT_MARK):
        step = created_by[: -len(_BUILDKIT_MARK)]
    elif classic:
        step = created_by[classic.end():]
    elif created_by.startswith(("/bin/sh -c ", "|")):
        return "RUN " + created_by  # the classic builder's RUN
    elif re.match(r"^[A-Z]+( |$)", created_by):
        step = created_by  # BuildKit's config-only steps carry no mark
    else:
        return created_by
    keyword, _, rest = step.partition(" ")
    if keyword == "RUN":
        return step
    if keyword in ("COPY", "ADD"):
        found = _CLASSIC_COPY_DEST.search(rest) if classic else None
        dest = found.group("dest") if found else (rest.split() or [""])[-1]
        return f"{keyword} sha256:{diff_hex} in {dest}" if diff_hex else f"{keyword} in {dest}"
    return keyword


def rfc3339(epoch: int) -> str:
    """``SOURCE_DATE_EPOCH`` as Docker writes times, in UTC with a "Z" and no fraction."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def normalize_config(config: dict[str, Any], diff_ids: Sequence[str], epoch: int,
                     dropped: Iterable[int] = ()) -> bytes:
    """Return the canonical config bytes (their sha256 is the image ID).

    ``diff_ids``: one per source layer, normalized; ``dropped``: the indexes of those left out
    of the image (empty layers): their history entries become empty_layer ones.

    History is written in one spelling whichever builder made the image (``canonical_step``);
    a COPY names the diff ID of the layer it made when history and layers line up.

    The run config keeps only fields with a value: Docker's classic image store writes every
    container-config field, zero ones included (``"Tty": false``, ``"Domainname": ""``,
    ``"OnBuild": null``), the containerd image store writes none of those, and the OCI image spec
    knows none of them; with them dropped both stores give the same bytes, hence one image ID.
    """
    cfg = json.loads(json.dumps(config))  # deep copy
    created = rfc3339(epoch)
    for key in ("container", "container_config", "docker_version", "id", "parent"):
        cfg.pop(key, None)
    cfg["created"] = created
    run = cfg.get("config")
    if isinstance(run, dict):
        # the build container's name, the builder's intermediate image; BuildKit's ArgsEscaped
        # (a Windows matter: Linux never reads it; the classic builder does not write it)
        for key in ("Hostname", "Image", "ArgsEscaped"):
            run.pop(key, None)
        for key in [k for k, v in run.items() if v is None or v is False or v == ""]:  # 0 is a value
            run.pop(key)
    dropped = set(dropped)
    history = cfg.get("history")
    if isinstance(history, list):
        layered = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
        lined_up = len(layered) == len(diff_ids)
        layer_of = {id(h): i for i, h in enumerate(layered)}
        for h in history:
            if not isinstance(h, dict):
                continue
            h["created"] = created
            if str(h.get("comment", "")).startswith("buildkit."):  # "buildkit.dockerfile.v0": the builder's name
                del h["comment"]
            i = layer_of.get(id(h)) if lined_up else None
            if i in dropped:
                h["empty_layer"] = True
            by = h.get("created_by")
            if isinstance(by, str):
                made = diff_ids[i].split(":", 1)[-1] if i is not None and i not in dropped else None
                h["created_by"] = canonical_step(by, made)
    cfg["rootfs"] = {"type": "layers", "diff_ids": [d for i, d in enumerate(diff_ids) if i not in dropped]}
    return canonical_json(cfg)


def _outer_header(name: str, size: int, epoch: int) -> bytes:
    return tar_header(name.encode(), REG, mode=0o644, uid=0, gid=0, size=size, mtime=epoch)


def normalize_image(
    config_raw: bytes,
    layers: Sequence[tuple[BinaryIO, int, int]],
    epoch: int,
    *,
    drop: Iterable[str] = paths.DEFAULT_DROP,
    empty: Iterable[str] = paths.DEFAULT_EMPTY,
    keep_pycache: paths.PycacheMode = "valid",
    repo_tags: Sequence[str] | None = None,
    reuse: Callable[[str, list[str]], str | None] | None = None,
    on_layer: Callable[[int, str, list[layer.LayerFile]], None] | None = None,
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

    A layer with no entries at all is left out (its history entry becomes an empty_layer one):
    builders disagree on when they make one (BuildKit's WORKDIR of an existing directory makes
    an empty layer, the classic builder's makes none), and it carries nothing.

    ``on_layer(index, diff_id, files)`` is called after each layer written, with its entries as
    :data:`LayerFile` (data offsets point into that layer's file): a scan can read the layer's
    files without a second ``docker save``.
    """
    rules = paths.rules(drop, empty, keep_pycache)
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
    reports: list[layer.LayerReport] = []
    names: list[str] = []
    for i, (f, offset, size) in enumerate(layers):
        path = f"{len(names)}/layer.tar"  # the image's layers, dropped ones not counted
        known = reuse(str(source_diff_ids[i]), [r.diff_id for r in reports if not r.dropped]) if reuse else None
        if known and known != EMPTY_LAYER_DIGEST:
            reports.append(layer.LayerReport(str(source_diff_ids[i]), known, size, 0, 0, 0, 0, 0, reused=True))
            names.append(path)
            continue
        plan = layer.plan_layer(f, offset, size, epoch, rules)
        if not plan.entries:
            reports.append(dataclasses.replace(layer.layer_report(str(source_diff_ids[i]), EMPTY_LAYER_DIGEST,
                                                                  size, plan), dropped=True))
            continue
        yield from put(_outer_header(path, plan.out_size, epoch))
        digest = hashlib.sha256()
        n = 0
        for piece in layer.emit_layer(f, plan):
            digest.update(piece)
            n += len(piece)
            yield from put(piece)
        if n != plan.out_size:
            raise NormalizeError(f"internal: layer {i} planned {plan.out_size} bytes, got {n}")
        pad = -n % BLOCK
        if pad:  # never: a tar is whole blocks; kept for the outer format's sake
            yield from put(bytes(pad))
        diff_id = "sha256:" + digest.hexdigest()
        reports.append(layer.layer_report(str(source_diff_ids[i]), diff_id, size, plan))
        names.append(path)
        if on_layer:
            on_layer(i, diff_id, [layer.LayerFile(e.key.replace(b"\0", b"/").decode("utf-8", "surrogateescape"),
                                                  e.type == REG, e.size, e.offset) for e in plan.entries])
        del plan

    config = normalize_config(source, [r.diff_id for r in reports], epoch,
                              dropped=[i for i, r in enumerate(reports) if r.dropped])
    image_hex = hashlib.sha256(config).hexdigest()
    config_name = f"{image_hex}.json"
    manifest = canonical_json(
        [{"Config": config_name, "Layers": names, "RepoTags": list(repo_tags) if repo_tags else None}]
    )
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        yield from put(_outer_header(name, len(data), epoch))
        yield from put(data + bytes(-len(data) % BLOCK))
    yield from put(END)
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


def load_tar(config: bytes, epoch: int, layers: Sequence[tuple[BinaryIO, int, int]] = ()) -> Iterator[bytes]:
    """A ``docker load`` tar of a config and its (already canonical) layers, copied as they are.

    Without ``layers`` only the config travels: enough for an engine that registers layers by
    chain and holds them all (the graph drivers); the containerd image store wants every layer.
    """
    image_hex = hashlib.sha256(config).hexdigest()
    names = [f"{i}/layer.tar" for i in range(len(json.loads(config)["rootfs"]["diff_ids"]))]
    for name, (f, offset, size) in zip(names, layers):
        yield _outer_header(name, size, epoch)
        f.seek(offset)
        left = size
        while left:
            data = f.read(min(left, CHUNK))
            if not data:
                raise NormalizeError(f"layer {name} ended {left} bytes early")
            left -= len(data)
            yield data
        yield bytes(-size % BLOCK)
    manifest = canonical_json([{"Config": f"{image_hex}.json", "Layers": names, "RepoTags": None}])
    for name, body in ((f"{image_hex}.json", config), ("manifest.json", manifest)):
        yield _outer_header(name, len(body), epoch) + body + bytes(-len(body) % BLOCK)
    yield END


def with_labels(config: bytes, labels: dict[str, str]) -> bytes:
    """The canonical config with ``labels`` added: as reproducible as the labels are."""
    data = json.loads(config)
    data.setdefault("config", {}).setdefault("Labels", {}).update(labels)
    return canonical_json(data)


def drain(output: Generator[bytes, None, NormalizeReport], write: Callable[[bytes], Any]) -> NormalizeReport:
    """Hand every chunk of a normalizer's output to ``write``; the normalizer's report."""
    while True:
        try:
            write(next(output))
        except StopIteration as stop:
            return stop.value
