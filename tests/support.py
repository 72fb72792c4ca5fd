"""Helpers the tests share (fixtures live in conftest.py)."""
from __future__ import annotations

import io
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
