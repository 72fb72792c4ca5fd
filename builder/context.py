"""The build context: rendered files + locks + selftest package + rootfs + build scripts + build CA, as a tar.

Assembled at build time rather than committed, so images/ holds only what a reviewer should
read (the Dockerfile), and the CA bundle never touches the repository.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Callable

from builder import lock
from builder.errors import UserError
from builder.manifest import ROOT, Variant
from builder import render
from builder.render import TEMPLATES, images_dir

SELFTEST = ROOT / "selftest"
ROOTFS = TEMPLATES / "rootfs"
BUILD_SCRIPTS = TEMPLATES / "build"  # used in builder stages only, never in a final image
CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")
SYSTEM_BUNDLES = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pki/tls/certs/ca-bundle.crt"))


def find_ca_bundle(explicit: str | None) -> Path | None:
    """--ca-bundle, else the first of SSL_CERT_FILE / REQUESTS_CA_BUNDLE / PIP_CERT that is set,
    else the host's system bundle: a build trusts what the host trusts (a TLS-intercepting
    proxy's CA included), and only in the build stage."""
    if explicit:
        path, source = Path(explicit), "--ca-bundle"
    else:
        found = [(Path(os.environ[k]), k) for k in CA_ENV if os.environ.get(k)]
        found += [(p, "the system CA bundle") for p in SYSTEM_BUNDLES if p.is_file()]
        if not found:
            return None
        path, source = found[0]
    if not path.is_file():
        raise UserError(f"{source}: CA bundle {path} does not exist; give an existing PEM file or unset it")
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    tar.addfile(info, io.BytesIO(data))


def _tree(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def build_context(variant: Variant, ca_bundle: Path | None) -> io.BytesIO:
    """A deterministic tar (sorted, fixed times and owners) so the layer cache sees only real changes."""
    rendered = images_dir(variant.manifest) / variant.name
    dockerfile = rendered / "Dockerfile"
    if not dockerfile.exists():
        raise UserError(f"{dockerfile} is missing: run `python build.py render {variant.name}`")
    locks = {layer: variant.lock_path(layer) for layer in variant.python_layers()}
    for path in locks.values():
        if not path.exists():
            raise UserError(f"{path} is missing: run `python build.py lock {variant.name}`")
    epoch = variant.manifest.source_date_epoch
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("Dockerfile", render.BUILDKIT_DOCKERFILE, "image.json"):
            _add(tar, name, (rendered / name).read_bytes(), 0o644, epoch)
        for layer, path in locks.items():
            _add(tar, f"{layer}.lock", path.read_bytes(), 0o644, epoch)
        for group, text in lock.split(locks["runtime"].read_text(), variant.manifest.venv_layers).items():
            _add(tar, f"venv-{group}.lock", text.encode(), 0o644, epoch)
        _add(tar, "constraints.txt", lock.constraints(locks["runtime"]).encode(), 0o644, epoch)
        _add(tar, "build-ca.pem", ca_bundle.read_bytes() if ca_bundle else b"", 0o600, epoch)
        for top, prefix in ((SELFTEST, "selftest"), (ROOTFS, "rootfs"), (BUILD_SCRIPTS, "build")):
            for path in _tree(top):
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                _add(tar, f"{prefix}/{path.relative_to(top).as_posix()}", path.read_bytes(), mode, epoch)
    buf.seek(0)
    return buf


def edited(buf: io.BytesIO, edits: dict[str, Callable[[str], str]]) -> io.BytesIO:
    """A build context with some files changed as a user's edit would change them (name → edit);
    the benchmarks and tests measure what such an edit rebuilds."""
    src = tarfile.open(fileobj=buf)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name in edits:
                data = edits[member.name](data.decode()).encode()
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    out.seek(0)
    return out
