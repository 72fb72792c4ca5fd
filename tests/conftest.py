"""Shared fixtures: the real engine, images built once per session, containers that always go away.

Integration tests need the engine. In CI (CI=true) a missing engine is an error, never a skip.
Images the session creates are removed at its end (KEEP_TEST_IMAGES=1 keeps them for a
faster next run while developing).
"""
from __future__ import annotations

import os
import shutil

import pytest

from builder import engine, manifest, pipeline
from builder.errors import UserError
from tests.support import TEST_REPOSITORY, TrackedContainer


LAST_MODULES = ("test_engines.py",)  # two more engines, ~28 GB each: see test_engines' docstring


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modern engines' module runs last: it releases the default engine's BuildKit cache first,
    to make room on CI's disk, and no later module then rebuilds what that cache held."""
    items.sort(key=lambda item: item.path.name in LAST_MODULES)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def docker_client() -> engine.Engine:
    try:
        return engine.connect()
    except UserError as exc:
        pytest.fail(f"integration tests need a Docker engine: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def session_images(docker_client, the_manifest):
    """At the end of the session, remove the images it created: everything tagged under a
    repository named after TEST_REPOSITORY, the raw builds behind them (with the build cache beneath), and the base if
    the session bootstrapped it, and BuildKit's build cache. Images and tags that were there before
    are left alone."""
    before = set(docker_client.image_ids(all=True))
    yield
    if os.environ.get("KEEP_TEST_IMAGES") == "1":
        return
    created = []
    for image_id, tags in docker_client.tags_by_image().items():
        test_tags = [t for t in tags if TEST_REPOSITORY in t.rpartition(":")[0]]
        if test_tags:
            docker_client.untag(test_tags)
            if image_id not in before and len(test_tags) == len(tags):
                created.append(image_id)
    # raw builds (the layer cache behind each normalized image) and images built untagged on the
    # way (a flavor's runtime) are untagged leaves made here
    created += [i for i in docker_client.image_ids(dangling=True) if i not in before]
    if docker_client.image_exists(the_manifest.base_ref):  # last: the raw builds stand on it
        base_id = docker_client.image_id(the_manifest.base_ref)
        if base_id not in before:
            created.append(base_id)
    for image_id in created:
        try:
            docker_client.remove_image(image_id, force=True)  # its untagged parents (build cache) go too
        except engine.APIError as exc:
            print(f"cleanup: could not remove {image_id}: {exc}")
    docker_client.client.api.prune_builds(all=True)  # BuildKit's cache of the session's builds (tens of GB)


@pytest.fixture(scope="session")
def the_manifest() -> manifest.Manifest:
    return manifest.load()


@pytest.fixture(scope="session")
def runtime_image(docker_client, session_images, the_manifest) -> pipeline.Built:
    """The runtime image, built once per session through the real pipeline."""
    return pipeline.build_and_tag(docker_client, the_manifest.variant("runtime"), repository=TEST_REPOSITORY)


@pytest.fixture(scope="session")
def build_flavor(docker_client, session_images, the_manifest, runtime_image):
    """build_flavor(name) → the flavor's image, built at most once per session (runtime's layers
    come from the cache); every module that needs a flavor shares it."""
    built: dict[str, pipeline.Built] = {}

    def build(flavor: str) -> pipeline.Built:
        if flavor not in built:
            built[flavor] = pipeline.build_and_tag(docker_client, the_manifest.variant(flavor),
                                                   repository=TEST_REPOSITORY, quiet=True)
        return built[flavor]

    return build


@pytest.fixture(scope="session")
def registry_storage(tmp_path_factory):
    """Blob storage shared by the registries the session starts one after another, so the runtime
    image's 7 GB is uploaded once: a later push of it finds every layer there."""
    storage = tmp_path_factory.mktemp("registry-storage")
    yield storage
    shutil.rmtree(storage, ignore_errors=True)


@pytest.fixture
def containers(docker_client):
    tracked = TrackedContainer(docker_client)
    yield tracked
    tracked.remove_all()
