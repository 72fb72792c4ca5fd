"""Helpers the tests share (fixtures live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

import docker
import docker.errors

from builder import engine

ROOT = Path(__file__).resolve().parent.parent
TEST_REPOSITORY = "pytorch-cuda-test"


class TrackedContainer:
    """Runs containers and removes every one of them, even when the test fails."""

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.containers = []

    def start(self, image: str, **kwargs):
        kwargs.setdefault("labels", {engine.LABEL_TEST: "tracked"})
        container = self.client.containers.run(image, detach=True, **kwargs)
        self.containers.append(container)
        return container

    def run(self, image: str, command, **kwargs) -> engine.RunResult:
        return engine.run(self.client, image, command, **kwargs)

    def remove_all(self) -> None:
        for container in self.containers:
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
