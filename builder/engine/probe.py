"""What kind of engine answers, from one `docker info` / `docker version`, and how to read its layers.

Pure: it takes the engine's own answers (and a way to test whether a path is readable), so each
shape users run (20.10 and 28 on overlay2, 28 on the containerd image store, rootless, remote)
is a recorded fixture in the unit tests.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LAYER_SOURCES = ("auto", "store", "archive")


@dataclass(frozen=True)
class EngineInfo:
    """The engine as probed once per run; ``layer_source`` is how its layers will be read, and why."""

    docker_host: str
    server_version: str
    api_version: str
    storage_driver: str
    image_store: str  # "graphdriver" (overlay2 and friends) or "containerd"
    data_root: str
    local: bool  # reached over a unix socket on this host
    rootless: bool
    buildkit: bool  # a BuildKit build can be driven from here (buildkit_command)
    store_readable: bool
    layer_source: str  # "store" or "archive"
    layer_source_reason: str
    layer_source_requested: str = "auto"  # the user's --layer-source

    @property
    def major(self) -> int:
        try:
            return int(self.server_version.split(".")[0])
        except ValueError:
            return 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_store(info: dict[str, Any]) -> str:
    """The containerd image store shows as a snapshotter in DriverStatus (Docker 24+)."""
    status = {str(k): str(v) for k, v in (info.get("DriverStatus") or []) if k is not None}
    if status.get("driver-type", "").startswith("io.containerd.snapshotter") or info.get("Driver") in ("overlayfs",):
        return "containerd"
    return "graphdriver"


def is_local(docker_host: str) -> bool:
    scheme = docker_host.split("://", 1)[0] if "://" in docker_host else "unix"
    return scheme in ("unix", "npipe")


def store_readable(data_root: str, readable: Callable[[Path], bool]) -> bool:
    """The fast path reads image/overlay2 (configs, tar-split) and overlay2/<id>/diff (files)."""
    root = Path(data_root)
    return all(readable(p) for p in (root / "image" / "overlay2" / "layerdb", root / "overlay2"))


def _default_readable(path: Path) -> bool:
    return os.access(path, os.R_OK | os.X_OK)


def buildx_available() -> bool:
    """BuildKit as the CLI drives it: the buildx plugin next to a docker CLI."""
    for d in (os.path.expanduser("~/.docker/cli-plugins"), "/usr/local/lib/docker/cli-plugins",
              "/usr/libexec/docker/cli-plugins", "/usr/lib/docker/cli-plugins"):
        if os.access(os.path.join(d, "docker-buildx"), os.X_OK):
            return True
    return shutil.which("docker-buildx") is not None


def _cli_major(cli: str) -> int:
    """`docker --version`'s major version (it asks no engine); 0 when it does not answer."""
    try:
        out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=20).stdout
        return int(re.search(r"version (\d+)\.", out).group(1))  # type: ignore[union-attr]
    except (OSError, subprocess.SubprocessError, AttributeError, ValueError):
        return 0


def buildkit_command() -> tuple[list[str], dict[str, str]] | None:
    """How a BuildKit build is driven from here (argv before the build's options, extra
    environment), or None: `docker buildx build --load` where the buildx plugin is installed,
    else a docker CLI older than 23, whose `docker build` has BuildKit built in (Debian's and
    Ubuntu's Docker 20.10 packages: DOCKER_BUILDKIT=1). Docker 23+ CLIs without buildx have none."""
    clis = list(dict.fromkeys(c for c in (shutil.which("docker"), "/usr/bin/docker") if c and os.access(c, os.X_OK)))
    if clis and buildx_available():
        return [clis[0], "buildx", "build", "--load"], {}
    for cli in clis:
        if 18 <= _cli_major(cli) < 23:
            return [cli, "build"], {"DOCKER_BUILDKIT": "1"}
    return None


def probe(info: dict[str, Any], version: dict[str, Any], docker_host: str, requested: str = "auto", *,
          readable: Callable[[Path], bool] = _default_readable, buildkit_client: bool | None = None) -> EngineInfo:
    """Decide how layers are read. ``requested`` is the user's --layer-source; a forced ``store``
    that cannot work is still returned as such, with the reason (the caller refuses it).
    ``buildkit_client``: whether a BuildKit build can be driven from here (default: look)."""
    if requested not in LAYER_SOURCES:
        raise ValueError(f"layer source must be one of {', '.join(LAYER_SOURCES)}, not {requested!r}")
    driver = str(info.get("Driver") or "")
    store_kind = image_store(info)
    data_root = str(info.get("DockerRootDir") or "")
    local = is_local(docker_host)
    rootless = any("rootless" in str(opt) for opt in info.get("SecurityOptions") or [])
    can_read = local and driver == "overlay2" and store_kind == "graphdriver" and bool(data_root) \
        and store_readable(data_root, readable)
    if not local:
        why = f"the engine at {docker_host} is remote: its store is on another machine"
    elif store_kind == "containerd":
        why = "the containerd image store keeps layers compressed in containerd's content store"
    elif driver != "overlay2":
        why = f"the storage driver is {driver or 'unknown'}, and only overlay2's layout is read directly"
    elif rootless:
        why = "a rootless engine's layer files belong to remapped users that cannot all be read"
    elif not can_read:
        why = f"{data_root} is not readable by this user (run as root to read it directly)"
    else:
        why = f"the local overlay2 store at {data_root} is readable: layers are read in place (no docker save)"
    fast = can_read and not rootless
    if requested == "auto":
        source = "store" if fast else "archive"
        reason = why if fast else f"{why}; layers come through docker save"
    elif requested == "store":
        source, reason = "store", (why if fast else f"--layer-source store cannot work: {why}")
    else:
        source, reason = "archive", "--layer-source archive: layers come through docker save"
    server = str(version.get("Version") or info.get("ServerVersion") or "")
    return EngineInfo(
        docker_host=docker_host, server_version=server, api_version=str(version.get("ApiVersion") or ""),
        storage_driver=driver, image_store=store_kind, data_root=data_root, local=local, rootless=rootless,
        buildkit=buildkit_command() is not None if buildkit_client is None else buildkit_client, store_readable=fast,
        layer_source=source, layer_source_reason=reason, layer_source_requested=requested)
