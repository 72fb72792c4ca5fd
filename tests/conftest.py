"""Shared fixtures: the real engine, images built once per session, containers that always go away.

Integration tests need the engine. In CI (CI=true) a missing engine is an error, never a skip.
Images the session creates are removed at its end (KEEP_TEST_IMAGES=1 keeps them for a
faster next run while developing).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import docker
import docker.errors
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import engine, manifest, pipeline  # noqa: E402
from builder.errors import UserError  # noqa: E402

TEST_REPOSITORY = "pytorch-cuda-test"


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        return engine.client()
    except UserError as exc:
        pytest.fail(f"integration tests need a Docker engine: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def session_images(docker_client):
    """Remove, at the end of the session, every image that was not in the engine at its start."""
    before = {i.id for i in docker_client.images.list(all=True)}
    yield
    if os.environ.get("KEEP_TEST_IMAGES") == "1":
        return
    for image in docker_client.images.list():
        engine.untag(docker_client, [t for t in image.tags if t.startswith(f"{TEST_REPOSITORY}:")])
    for image in docker_client.images.list(all=True):
        if image.id not in before:
            try:
                docker_client.images.remove(image.id, force=True, noprune=False)
            except docker.errors.APIError:
                pass  # already gone with a parent, or still used by a removed-later child
    docker_client.images.prune(filters={"dangling": True})


@pytest.fixture(scope="session")
def the_manifest() -> manifest.Manifest:
    return manifest.load()


@pytest.fixture(scope="session")
def runtime_image(docker_client, session_images, the_manifest) -> pipeline.Built:
    """The runtime image, built once per session through the real pipeline."""
    return pipeline.build(docker_client, the_manifest.variant("runtime"), repository=TEST_REPOSITORY)


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
                container.remove(force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def containers(docker_client):
    tracked = TrackedContainer(docker_client)
    yield tracked
    tracked.remove_all()
