"""The audit's parts on recorded archive data (tests/fixtures/ubuntu/) and real tools (gpgv,
dpkg-deb); the whole command against the live archive is tests/integration/test_audit.py."""
from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest
from debian.changelog import Changelog

from builder import audit

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ubuntu"
INRELEASE = (FIXTURES / "noble-security-InRelease").read_bytes()
KEYRING = FIXTURES / "ubuntu-archive-keyring.gpg"


def published(package: str, version: str, pocket: str = "noble-security", source: str = "") -> audit.Published:
    return audit.Published(package, version, source or package, pocket, f"pool/{package}.deb", 1, "0" * 64)


def test_a_signed_release_gives_its_index_hashes() -> None:
    hashes = audit.index_hashes(audit.signed_text(INRELEASE, KEYRING))
    assert hashes["main/binary-amd64/Packages.xz"] == \
        "3ba8cac611d32f26fcc3eb14a9fe6b223b0eb56c8e235fc5c8b9c063d20efcce"
    assert "universe/binary-amd64/Packages.xz" in hashes


def test_a_release_altered_by_one_byte_is_not_trusted() -> None:
    altered = INRELEASE.replace(b"3ba8cac611d32f26", b"3ba8cac611d32f27", 1)
    assert altered != INRELEASE
    with pytest.raises(audit.Unavailable, match="does not verify"):
        audit.signed_text(altered, KEYRING)


def test_an_index_names_each_package_its_source_and_hash() -> None:
    found = {p.package: p for p in audit.parse_packages(
        (FIXTURES / "noble-security-main-Packages.fragment").read_text(), "noble-security")}
    server = found["openssh-server"]
    assert (server.version, server.source, server.pocket) == ("1:9.6p1-3ubuntu13.20", "openssh", "noble-security")
    assert server.filename.endswith("openssh-server_9.6p1-3ubuntu13.20_amd64.deb") and len(server.sha256) == 64
    assert found["aspnetcore-runtime-10.0"].source == "dotnet10"  # "dotnet10 (10.0.115-…)" in the index


def test_the_newest_version_wins_and_security_names_a_tie() -> None:
    best = audit.newest([published("a", "1.0-1ubuntu0.1", "noble-updates"), published("a", "1.0-1ubuntu0.2"),
                         published("b", "2.0-1", "noble-updates"), published("b", "2.0-1", "noble-security"),
                         published("c", "1:1.0-1", "noble-updates"), published("c", "9.0-1", "noble-security")])
    assert best["a"].version == "1.0-1ubuntu0.2"
    assert best["b"].pocket == "noble-security"
    assert best["c"].version == "1:1.0-1"  # the epoch outranks


def test_only_packages_behind_the_pockets_are_findings() -> None:
    available = {p.package: p for p in [published("openssh-server", "1:9.6p1-3ubuntu13.20"),
                                         published("libc6", "2.39-0ubuntu8.12"), published("tini", "0.19.0-1")]}
    installed = {"openssh-server": "1:9.6p1-3ubuntu13", "libc6:amd64": "2.39-0ubuntu8.12", "tini": "0.19.0-1ubuntu1",
                 "only-here": "1.0"}
    found = audit.outdated(installed, available)
    assert [(f.package, f.installed, f.fixed, f.where) for f in found] == \
        [("openssh-server", "1:9.6p1-3ubuntu13", "1:9.6p1-3ubuntu13.20", "noble-security")]


CHANGELOG = """\
openssh (1:9.6p1-3ubuntu13.4) noble-security; urgency=medium

  * SECURITY UPDATE: later fix
    - CVE-2025-26465

 -- A <a@example.com>  Mon, 17 Feb 2025 10:00:00 +0000

openssh (1:9.6p1-3ubuntu13.3) noble-security; urgency=medium

  * SECURITY UPDATE: remote code execution race in signal handler
    - CVE-2024-6387

 -- A <a@example.com>  Mon, 01 Jul 2024 10:00:00 +0000

openssh (1:9.6p1-3ubuntu13) noble; urgency=medium

  * Fixed before: CVE-2023-51385

 -- A <a@example.com>  Mon, 01 Apr 2024 10:00:00 +0000
"""


def test_the_cve_ids_are_those_after_the_installed_version_up_to_the_fix() -> None:
    changelog = Changelog(CHANGELOG)
    assert audit.changelog_ids(changelog, "1:9.6p1-3ubuntu13", "1:9.6p1-3ubuntu13.4") == ["CVE-2024-6387", "CVE-2025-26465"]
    assert audit.changelog_ids(changelog, "1:9.6p1-3ubuntu13", "1:9.6p1-3ubuntu13.3") == ["CVE-2024-6387"]
    assert audit.changelog_ids(changelog, "1:9.6p1-3ubuntu13.4", "1:9.6p1-3ubuntu13.4") == []


def make_deb(tmp: Path, package: str, version: str, files: dict[str, bytes], links: dict[str, str]) -> Path:
    """A real .deb (dpkg-deb --build) holding ``files`` and symlinks ``links``."""
    root = tmp / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
                                             f"Maintainer: t <t@example.com>\nDescription: test\n")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    out = tmp / f"{package}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)], check=True,
                   capture_output=True)
    return out


def test_a_changelog_is_read_from_the_deb_or_followed_to_the_sibling_it_links_to(tmp_path) -> None:
    with_log = make_deb(tmp_path, "openssh-client", "1:9.6p1-3ubuntu13.4",
                        {"usr/share/doc/openssh-client/changelog.Debian.gz": gzip.compress(CHANGELOG.encode())}, {})
    changelog, link = audit.read_changelog(with_log, "openssh-client", "1:9.6p1-3ubuntu13.4")
    assert link == "" and str(changelog.version) == "1:9.6p1-3ubuntu13.4"

    dir_link = make_deb(tmp_path, "openssh-server", "1:9.6p1-3ubuntu13.4", {}, {"usr/share/doc/openssh-server": "openssh-client"})
    assert audit.read_changelog(dir_link, "openssh-server", "1:9.6p1-3ubuntu13.4") == (None, "openssh-client")

    file_link = make_deb(tmp_path, "util-linux", "2.39.3-9ubuntu6.4", {"usr/share/doc/util-linux/README": b"x"},
                         {"usr/share/doc/util-linux/changelog.Debian.gz": "../libmount1/changelog.Debian.gz"})
    assert audit.read_changelog(file_link, "util-linux", "2.39.3-9ubuntu6.4") == (None, "libmount1")

    native = make_deb(tmp_path, "apt", "2.8.4", {"usr/share/doc/apt/changelog.gz": gzip.compress(CHANGELOG.encode())}, {})
    assert audit.read_changelog(native, "apt", "2.8.4")[0] is not None  # a native package's changelog.gz
    upstream = make_deb(tmp_path, "gcc-13", "13.3.0-6", {"usr/share/doc/gcc-13/changelog.gz": b"not debian"}, {})
    assert audit.read_changelog(upstream, "gcc-13", "13.3.0-6") == (None, "")  # an upstream changelog is not read


PIP_AUDIT = {  # pip-audit --format json, as its documentation gives it (no advisory service answers here)
    "dependencies": [
        {"name": "jinja2", "version": "3.1.2", "vulns": [
            {"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"], "aliases": ["CVE-2024-22195"],
             "description": "xmlattr filter allows keys with spaces"}]},
        {"name": "numpy", "version": "2.5.5", "vulns": []},
        {"name": "torch", "skip_reason": "Dependency not found on PyPI and could not be audited: torch (2.8.0)"},
    ],
    "fixes": [],
}


def test_pip_audit_findings_are_read_in_both_of_its_formats() -> None:
    for output in (PIP_AUDIT, PIP_AUDIT["dependencies"]):  # the object form, and the older bare list
        (finding,) = audit.parse_pip_audit(json.dumps(output))
        assert (finding.package, finding.installed, finding.fixed, finding.where) == \
            ("jinja2", "3.1.2", "3.1.3", "GHSA-h5c8-rqwp-cp95")
        assert finding.ids == ["GHSA-h5c8-rqwp-cp95", "CVE-2024-22195"]


def test_a_source_not_checked_is_never_reported_clean() -> None:
    clean = audit.Result("ubuntu", True, "checked")
    found = audit.Result("ubuntu", True, "checked", [audit.Finding("ubuntu", "a", "1", "2", "noble-security")])
    unchecked = audit.Result("python", False, "pip-audit is not installed")
    assert audit.exit_code([clean]) == 0
    assert audit.exit_code([found]) == 1
    assert audit.exit_code([clean, unchecked]) == 2 and audit.exit_code([found, unchecked]) == 2
    text = audit.report("img", [clean, unchecked])
    assert "ubuntu: clean" in text and "python: NOT CHECKED: pip-audit is not installed" in text
    assert json.loads(audit.as_json("img", [found]))["sources"][0]["findings"][0]["fixed"] == "2"


def test_an_archive_that_does_not_answer_is_unavailable() -> None:
    with pytest.raises(audit.Unavailable, match="cannot fetch http://127.0.0.1:9/ubuntu/dists/noble-updates/InRelease"):
        audit.pocket_indexes("http://127.0.0.1:9/ubuntu", "noble", ["main"], KEYRING)


def test_a_changelog_that_cannot_be_fetched_leaves_the_finding_without_ids(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    available = {"openssh-server": published("openssh-server", "1:9.6p1-3ubuntu13.20", source="openssh")}
    found = audit.outdated({"openssh-server": "1:9.6p1-3ubuntu13"}, available)
    audit.add_cve_ids(found, available, "http://127.0.0.1:9/ubuntu")
    (finding,) = found
    assert finding.ids == [] and finding.note.startswith(
        "changelog not read: cannot fetch openssh-server=1:9.6p1-3ubuntu13.20 from http://127.0.0.1:9/ubuntu/")
