"""The build context is deterministic and carries the CA only as build-ca.pem; the base command is pinned."""
from __future__ import annotations

import hashlib
import subprocess
import tarfile

import pytest
from debian import deb822

from builder import aptlock, base, context, manifest
from builder.errors import UserError


def members(buf) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=buf) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_context_is_the_same_bytes_every_time(tmp_path):
    variant = manifest.load().variant("runtime")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert context.build_context(variant, ca).getvalue() == context.build_context(variant, ca).getvalue()


def test_context_holds_what_the_dockerfile_copies(tmp_path):
    variant = manifest.load().variant("runtime")
    names = members(context.build_context(variant, None))
    assert {"Dockerfile", "image.json", "runtime.lock", "build-ca.pem",
            "selftest/__init__.py", "rootfs/usr/local/bin/entrypoint"} <= set(names)
    assert names["build-ca.pem"].size == 0
    assert names["rootfs/usr/local/bin/selftest"].mode == 0o755
    assert all(m.mtime == variant.manifest.source_date_epoch for m in names.values())
    assert not any("__pycache__" in n for n in names)


def test_ca_bundle_from_the_environment(monkeypatch, tmp_path):
    ca = tmp_path / "proxy.pem"
    ca.write_text("x")
    for key in context.CA_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(context, "SYSTEM_BUNDLES", (tmp_path / "none.crt",))
    assert context.find_ca_bundle(None) is None
    monkeypatch.setattr(context, "SYSTEM_BUNDLES", (ca,))
    assert context.find_ca_bundle(None) == ca, "the host's system bundle is the fallback"
    monkeypatch.setattr(context, "SYSTEM_BUNDLES", (tmp_path / "none.crt",))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    assert context.find_ca_bundle(None) == ca
    with pytest.raises(UserError, match="--ca-bundle: CA bundle /nonexistent.pem does not exist"):
        context.find_ca_bundle("/nonexistent.pem")


def test_mmdebstrap_installs_every_locked_package_from_the_local_repository_only(tmp_path):
    m = manifest.load()
    pins = aptlock.pins(aptlock.read(aptlock.lock_path(m)), "os")
    cmd = base.mmdebstrap_command(m, pins, tmp_path / "repo", tmp_path / "rootfs.tar")
    assert cmd[:4] == ["mmdebstrap", "--variant=essential", "--mode=auto", "--format=tar"]
    assert f"--include={','.join(p.name for p in pins)}" in cmd
    assert cmd[-3:] == [m.os["codename"], str(tmp_path / "rootfs.tar"),
                        f"deb [trusted=yes] file://{tmp_path / 'repo'} {m.os['codename']} main"]
    assert not any(part.startswith("http") for part in cmd), "nothing is installed from the network"
    assert any(f"--uid {m.user['uid']}" in part for part in cmd)
    sources = base.image_sources(m)
    assert f"Suites: noble noble-updates noble-security" in sources and m.os["bootstrap"]["mirror"] in sources


def make_deb(tmp_path, name: str, version: str) -> bytes:
    root = tmp_path / f"{name}-src"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        f"Priority: optional\nDescription: test package\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(tmp_path / f"{name}.deb")],
                   check=True, capture_output=True)
    return (tmp_path / f"{name}.deb").read_bytes()


def test_the_local_repository_lists_exactly_the_pinned_debs_with_their_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pins = []
    for name, version in (("hello", "1.0-1ubuntu0.1"), ("world", "2:3.4")):
        data = make_deb(tmp_path, name, version)
        pin = aptlock.Pin(name, version, hashlib.sha256(data).hexdigest(), f"pool/main/{name}_{version}_amd64.deb")
        cached = aptlock.cached_deb(pin.sha256)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)  # in the cache: nothing is fetched
        pins.append(pin)
    repo = base.local_repository(pins, "http://127.0.0.1:9", tmp_path / "repo", "noble", quiet=True)
    index = (repo / "dists/noble/main/binary-amd64/Packages").read_text()
    stanzas = list(deb822.Packages.iter_paragraphs(index.splitlines(), use_apt_pkg=False))
    assert [(s["Package"], s["Version"], s["SHA256"]) for s in stanzas] == [(p.name, p.version, p.sha256) for p in pins]
    assert all((repo / s["Filename"]).is_file() for s in stanzas)
    release = (repo / "dists/noble/Release").read_text()
    assert hashlib.sha256(index.encode()).hexdigest() in release and "Suite: noble" in release
    assert oct((repo / stanzas[0]["Filename"]).stat().st_mode & 0o777) == "0o644", "apt reads it as _apt"


def test_base_tag_changes_with_any_bootstrap_input_and_with_the_locked_base(tmp_path):
    m = manifest.load()
    changed = manifest.Manifest(path=m.path, data={**m.data, "os": {**m.os, "bootstrap": {
        **m.os["bootstrap"], "packages": m.os["bootstrap"]["packages"] + ["curl"]}}})
    assert m.base_ref != changed.base_ref
    assert m.base_ref.startswith("pytorch-cuda-base:ubuntu24.04-")
    (tmp_path / "locks").mkdir()
    moved = manifest.Manifest(path=tmp_path / "images.yaml", data=m.data)
    lock_text = m.apt_lock_path.read_text()
    moved.apt_lock_path.write_text(lock_text)
    assert moved.base_ref == m.base_ref, "the same lock names the same base"
    moved.apt_lock_path.write_text(lock_text.replace("tini=", "tini=9", 1))
    assert moved.base_ref != m.base_ref, "a changed [os] pin names a new base"


def test_a_malformed_snapshot_is_refused_by_the_schema(tmp_path):
    text = manifest.MANIFEST.read_text().replace("    mirror: http://archive.ubuntu.com/ubuntu\n",
                                                 "    mirror: http://archive.ubuntu.com/ubuntu\n    snapshot: yesterday\n")
    path = tmp_path / "images.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"os\.bootstrap\.snapshot"):
        manifest.load(path)
