"""Helpers the tests share (fixtures live in conftest.py)."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from builder import engine

ROOT = Path(__file__).resolve().parent.parent
TEST_REPOSITORY = "pytorch-cuda-test"


class TrackedContainer:
    """Runs containers and removes every one of them, even when the test fails."""

    def __init__(self, client: engine.Engine):
        self.client = client
        self.containers = []

    def start(self, image: str, **kwargs):
        container = self.client.start(image, **kwargs)
        self.containers.append(container)
        return container

    def run(self, image: str, command, **kwargs) -> engine.RunResult:
        return self.client.run(image, command, **kwargs)

    def remove_all(self) -> None:
        for container in self.containers:
            self.client.remove_container(container)


def tar_of(members: dict[str, bytes]) -> bytes:
    """A plain tar of regular files, name → bytes, in the order given (layers and archives in tests)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def dockerfile_context(dockerfile: str) -> io.BytesIO:
    """A build context holding only a Dockerfile."""
    return io.BytesIO(tar_of({"Dockerfile": dockerfile.encode()}))


def make_wheel(directory: Path, name: str, version: str, module: str = "") -> Path:
    """A minimal pure-Python wheel (module `name` with `module` as its code): what a user installs."""
    import base64
    import hashlib
    import zipfile

    dist_info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": module.encode() or f"VERSION = {version!r}\n".encode(),
             f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist_info}/RECORD,,\n"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in {**files, f"{dist_info}/RECORD": record.encode()}.items():
            wheel.writestr(member, data)
    return path


def start_registry(port: int, folder: Path) -> str:
    """A fresh distribution registry (scripts/start-registry) on 127.0.0.1:PORT, its storage in folder."""
    env = {**os.environ, "REGISTRY_PORT": str(port), "REGISTRY_DIR": str(folder)}
    subprocess.run([str(ROOT / "scripts" / "start-registry")], env=env, check=True, capture_output=True, timeout=60)
    return f"127.0.0.1:{port}"


def stop_registry(port: int, folder: Path) -> None:
    env = {**os.environ, "REGISTRY_PORT": str(port), "REGISTRY_DIR": str(folder)}
    subprocess.run([str(ROOT / "scripts" / "stop-registry")], env=env, check=False, capture_output=True, timeout=60)

