"""The pockets' Packages.xz are kept in the user's cache by the sha256 the signed InRelease lists:
an unchanged pocket costs only its InRelease, a changed or damaged entry is fetched again, and a
mirror's bytes that do not match the signed hash are never used nor kept. The signature itself is
tested on recorded archive data in test_audit_archive.py; here it is stood in for."""
from __future__ import annotations

import hashlib
import lzma
import os
import time
from pathlib import Path

import pytest

from builder import audit, cache

FRAGMENT = (Path(__file__).parent.parent / "fixtures" / "ubuntu" / "noble-security-main-Packages.fragment").read_text()
MIRROR = "http://mirror.invalid/ubuntu"


def index(suite: str, day: int = 1) -> bytes:
    """A Packages.xz of its own per suite and day: the recorded fragment and one package naming them."""
    marker = f"Package: marker-{suite}-{day}\nVersion: 1\nFilename: pool/m/marker.deb\nSize: 1\n"
    return lzma.compress(f"{FRAGMENT.rstrip()}\n\n{marker}".encode())


class Archive:
    """A mirror in memory: per suite, its Packages.xz; every fetch is written down."""

    def __init__(self) -> None:
        self.indexes = {suite: index(suite) for suite in ("noble-updates", "noble-security")}
        self.served: dict[str, bytes] = {}  # url → other bytes than the index (a broken mirror)
        self.fetched: list[str] = []

    def release(self, suite: str) -> str:
        data = self.indexes[suite]
        return (f"Suite: {suite}\nSHA256:\n {hashlib.sha256(data).hexdigest()} {len(data)} "
                f"main/binary-amd64/Packages.xz\n")

    def fetch(self, url: str, timeout: int = 60) -> bytes:
        self.fetched.append(url.removeprefix(MIRROR + "/dists/"))
        suite, _, path = url.removeprefix(MIRROR + "/dists/").partition("/")
        if path == "InRelease":
            return self.release(suite).encode()  # "signed": signed_text is stood in for below
        return self.served.get(url, self.indexes[suite])


@pytest.fixture
def archive(monkeypatch, tmp_path) -> Archive:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mirror = Archive()
    monkeypatch.setattr(audit, "fetch", mirror.fetch)
    monkeypatch.setattr(audit, "signed_text", lambda inrelease, keyring: inrelease.decode())
    return mirror


def indexes() -> list[audit.Published]:
    return audit.pocket_indexes(MIRROR, "noble", ["main"], Path("unused.gpg"))


def cached(archive: Archive, suite: str) -> Path:
    return cache.path("apt-indexes", f"{hashlib.sha256(archive.indexes[suite]).hexdigest()}.xz")


def test_an_unchanged_pocket_costs_only_its_inrelease(archive):
    first = indexes()
    assert archive.fetched == ["noble-updates/InRelease", "noble-updates/main/binary-amd64/Packages.xz",
                               "noble-security/InRelease", "noble-security/main/binary-amd64/Packages.xz"]
    assert cached(archive, "noble-security").read_bytes() == archive.indexes["noble-security"]
    archive.fetched.clear()
    assert indexes() == first
    assert archive.fetched == ["noble-updates/InRelease", "noble-security/InRelease"]
    assert any(p.package == "openssh-server" and p.pocket == "noble-security" for p in first)


def test_a_new_index_is_fetched_and_a_damaged_entry_replaced(archive):
    indexes()
    archive.indexes["noble-security"] = index("noble-security", day=2)  # the pocket moved
    damaged = cached(archive, "noble-updates")
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    archive.fetched.clear()
    indexes()
    assert archive.fetched == ["noble-updates/InRelease", "noble-updates/main/binary-amd64/Packages.xz",
                               "noble-security/InRelease", "noble-security/main/binary-amd64/Packages.xz"]
    assert damaged.read_bytes() == archive.indexes["noble-updates"]
    assert cached(archive, "noble-security").is_file()


def test_bytes_that_do_not_match_the_signed_hash_are_neither_used_nor_kept(archive):
    archive.served[f"{MIRROR}/dists/noble-updates/main/binary-amd64/Packages.xz"] = lzma.compress(b"Package: evil\n")
    with pytest.raises(audit.Unavailable, match="does not match its signed sha256"):
        indexes()
    assert not cached(archive, "noble-updates").exists()


def test_a_cache_that_cannot_be_written_costs_a_download_only(archive, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert indexes() and len(archive.fetched) == 4


def test_entries_unused_for_a_week_are_pruned(archive):
    indexes()
    folder = cache.path("apt-indexes")
    old = folder / f"{'0' * 64}.xz"
    old.write_bytes(b"yesterday's index")
    stale = time.time() - (audit.INDEX_KEEP_DAYS + 1) * 86400
    os.utime(old, (stale, stale))
    os.utime(cached(archive, "noble-updates"), (stale, stale))  # old, but still what the pocket lists
    indexes()  # reads noble-updates' entry again: that counts as a use
    archive.indexes["noble-security"] = index("noble-security", day=3)
    indexes()  # a download: prunes
    assert not old.exists()
    assert cached(archive, "noble-updates").exists() and cached(archive, "noble-security").exists()
