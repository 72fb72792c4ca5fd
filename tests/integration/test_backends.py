"""The BuildKit backend and the classic builder give one image ID: the same Dockerfile templates
rendered for each, different raw images, one normalized image. (The build CA, a secret mount
under BuildKit, is looked for in every layer of that one image by runtime's verify.)

CI's engine is Docker 20.10, whose CLI has BuildKit built in (DOCKER_BUILDKIT=1): a missing
BuildKit client fails this module, it is never skipped.
"""
from __future__ import annotations

import io

import pytest

from builder import diff, pipeline


@pytest.fixture(scope="module")
def buildkit_runtime(docker_client, runtime_image, the_manifest):
    """runtime built by BuildKit; its raw image and BuildKit's cache (pip's downloads included)
    go at the end, the normalized image stays: it is runtime_image's, tagged."""
    built = pipeline.build(docker_client, the_manifest.variant("runtime"), backend="buildkit", quiet=True)
    try:
        yield built
    finally:
        try:
            docker_client.remove_image(built.raw_id, force=True)
        finally:
            docker_client.client.api.prune_builds(all=True)


def test_buildkit_really_built_it(buildkit_runtime, runtime_image, docker_client):
    assert buildkit_runtime.backend == "buildkit"
    assert buildkit_runtime.raw_id != runtime_image.raw_id
    raw = docker_client.history(buildkit_runtime.raw_id)
    assert any(step.endswith("# buildkit") for step in raw), raw[-3:]
    assert not any(step.endswith("# buildkit") for step in docker_client.history(runtime_image.raw_id))


def test_both_backends_give_one_image_id(buildkit_runtime, runtime_image, docker_client):
    if buildkit_runtime.image_id != runtime_image.image_id:
        explanation = io.StringIO()
        diff.explain(docker_client, runtime_image.image_id, buildkit_runtime.image_id, explanation)
        raise AssertionError(f"classic {runtime_image.image_id} != buildkit {buildkit_runtime.image_id}:\n"
                             f"{explanation.getvalue()}")

