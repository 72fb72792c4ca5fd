"""Normalize an image the engine holds and load the result back: the normalizer meets the engine.

The layers come from wherever the engine's probe said (its local store, or `docker save`); the
normalized `docker load` tar streams straight into the engine, never to disk on our side.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from builder.engine import Engine
from builder.errors import BuildFailed
from builder.normalize import LayerFile, NormalizeReport, load_tar, normalize_image, with_labels
from builder.normalize.archive import own_reader


def load_stream(c: Engine, upload: Any) -> NormalizeReport:
    """Stream a normalizer's output into `docker load`; its report once the engine holds the image."""
    box: list[NormalizeReport] = []

    def body():
        box.append((yield from upload))

    messages = c.load(body())
    if not box:
        raise BuildFailed("docker load returned before the upload was complete")
    c.loaded(box[0].image_id, messages)
    return box[0]


def normalize_in_engine(c: Engine, image_id: str, epoch: int, *, cache: dict[str, str] | None = None,
                        tmp_dir: str | None = None,
                        scan: Callable[[str, list[LayerFile], BinaryIO], None] | None = None,
                        **options: Any) -> NormalizeReport:
    """Normalize an image in the engine and load the result back; the report (new image ID).

    ``cache`` maps "<epoch>:<source diff ID>" to normalized diff IDs from earlier runs: a layer
    found there whose normalized chain the engine already holds is not rewritten or sent again.
    The cache is updated in place. ``scan(diff_id, files, layer_file)`` runs for each layer
    written, in a thread beside the upload.
    """
    cache = {} if cache is None else cache
    chains = set()
    for known in c.image_ids(all=True):
        layers = c.diff_ids(known)
        chains.update(tuple(layers[:n]) for n in range(1, len(layers) + 1))

    def reuse(source: str, done: list[str]) -> str | None:
        hit = cache.get(f"{epoch}:{source}")
        return hit if hit and tuple(done + [hit]) in chains else None

    # The graph drivers register a loaded layer by its chain and never open the file of a chain
    # they hold; the containerd image store resolves every layer the upload names.
    every_layer = c.info.image_store == "containerd"

    clock = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(what: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[what] = round(now - clock, 1)
        clock = now

    with c.layers(image_id, tmp_dir) as (archive, source), ThreadPoolExecutor(max_workers=1) as scanner:
        lap("open_store" if source == "store" else "save")
        scans = []

        def scan_layer(i: int, diff_id: str, files: list[LayerFile]) -> None:
            f = archive.layers[i][0]  # files' offsets point into it: read it through a reader of its own
            with own_reader(f) as reader:
                scan(diff_id, files, reader)

        def on_layer(i: int, diff_id: str, files: list[LayerFile]) -> None:
            scans.append(scanner.submit(scan_layer, i, diff_id, files))

        report = load_stream(c, normalize_image(archive.config, archive.layers, epoch,
                                                reuse=None if every_layer else reuse,
                                                on_layer=on_layer if scan else None, **options))
        lap("rewrite_load")
        for done in scans:
            done.result()  # the scan's error, if any, is the build's
        lap("scan_wait")
    report = dataclasses.replace(report, seconds=seconds, layer_source=source)
    cache.update({f"{epoch}:{layer.source_diff_id}": layer.diff_id for layer in report.layers})
    return report


def relabel_in_engine(c: Engine, config: bytes, labels: dict[str, str], epoch: int) -> str:
    """Load a copy of a normalized image whose config has ``labels`` added; the new image ID.

    On the graph drivers only the config travels: every layer's chain is already in the engine,
    so `docker load` reads no layer file. The containerd image store wants the layers in the
    upload too: they are read back from the image (its archive) and sent again, which costs a
    save and a load of the whole image. The result is as reproducible as the labels are.
    """
    new_config = with_labels(config, labels)
    image_id = "sha256:" + hashlib.sha256(new_config).hexdigest()
    if c.info.image_store != "containerd":
        return c.loaded(image_id, c.load(b"".join(load_tar(new_config, epoch))))
    source = "sha256:" + hashlib.sha256(config).hexdigest()
    with c.layers(source) as (archive, _):
        return c.loaded(image_id, c.load(load_tar(new_config, epoch, archive.layers)))
