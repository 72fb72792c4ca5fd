"""`audit IMAGE`: what in a built image has a published fix it does not carry.

Two sources, each either checked or not — never "clean" for what could not be checked:

- ``ubuntu``: every installed Ubuntu package older than what the archive's -updates and
  -security pockets publish now. The pockets' indexes are read from the manifest's mirror and
  trusted only through the archive's signature (gpgv with the manifest's sha256-pinned keyring)
  and the signed index hashes, and kept in the user's cache by that hash, so an unchanged pocket
  costs only its InRelease; the CVE ids come from the newer package's own changelog (one .deb
  per source package, checked against the index's sha256 and kept in the user's cache, never
  in an image).
- ``python``: pip-audit's findings for the distributions installed in the image's Python. It
  needs pip-audit and a route to an advisory service (PyPI's per-version JSON API or OSV).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from debian import deb822, debfile
from debian.changelog import Changelog
from debian.debian_support import Version

from builder import aptlock, base, cache, facts
from builder.engine import Engine
from builder.errors import BuildFailed, UserError
from builder.manifest import Manifest

SOURCES = ("ubuntu", "python")
POCKETS = ("updates", "security")  # suffixes of the release codename
CVE = re.compile(r"CVE-\d{4}-\d{4,}")
CHANGELOG_TRIES = 4  # binaries of one source package tried for its changelog (many link their docs)
INDEX_KEEP_DAYS = 7  # a cached pocket index unused this long is removed (the pockets move daily)


class Unavailable(Exception):
    """A source could not be checked; the message says why."""


@dataclass(frozen=True)
class Published:
    """One binary package as a pocket's index lists it."""
    package: str
    version: str
    source: str
    pocket: str
    filename: str
    size: int
    sha256: str


@dataclass
class Finding:
    source: str  # "ubuntu" or "python"
    package: str
    installed: str
    fixed: str  # the version that carries the fix (ubuntu: what the pocket publishes)
    where: str  # ubuntu: the pocket; python: the advisory
    ids: list[str] = field(default_factory=list)  # CVE ids (ubuntu), advisory ids and aliases (python)
    note: str = ""


@dataclass
class Result:
    source: str
    checked: bool
    why: str  # what was checked, or why it could not be
    findings: list[Finding] = field(default_factory=list)


# --- the archive's indexes --------------------------------------------------------------------

def fetch(url: str, timeout: int = 60) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(f"cannot fetch {url} ({getattr(exc, 'reason', exc)})") from None


def signed_text(inrelease: bytes, keyring: Path) -> str:
    """The signed part of an InRelease file, if the keyring's key signed it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "Release"
        proc = subprocess.run(["gpgv", "--keyring", str(keyring), "--output", str(out), "-"],
                              input=inrelease, capture_output=True)
        if proc.returncode != 0:
            last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise Unavailable(f"the archive's InRelease does not verify with {keyring.name}: {last}")
        return out.read_text()


def index_hashes(release: str) -> dict[str, str]:
    """Path → sha256 from a Release file's SHA256 section."""
    paragraph = next(deb822.Release.iter_paragraphs(release.splitlines(), use_apt_pkg=False), {})
    return {entry["name"]: entry["sha256"] for entry in paragraph.get("SHA256", [])}


def parse_packages(text: str, pocket: str) -> list[Published]:
    published = []
    for p in deb822.Packages.iter_paragraphs(text.splitlines(), use_apt_pkg=False):
        source = p.get("Source", p["Package"]).split(" ")[0]  # "src (version)" when versions differ
        published.append(Published(p["Package"], p["Version"], source, pocket, p["Filename"],
                                   int(p.get("Size", 0)), p.get("SHA256", "")))
    return published


def newest(published: Iterable[Published]) -> dict[str, Published]:
    """Package → its newest version over every pocket (security first when both have it)."""
    best: dict[str, Published] = {}
    for p in published:
        old = best.get(p.package)
        if old is None or Version(p.version) > Version(old.version) or (
                p.version == old.version and p.pocket.endswith("security")):
            best[p.package] = p
    return best


def cached_index(url: str, sha256: str) -> bytes:
    """A Packages.xz the signed InRelease lists with this sha256: from the user's cache when it holds
    those bytes (checked on every read), else from the mirror, then kept. Keyed by the signed hash,
    an entry is never stale, only unused; a cache that cannot be written costs a download, no more."""
    folder = cache.path("apt-indexes")
    path = folder / f"{sha256}.xz"
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            os.utime(path)  # used: pruning goes by when an entry was last used
            return data
    except OSError:
        pass
    data = fetch(url)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Unavailable(f"{url} does not match its signed sha256")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{sha256}.{os.getpid()}.part"
        tmp.write_bytes(data)
        tmp.replace(path)
        prune_indexes(folder, keep=path)
    except OSError:
        pass
    return data


def prune_indexes(folder: Path, keep: Path, now: float | None = None) -> None:
    """Remove cached indexes not used for INDEX_KEEP_DAYS: each pocket publishes a new one every
    day or so, and only the newest is ever asked for."""
    cutoff = (time.time() if now is None else now) - INDEX_KEEP_DAYS * 86400
    for old in folder.glob("*.xz"):
        try:
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass


def pocket_indexes(mirror: str, codename: str, components: list[str], keyring: Path) -> list[Published]:
    """Every binary package of amd64 in the -updates and -security pockets, signature checked."""
    published = []
    for suffix in POCKETS:
        suite = f"{codename}-{suffix}"
        release = signed_text(fetch(f"{mirror}/dists/{suite}/InRelease"), keyring)
        hashes = index_hashes(release)
        for component in components:
            path = f"{component}/binary-amd64/Packages.xz"
            if path not in hashes:
                raise Unavailable(f"{mirror}/dists/{suite}/InRelease lists no {path}")
            data = cached_index(f"{mirror}/dists/{suite}/{path}", hashes[path])
            published += parse_packages(lzma.decompress(data).decode(), suite)
    return published


# --- ubuntu -----------------------------------------------------------------------------------

def outdated(installed: dict[str, str], available: dict[str, Published]) -> list[Finding]:
    """Installed packages (name → version, as dpkg names them) behind the pockets."""
    found = []
    for name, version in sorted(installed.items()):
        package = name.split(":")[0]  # dpkg adds ":amd64" for Multi-Arch: same packages
        newer = available.get(package)
        if newer is not None and Version(newer.version) > Version(version):
            found.append(Finding("ubuntu", package, version, newer.version, newer.pocket))
    return found


def changelog_ids(changelog: Changelog, installed: str, fixed: str) -> list[str]:
    """CVE ids the changelog names in its entries after ``installed`` up to ``fixed``."""
    ids: set[str] = set()
    for block in changelog:
        version = Version(str(block.version))
        if Version(installed) < version <= Version(fixed):
            ids.update(CVE.findall("\n".join(block.changes())))
    return sorted(ids, key=lambda i: tuple(int(n) for n in i.split("-")[1:]))


def deb(mirror: str, p: Published) -> Path:
    """The .deb, from the user's cache or the mirror, checked against the index's sha256."""
    try:
        return aptlock.fetch_deb(aptlock.Pin(p.package, p.version, p.sha256, p.filename), mirror)
    except (UserError, BuildFailed) as exc:
        raise Unavailable(str(exc)) from None


def read_changelog(path: Path, package: str, version: str) -> tuple[Changelog | None, str]:
    """The Debian changelog a .deb carries; without one, the package it links it from.

    Many binaries link their docs to a sibling's (``usr/share/doc/openssh-server ->
    openssh-client``, ``changelog.Debian.gz -> ../libmount1/changelog.Debian.gz``); a native
    package (no Debian revision, like apt) keeps its Debian changelog as ``changelog.gz``.
    """
    names = [f"usr/share/doc/{package}/changelog.Debian.gz"]
    if "-" not in version.split(":")[-1]:
        names.append(f"usr/share/doc/{package}/changelog.gz")
    with debfile.DebFile(str(path)) as deb_file:
        members = {m.name.lstrip("./"): m for m in deb_file.data.tgz().getmembers()}
        for name in names:
            member = members.get(name)
            if member is not None and member.isfile():
                with gzip.GzipFile(fileobj=deb_file.data.tgz().extractfile(member)) as text:
                    return Changelog(text.read(), strict=False), ""
        for name in (names[0], f"usr/share/doc/{package}"):
            member = members.get(name)
            if member is not None and member.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                if target.startswith("usr/share/doc/"):
                    return None, target.split("/")[3]
    return None, ""


def add_cve_ids(findings: list[Finding], available: dict[str, Published], mirror: str) -> None:
    """Name the CVE ids per finding, reading one changelog per source package and version."""
    logging.getLogger("debian.changelog").setLevel(logging.ERROR)  # old entries in odd formats
    built_from: dict[tuple[str, str], dict[str, Published]] = {}  # (source, version) → its binaries
    for p in available.values():
        built_from.setdefault((p.source, p.version), {})[p.package] = p
    by_source: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        p = available[f.package]
        by_source.setdefault((p.source, p.version), []).append(f)
    for (source, version), group in by_source.items():
        siblings = built_from[(source, version)]
        # the binary named after its source usually holds the docs, then the smallest first;
        # a binary whose doc directory links to another's moves that one to the front
        queue = sorted(siblings.values(), key=lambda p: (p.package != source, p.size))
        changelog, tried, note = None, set(), ""
        while queue and changelog is None and len(tried) < CHANGELOG_TRIES:
            p = queue.pop(0)
            if p.package in tried:
                continue
            tried.add(p.package)
            try:
                changelog, link = read_changelog(deb(mirror, p), p.package, p.version)
            except Unavailable as exc:  # the finding stands; only its CVE ids are missing
                note = f"changelog not read: {exc}"
                break
            if link in siblings and link not in tried:
                queue.insert(0, siblings[link])
        for f in group:
            if changelog is None:
                f.note = note or f"no changelog found in {len(tried)} .deb(s) of source {source}"
            else:
                f.ids = changelog_ids(changelog, f.installed, f.fixed)


def audit_ubuntu(c: Engine, image: str, manifest: Manifest, mirror: str | None = None) -> Result:
    boot = manifest.os.get("bootstrap") or {}
    if not boot:
        return Result("ubuntu", False, "the manifest names no bootstrap archive (os.bootstrap) to compare with")
    mirror = (mirror or boot["mirror"]).rstrip("/")
    codename = manifest.os["codename"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            keyring = base.fetch_keyring(manifest, Path(tmp))
            available = newest(pocket_indexes(mirror, codename, boot["components"], keyring))
        findings = outdated(aptlock.installed(c, image), available)
        add_cve_ids(findings, available, mirror)
    except Unavailable as exc:
        return Result("ubuntu", False, str(exc))
    pockets = ", ".join(f"{codename}-{s}" for s in POCKETS)
    return Result("ubuntu", True, f"dpkg's packages against {pockets} at {mirror}", findings)


# --- python -----------------------------------------------------------------------------------

def parse_pip_audit(output: str) -> list[Finding]:
    """pip-audit's `--format json` (the current object form and the older bare list)."""
    data = json.loads(output)
    dependencies = data["dependencies"] if isinstance(data, dict) else data
    found = []
    for dep in dependencies:
        for vuln in dep.get("vulns", []):
            found.append(Finding("python", dep["name"], dep["version"], ", ".join(vuln.get("fix_versions", [])),
                                 vuln["id"], [vuln["id"], *vuln.get("aliases", [])]))
    return found


def audit_python(c: Engine, image: str) -> Result:
    pip_audit = shutil.which("pip-audit")
    if pip_audit is None:
        return Result("python", False, "pip-audit is not installed (pip install pip-audit); it also needs a route "
                                       "to an advisory service (PyPI's per-version JSON API or OSV)")
    packages = facts.collect(c, image)["packages"]  # name → version, as the image's Python reports them
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write("".join(f"{name}=={version}\n" for name, version in sorted(packages.items())))
        requirements.flush()
        proc = subprocess.run([pip_audit, "--requirement", requirements.name, "--no-deps", "--disable-pip",
                               "--format", "json", "--progress-spinner", "off"], capture_output=True, text=True)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Result("python", False, f"pip-audit could not check ({last})")
    return Result("python", True, "the image's Python distributions with pip-audit", parse_pip_audit(proc.stdout))


# --- the command ------------------------------------------------------------------------------

def audit(c: Engine, image: str, manifest: Manifest, sources: Iterable[str], mirror: str | None = None) -> list[Result]:
    results = []
    for source in sources:
        results.append(audit_ubuntu(c, image, manifest, mirror) if source == "ubuntu" else audit_python(c, image))
    return results


def exit_code(results: list[Result]) -> int:
    """2 when a requested source was not checked, else 1 when anything was found, else 0."""
    if any(not r.checked for r in results):
        return 2
    return 1 if any(r.findings for r in results) else 0


def report(image: str, results: list[Result]) -> str:
    lines = [f"audit of {image}"]
    for r in results:
        state = (f"{len(r.findings)} finding(s)" if r.findings else "clean") if r.checked else "NOT CHECKED"
        lines += ["", f"{r.source}: {state}: {r.why}"]
        if r.findings:
            lines.append(f"  {'PACKAGE':<32} {'INSTALLED':<28} {'FIXED IN':<28} {'WHERE':<18} IDS")
            for f in r.findings:
                ids = ", ".join(f.ids) or f.note or "-"
                lines.append(f"  {f.package:<32} {f.installed:<28} {f.fixed:<28} {f.where:<18} {ids}")
    return "\n".join(lines) + "\n"


def summary(results: list[Result], at: datetime) -> dict[str, Any]:
    """What a build record keeps of an audit (its key `audit`, manifests/record.schema.json): when it
    ran, and per source whether it was checked, why, and what it found. sbom is filled in by the
    caller once the audited SBOM is written."""
    def finding(f: Finding) -> dict[str, Any]:
        entry = {"package": f.package, "installed": f.installed, "fixed": f.fixed, "where": f.where, "ids": list(f.ids)}
        return {**entry, "note": f.note} if f.note else entry

    return {"at": at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sources": {r.source: {"checked": r.checked, "why": r.why, "count": len(r.findings),
                                   "findings": [finding(f) for f in r.findings]} for r in results},
            "sbom": None}


def as_json(image: str, results: list[Result]) -> str:
    return json.dumps({"image": image, "exit_code": exit_code(results),
                       "sources": [asdict(r) for r in results]}, indent=2) + "\n"
