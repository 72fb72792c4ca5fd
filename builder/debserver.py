"""The pinned .debs of a flavor's apt step, served to its build from a container on the engine.

A flavor's `RUN` fetches each .deb from `http://debs.pytorch-cuda.internal:8000/` (the name the
build containers resolve through `extra_hosts`, so neither address nor port is in the image) and
checks its sha256 before installing it. The files are the builder's cache of checked .debs
(builder/aptlock.py), handed to the engine through its API, so the build needs no route to the
archive and a lock whose versions the pockets dropped still builds where the cache has them.
Works the same on a remote engine: nothing listens on the build host.
"""
from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from builder.aptlock import Pin
from builder.engine import LABEL_TEST, Engine
from builder.errors import BuildFailed

HOST = "debs.pytorch-cuda.internal"
PORT = 8000
ROOT = "/srv/pytorch-cuda-debs"
READY_SECONDS = 30


def url() -> str:
    return f"http://{HOST}:{PORT}"


def debs_tar(debs: list[tuple[Pin, Path]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo(ROOT.lstrip("/"))
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for pin, path in debs:
            info = tarfile.TarInfo(f"{ROOT.lstrip('/')}/{pin.deb}")
            info.size, info.mode = path.stat().st_size, 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


@contextlib.contextmanager
def serving(c: Engine, image: str, debs: list[tuple[Pin, Path]]) -> Iterator[dict[str, str]]:
    """A container of `image` (the base: it has Python) serving the .debs; yields build extra_hosts."""
    container = c.client.containers.create(
        c.ref(image), entrypoint=["python3.12", "-u", "-m", "http.server", str(PORT), "--directory", ROOT],
        command=[], user="65534:65534", labels={LABEL_TEST: "debserver"})
    try:
        container.put_archive("/", debs_tar(debs))
        container.start()
        deadline = time.monotonic() + READY_SECONDS
        while b"Serving HTTP" not in container.logs():
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                raise BuildFailed(f"the container serving the pinned .debs to the build did not start: "
                                  f"{container.logs().decode(errors='replace')[-500:]}")
            time.sleep(0.2)
        container.reload()
        networks = container.attrs["NetworkSettings"]["Networks"]
        address = next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), "")
        if not address:
            raise BuildFailed(f"the container serving the pinned .debs has no IP address on {list(networks)}")
        yield {HOST: address}
    finally:
        c.remove_container(container)
