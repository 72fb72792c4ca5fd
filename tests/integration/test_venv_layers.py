"""runtime's venv as one layer per group of the manifest's `venv_layers`: a change to one group's
part of the lock rebuilds that group's stage only, and every other layer keeps its bytes. On the
backend runtime_image was built by (BuildKit where the engine has it), whose cache holds its stages."""
from __future__ import annotations

import io

from builder import context, lock, pipeline
from builder.engine.buildlog import reinstalled


def test_a_bump_in_one_group_rebuilds_only_that_group(runtime_image, docker_client, the_manifest):
    groups = list(the_manifest.venv_layers)
    bumped = groups[-1]  # "rest": where a bump of a small package lands
    variant = the_manifest.variant("runtime")
    backend, ca = runtime_image.backend, context.find_ca_bundle(None)
    # a one-package change as the build sees it: that group's lock, and so its files, change
    edit = {f"venv-{bumped}.lock": lambda text: text.replace(lock.blocks(text)[-1][1], "")}
    log = io.StringIO()
    image_id = pipeline.engine_build(docker_client, variant, backend, ca=ca, edit=edit, out=log, revision="bump")
    unedited = ""
    try:
        assert [g for g in groups if reinstalled(log.getvalue(), backend, g)] == [bumped], log.getvalue()[-3000:]
        # the raw build's layers against the unedited build as the cache holds it now (a
        # cleared-cache rebuild elsewhere in the session may have replaced runtime_image's)
        unedited = pipeline.engine_build(docker_client, variant, backend, ca=ca, quiet=True, revision="bump")
        before, after = docker_client.diff_ids(unedited), docker_client.diff_ids(image_id)
        first_group = len(docker_client.diff_ids(the_manifest.base_ref)) + 1  # after the empty venv
        assert len(after) == len(before) >= first_group + len(groups)
        changed = [i for i, (b, a) in enumerate(zip(before, after)) if b != a]
        # the big layers before the bumped group's: not rebuilt, not pushed again
        assert changed and changed[0] >= first_group + groups.index(bumped), changed
    finally:
        for raw in {image_id, unedited} - {"", runtime_image.raw_id}:
            docker_client.remove_image(raw, force=True)


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
