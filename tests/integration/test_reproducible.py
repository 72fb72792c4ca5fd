"""Same inputs, same image ID: the runtime image rebuilt from a cleared cache, base included."""
from __future__ import annotations

import io

from builder import diff, pipeline
from tests.support import TEST_REPOSITORY


def test_rebuild_from_a_cleared_cache_gives_the_same_image_id(runtime_image, docker_client, the_manifest):
    docker_client.untag([the_manifest.base_ref])  # the rebuild bootstraps the base anew
    # BuildKit's cache, pip's downloads included: cleared, not kept beside a second copy of runtime's stages
    docker_client.client.api.prune_builds(all=True)
    rebuilt = pipeline.build(docker_client, the_manifest.variant("runtime"), repository=TEST_REPOSITORY,
                             nocache=True, quiet=True)
    try:
        assert rebuilt.raw_id != runtime_image.raw_id, "the rebuild came from the cache"
        if rebuilt.image_id != runtime_image.image_id:
            explanation = io.StringIO()
            diff.explain(docker_client, runtime_image.image_id, rebuilt.image_id, explanation)
            raise AssertionError(f"{runtime_image.image_id} != {rebuilt.image_id}:\n{explanation.getvalue()}")
        print(f"same ID {rebuilt.image_id}; rebuild {rebuilt.seconds}")
    finally:  # the rebuild's raw image (7 GB); a differing normalized image goes with the session's
        if rebuilt.raw_id != runtime_image.raw_id:
            docker_client.remove_image(rebuilt.raw_id, force=True)


def test_diff_explains_a_difference(runtime_image, docker_client, the_manifest):
    """Two images that differ in one file and one label: diff names both."""
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = f"FROM {the_manifest.base_ref}\nLABEL diff.test=yes\nRUN echo changed > /etc/motd\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    changed = docker_client.build(buf, target="", quiet=True)
    try:
        out = io.StringIO()
        assert diff.explain(docker_client, the_manifest.base_ref, changed, out) is False
        text = out.getvalue()
        assert "config config.Labels.diff.test" in text
        assert "etc/motd" in text
        assert diff.explain(docker_client, changed, changed, io.StringIO()) is True
    finally:
        docker_client.remove_image(changed, force=True)
