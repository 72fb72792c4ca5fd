"""The engine probe's choice of layer source, on `docker info` / `docker version` answers recorded
from real engines (tests/fixtures/docker-info/README.md says how each was recorded)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.engine.probe import probe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "docker-info"
LOCAL = "unix:///var/run/docker.sock"


def recorded(name: str) -> tuple[dict, dict]:
    return (json.loads((FIXTURES / f"{name}.json").read_text()),
            json.loads((FIXTURES / f"{name}.version.json").read_text()))


def readable(_path: Path) -> bool:
    return True


def unreadable(_path: Path) -> bool:
    return False


@pytest.mark.parametrize("name, version", [("20.10-overlay2", "20.10"), ("28-overlay2", "28.5")])
def test_a_local_readable_overlay2_store_is_read_in_place(name, version):
    info, ver = recorded(name)
    found = probe(info, ver, LOCAL, readable=readable, buildkit_client=False)
    assert found.server_version.startswith(version)
    assert (found.storage_driver, found.image_store) == ("overlay2", "graphdriver")
    assert found.layer_source == "store" and found.store_readable
    assert found.data_root in found.layer_source_reason


def test_the_containerd_image_store_goes_through_the_archive():
    info, ver = recorded("28-containerd")
    found = probe(info, ver, "unix:///run/pytorch-cuda-engines/docker-28-containerd.sock", readable=readable,
                  buildkit_client=True)
    assert found.image_store == "containerd"
    assert found.layer_source == "archive" and not found.store_readable
    assert "containerd" in found.layer_source_reason and "docker save" in found.layer_source_reason
    assert found.buildkit  # Docker 28 with the buildx plugin


def test_a_remote_engine_goes_through_the_archive():
    info, ver = recorded("28-remote")
    found = probe(info, ver, "tcp://127.0.0.1:23750", readable=readable, buildkit_client=False)
    assert not found.local
    assert found.layer_source == "archive"
    assert "remote" in found.layer_source_reason


def test_a_user_who_cannot_read_the_data_root_goes_through_the_archive():
    """A CI runner in the docker group: the socket answers, /var/lib/docker does not open."""
    info, ver = recorded("20.10-overlay2")
    found = probe(info, ver, LOCAL, readable=unreadable, buildkit_client=False)
    assert found.layer_source == "archive"
    assert "/var/lib/docker is not readable" in found.layer_source_reason


def test_a_rootless_engine_goes_through_the_archive():
    """Rootless shows as `name=rootless` in SecurityOptions; its layer files belong to remapped users."""
    info, ver = recorded("28-rootless")
    found = probe(info, ver, "unix:///run/user/1000/docker.sock", readable=readable, buildkit_client=False)
    assert found.rootless and found.layer_source == "archive"
    assert "rootless" in found.layer_source_reason


def test_a_forced_store_that_cannot_work_says_why_and_archive_can_always_be_forced():
    info, ver = recorded("28-containerd")
    forced = probe(info, ver, LOCAL, "store", readable=readable, buildkit_client=False)
    assert forced.layer_source == "store" and not forced.store_readable
    assert forced.layer_source_reason.startswith("--layer-source store cannot work")
    info, ver = recorded("20.10-overlay2")
    assert probe(info, ver, LOCAL, "archive", readable=readable, buildkit_client=False).layer_source == "archive"
    with pytest.raises(ValueError):
        probe(info, ver, LOCAL, "somewhere")


def test_buildkit_is_there_when_a_client_can_drive_it_whatever_the_engine():
    info, ver = recorded("20.10-overlay2")  # Docker 20.10's CLI has BuildKit built in
    assert probe(info, ver, LOCAL, readable=readable, buildkit_client=True).buildkit
    assert not probe(info, ver, LOCAL, readable=readable, buildkit_client=False).buildkit
