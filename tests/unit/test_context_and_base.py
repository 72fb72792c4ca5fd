"""The build context is deterministic and carries the CA only as build-ca.pem; the base command is pinned."""
from __future__ import annotations

import tarfile

import pytest

from builder import base, context, manifest
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


def test_mmdebstrap_command_is_pinned_by_the_manifest(tmp_path):
    m = manifest.load()
    cmd = base.mmdebstrap_command(m, tmp_path / "keyring.gpg", tmp_path / "rootfs.tar")
    boot = m.os["bootstrap"]
    assert cmd[:4] == ["mmdebstrap", "--variant=minbase", "--mode=auto", "--format=tar"]
    assert f"--include={','.join(boot['packages'])}" in cmd
    assert f"--keyring={tmp_path / 'keyring.gpg'}" in cmd
    assert cmd[-3:] == [m.os["codename"], str(tmp_path / "rootfs.tar"), boot["mirror"]]
    assert any(f"--uid {m.user['uid']}" in part for part in cmd)


def test_base_tag_changes_with_any_bootstrap_input():
    m = manifest.load()
    changed = manifest.Manifest(path=m.path, data={**m.data, "os": {**m.os, "bootstrap": {
        **m.os["bootstrap"], "packages": m.os["bootstrap"]["packages"] + ["curl"]}}})
    assert m.base_ref != changed.base_ref
    assert m.base_ref.startswith("pytorch-cuda-base:ubuntu24.04-")


def test_a_snapshot_replaces_the_mirror_and_names_a_new_base():
    m = manifest.load()
    assert "snapshot" not in m.os["bootstrap"] and base.mirror(m) == m.os["bootstrap"]["mirror"]
    data = {**m.data, "os": {**m.os, "bootstrap": {**m.os["bootstrap"], "snapshot": "20261128T000000Z"}}}
    snap = manifest.Manifest(path=m.path, data=data)
    assert base.mirror(snap) == "http://snapshot.ubuntu.com/ubuntu/20261128T000000Z"
    assert base.mmdebstrap_command(snap, m.path, m.path)[-1] == base.mirror(snap)
    assert snap.base_ref != m.base_ref


def test_a_malformed_snapshot_is_refused_by_the_schema(tmp_path):
    text = manifest.MANIFEST.read_text().replace("    mirror: http://archive.ubuntu.com/ubuntu\n",
                                                 "    mirror: http://archive.ubuntu.com/ubuntu\n    snapshot: yesterday\n")
    path = tmp_path / "images.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"os\.bootstrap\.snapshot"):
        manifest.load(path)
