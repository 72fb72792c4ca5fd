"""`lock --apt` reads apt's own answers: dpkg's status, apt's simulation, the indexes apt fetched."""
from __future__ import annotations

import lzma

from builder import aptresolve, manifest

SIMULATION = """NOTE: This is only a simulation!
Reading package lists...
Building dependency tree...
The following NEW packages will be installed:
  libwrap0 openssh-server
Inst libwrap0 (7.6.q-33 Ubuntu:24.04/noble [amd64])
Inst openssh-server (1:9.6p1-3ubuntu13.20 Ubuntu:24.04/noble-updates, Ubuntu:24.04/noble-security [amd64])
Inst libc6 [2.39-0ubuntu8] (2.39-0ubuntu8.12 Ubuntu:24.04/noble-updates [amd64])
Conf libwrap0 (7.6.q-33 Ubuntu:24.04/noble [amd64])
"""

STATUS = """Package: apt
Status: install ok installed
Version: 2.8.4ubuntu0.1

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: tini
Status: install ok installed
Version: 0.19.0-1
"""


def test_a_simulated_install_gives_each_package_and_the_version_apt_chose(tmp_path):
    (tmp_path / "ssh.sim").write_text(SIMULATION)
    assert aptresolve.simulated(tmp_path / "ssh.sim") == {
        "libwrap0": "7.6.q-33", "openssh-server": "1:9.6p1-3ubuntu13.20", "libc6": "2.39-0ubuntu8.12"}


def test_only_installed_packages_of_dpkgs_status_are_the_base(tmp_path):
    (tmp_path / "status").write_text(STATUS)
    assert aptresolve.installed_status(tmp_path / "status") == {"apt": "2.8.4ubuntu0.1", "tini": "0.19.0-1"}


def test_hashes_and_pool_paths_come_from_every_index_apt_read(tmp_path):
    fixture = (manifest.ROOT / "tests/fixtures/ubuntu/noble-security-main-Packages.fragment").read_text()
    (tmp_path / "archive.ubuntu.com_ubuntu_dists_noble-security_main_binary-amd64_Packages").write_text(fixture)
    (tmp_path / "x_dists_noble_universe_binary-amd64_Packages.xz").write_bytes(lzma.compress(
        b"Package: tini\nVersion: 0.19.0-1\nFilename: pool/universe/t/tini/tini_0.19.0-1_amd64.deb\nSHA256: "
        + b"c" * 64 + b"\n"))
    (tmp_path / "lock").write_text("not an index")
    found = aptresolve.published(tmp_path)
    assert found[("tini", "0.19.0-1")] == ("c" * 64, "pool/universe/t/tini/tini_0.19.0-1_amd64.deb")
    assert len(found) > 1 and all(sha and path.startswith("pool/") for sha, path in found.values())


def test_the_pockets_are_the_release_and_both_update_pockets():
    m = manifest.load()
    assert aptresolve.suites(m) == ["noble", "noble-updates", "noble-security"]
    assert aptresolve.sources(m, "http://mirror")[1] == "deb http://mirror noble-updates main universe"
    assert aptresolve.flavor_packages(m)["ssh"] == ["openssh-server"]
    assert {"git", "tmux", "rsync"} <= set(aptresolve.flavor_packages(m)["workstation"])


def test_lock_apt_writes_the_new_lock_and_says_what_changed_per_section(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from builder import aptlock
    from builder.aptlock import Lock, Pin
    m = manifest.Manifest(path=tmp_path / "images.yaml", data=manifest.load().data)
    sha = "ab" * 32
    old = Lock(aptlock.lock_path(m), {"os": {"libc6": Pin("libc6", "2.39-0ubuntu8.11", sha, "pool/a.deb"),
                                             "gone": Pin("gone", "1", sha, "pool/g.deb")}})
    aptlock.write(old, m)
    new = Lock(aptlock.lock_path(m), {"os": {"libc6": Pin("libc6", "2.39-0ubuntu8.12", sha, "pool/b.deb")},
                                      "ssh": {"openssh-server": Pin("openssh-server", "1:9.6p1-3ubuntu13.20", sha, "pool/o.deb")}},
               datetime(2026, 12, 4, tzinfo=timezone.utc))
    monkeypatch.setattr(aptresolve, "resolve", lambda manifest, quiet=False: new)
    assert aptresolve.lock_apt(m) == ["[os] libc6: 2.39-0ubuntu8.11 -> 2.39-0ubuntu8.12", "[os] gone: gone (was 1)",
                                      "[ssh] openssh-server: new (1:9.6p1-3ubuntu13.20)"]
    written = aptlock.read(aptlock.lock_path(m))
    assert written.sections == new.sections and written.resolved == new.resolved
