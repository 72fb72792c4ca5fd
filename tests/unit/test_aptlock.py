"""The record of Ubuntu package versions per stage: its file format, and what a change does."""
from __future__ import annotations

import pytest

from builder import aptlock, manifest
from builder.errors import BuildFailed


@pytest.fixture
def the_manifest(tmp_path):
    """The real manifest, moved so that its locks/ directory is a temporary one."""
    m = manifest.load()
    return manifest.Manifest(path=tmp_path / "images.yaml", data=m.data)


OS = {"apt": "2.7.14build2", "libc6": "2.39-0ubuntu8", "tini": "0.19.0-1"}
SSH = {**OS, "openssh-server": "1:9.6p1-3ubuntu13", "libc6": "2.39-0ubuntu8.1"}


def check(m, flavor, packages, monkeypatch, **options):
    monkeypatch.setattr(aptlock, "installed", lambda c, image: packages)
    aptlock.check(None, m.variant(flavor), "sha256:img", quiet=True, **options)


def test_first_builds_record_os_then_what_a_flavor_adds(the_manifest, monkeypatch):
    check(the_manifest, "runtime", OS, monkeypatch)
    check(the_manifest, "ssh", SSH, monkeypatch)
    path = aptlock.lock_path(the_manifest)
    assert path.name == "apt-ubuntu24.04.txt"
    assert aptlock.read(path) == {"os": OS, "ssh": {"openssh-server": "1:9.6p1-3ubuntu13", "libc6": "2.39-0ubuntu8.1"}}
    text = path.read_text()
    assert text.index("[os]") < text.index("[ssh]") and "archive.ubuntu.com" in text
    before = text
    check(the_manifest, "runtime", OS, monkeypatch)  # the same packages: nothing is rewritten
    assert path.read_text() == before


def test_a_moved_archive_stops_the_build_and_says_what_moved(the_manifest, monkeypatch):
    check(the_manifest, "runtime", OS, monkeypatch)
    moved = {**OS, "libc6": "2.39-0ubuntu9", "curl": "8.5.0-2ubuntu10"}
    with pytest.raises(BuildFailed) as failure:
        check(the_manifest, "runtime", moved, monkeypatch)
    message = str(failure.value)
    assert "libc6: 2.39-0ubuntu8 -> 2.39-0ubuntu9" in message and "curl: new (8.5.0-2ubuntu10)" in message
    assert "left untagged" in message and "--update-apt-lock" in message
    assert aptlock.read(aptlock.lock_path(the_manifest))["os"] == OS, "the record is not changed by a failure"
    check(the_manifest, "runtime", moved, monkeypatch, update=True)
    assert aptlock.read(aptlock.lock_path(the_manifest))["os"] == moved


def test_a_flavor_needs_the_os_record_first(the_manifest, monkeypatch):
    with pytest.raises(BuildFailed, match=r"no \[os\] section: build runtime first"):
        check(the_manifest, "ssh", SSH, monkeypatch)


def test_a_garbled_record_names_file_and_line(the_manifest):
    path = aptlock.lock_path(the_manifest)
    path.parent.mkdir(parents=True)
    path.write_text("[os]\napt=1\nnonsense\n")
    with pytest.raises(BuildFailed, match=r"apt-ubuntu24.04.txt:3: expected \[section\] or package=version"):
        aptlock.read(path)
