"""runtime's venv as one layer per group of the manifest's `venv_layers`: a change to one group's
part of the lock rebuilds that group's stage only, and every other layer keeps its bytes."""
from __future__ import annotations

import io

from builder import context, lock


def steps(build_log: str, needle: str) -> list[str]:
    """The classic builder's steps whose instruction contains needle, with their output."""
    return [s for s in build_log.split("Step ")[1:] if needle in s.split("\n", 1)[0]]


def test_a_bump_in_one_group_rebuilds_only_that_group(runtime_image, docker_client, the_manifest):
    groups = list(the_manifest.venv_layers)
    bumped = groups[-1]  # "rest": where a bump of a small package lands
    variant = the_manifest.variant("runtime")
    # a one-package change as the build sees it: that group's lock, and so its files, change;
    # (only a changed file misses the cache: the classic builder's COPY key is the files' content)
    edit = {f"venv-{bumped}.lock": lambda text: text.replace(lock.blocks(text)[-1][1], "")}
    log = io.StringIO()
    image_id = docker_client.build(context.edited(context.build_context(variant, context.find_ca_bundle(None)), edit),
                                   target="runtime", out=log, buildargs={"SOURCE_REVISION": "bump"})
    try:
        for group in groups:
            install = steps(log.getvalue(), f"install-layer venv-{group} ")
            assert len(install) == 1, f"no install step for {group}"
            assert ("Using cache" in install[0]) == (group != bumped), install[0][:500]
        # the raw build's layers: the base, the empty venv, one per group, then the rest of runtime
        # against the unedited build as the cache holds it now (a cleared-cache rebuild elsewhere in
        # the session may have replaced the layers runtime_image was built from)
        unedited = docker_client.build(context.build_context(variant, context.find_ca_bundle(None)),
                                       target="runtime", quiet=True, buildargs={"SOURCE_REVISION": "bump"})
        before, after = docker_client.diff_ids(unedited), docker_client.diff_ids(image_id)
        first_group = len(docker_client.diff_ids(the_manifest.base_ref)) + 1
        moved = first_group + groups.index(bumped)
        assert len(after) == len(before) >= first_group + len(groups)
        assert after[:moved] == before[:moved]  # the big layers: not rebuilt, not pushed again
        assert after[moved] != before[moved]
    finally:
        docker_client.remove_image(image_id, force=True)


def test_the_venv_is_several_layers_and_none_holds_most_of_it(runtime_image, docker_client, the_manifest):
    groups = len(the_manifest.venv_layers)
    history = docker_client.client.api.history(runtime_image.image_id)[::-1]  # oldest first
    sizes = [h["Size"] for h in history if h["Size"] > 0]
    assert len(sizes) == len(docker_client.diff_ids(runtime_image.image_id))
    first_group = len(docker_client.diff_ids(the_manifest.base_ref)) + 1  # after the empty venv
    venv = sizes[first_group:first_group + groups]
    assert len(venv) == groups and all(venv)
    # one 6.5 GB layer before: a push or a pull now moves several layers at once
    assert max(venv) < sum(venv) / 2, venv
