"""The BuildKit backend and the classic builder give one image ID: the same Dockerfile templates
rendered for each, different raw images, one normalized image. runtime_image is built by the
default backend, auto, which is BuildKit here; this module builds runtime with the classic builder.
(The build CA, a secret mount under BuildKit, is looked for in every layer of that one image by
runtime's verify.)

CI's engine is Docker 20.10, whose CLI has BuildKit built in (DOCKER_BUILDKIT=1): a missing
BuildKit client fails this module, it is never skipped.
"""
from __future__ import annotations

import io

import pytest

from builder import diff, pipeline


@pytest.fixture(scope="module")
def classic_runtime(docker_client, runtime_image, the_manifest):
    """runtime built by the classic builder. Its raw image and every stage image it left (the venv
    groups' stages, about 9 GB, untagged leaves nothing else builds on) go at the end; BuildKit's
    cache stays (later modules build on it), and the normalized image stays: it is runtime_image's,
    tagged."""
    before = set(docker_client.image_ids(dangling=True))
    try:
        yield pipeline.build(docker_client, the_manifest.variant("runtime"), backend="classic", quiet=True)
    finally:
        for image_id in set(docker_client.image_ids(dangling=True)) - before:
            docker_client.remove_image(image_id, force=True)  # its untagged parents go with it


def test_auto_chose_buildkit_and_it_really_built_it(runtime_image, classic_runtime, docker_client):
    assert runtime_image.backend == "buildkit", "auto chose the classic builder: no BuildKit client found"
    assert classic_runtime.backend == "classic"
    assert classic_runtime.raw_id != runtime_image.raw_id
    raw = docker_client.history(runtime_image.raw_id)
    assert any(step.endswith("# buildkit") for step in raw), raw[-3:]
    assert not any(step.endswith("# buildkit") for step in docker_client.history(classic_runtime.raw_id))


def test_both_backends_give_one_image_id(classic_runtime, runtime_image, docker_client):
    if classic_runtime.image_id != runtime_image.image_id:
        explanation = io.StringIO()
        diff.explain(docker_client, runtime_image.image_id, classic_runtime.image_id, explanation)
        raise AssertionError(f"buildkit {runtime_image.image_id} != classic {classic_runtime.image_id}:\n"
                             f"{explanation.getvalue()}")
