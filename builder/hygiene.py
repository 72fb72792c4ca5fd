"""Scan every layer of an image for things that must not ship: the build CA, caches, keys.

A file deleted in a later layer still ships in the earlier one, so the scan reads the layers
(from the engine's store or its image archive, never the whole image in memory), not a
container's view.
A layer's scan depends only on its bytes and the rules below, so it is kept by diff ID: the
build scans each layer as it normalizes it, and `verify` then saves no image whose layers were
all scanned under the same rules.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, BinaryIO


from builder import cache
from builder.engine import Engine
from builder.normalize import BUILD_VARYING, Archive
from builder.normalize.tarformat import Window

# Path patterns (fnmatch, no leading slash) whose presence in any layer is a finding.
FORBIDDEN = {
    "build CA bundle file": ["*build-ca.pem", "tmp/build/*"],
    "pip cache": ["root/.cache/pip/*", "home/*/.cache/pip/*"],
    "apt package lists": ["var/lib/apt/lists/*_Packages*", "var/lib/apt/lists/*_InRelease",
                          "var/lib/apt/lists/*_Release*", "var/lib/apt/lists/*Translation*"],
    "SSH host key": ["etc/ssh/ssh_host_*_key", "etc/ssh/ssh_host_*_key.pub"],
    # the pinned .debs a build or `audit` downloads, and the builder's own cache, stay on the host
    "downloaded .deb": ["*.deb"],
    "builder cache": ["root/.cache/pytorch-cuda/*", "home/*/.cache/pytorch-cuda/*"],
    # written by every build with the time in it; the normalizer drops them
    "build-varying file": list(BUILD_VARYING),
}
EMPTIED = ["etc/machine-id", "var/lib/dbus/machine-id"]  # must be empty: set per machine at first boot
PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----", re.S)
# A real key: the armour line followed by base64 (libraries that parse keys carry the bare line).
PRIVATE_KEY = re.compile(rb"-----BEGIN (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40}")
SMALL = 2 * 1024 * 1024  # content is only inspected in files this small: certs and keys are tiny
SYSTEM_STORE = "etc/ssl/certs/ca-certificates.crt"
# Public bundles that arrive from hash-locked wheels; certs found in them are not build-only.
PUBLIC_BUNDLES = ["*/certifi/cacert.pem"]
# Test fixtures inside hash-locked wheels (tornado ships test.key): public by construction.
WHEEL_TEST_DATA = ["opt/venv/lib/python*/site-packages/*/test/*", "opt/venv/lib/python*/site-packages/*/tests/*"]
HISTORY_MARKERS = ("build-ca", "PIP_CERT", "/tmp/build", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def cert_ids(pem: bytes) -> set[str]:
    """Fingerprints of the certificates in a PEM blob (whitespace-insensitive)."""
    ids = set()
    for body in PEM_CERT.findall(pem):
        try:
            der = base64.b64decode(b"".join(body.split()), validate=False)
        except ValueError:
            continue
        ids.add(hashlib.sha256(der).hexdigest())
    return ids


@dataclass
class LayerScan:
    """What one layer holds that matters for hygiene."""

    findings: list[str] = field(default_factory=list)
    cert_files: dict[str, set[str]] = field(default_factory=dict)  # path → cert ids
    file_hashes: dict[str, str] = field(default_factory=dict)  # path → sha256, small files only


Entry = tuple[str, bool, int, Callable[[], bytes]]
"""One layer entry as the scan sees it: path (no leading "/"), regular file?, size, its data."""


def scan_entries(entries: Iterable[Entry]) -> LayerScan:
    scan = LayerScan()
    for path, is_file, size, read in entries:
        for what, patterns in FORBIDDEN.items():
            if any(fnmatch.fnmatch(path, p) for p in patterns):
                scan.findings.append(f"{what}: /{path}")
        if is_file and path in EMPTIED and size:
            scan.findings.append(f"build-varying file: /{path} is not empty")
        if not is_file or size > SMALL:
            continue
        data = read()
        scan.file_hashes[path] = hashlib.sha256(data).hexdigest()
        if b"-----BEGIN CERTIFICATE-----" in data:
            scan.cert_files[path] = cert_ids(data)
        if PRIVATE_KEY.search(data) and not data.startswith(b"\x7fELF") \
                and not any(fnmatch.fnmatch(path, p) for p in WHEEL_TEST_DATA):
            scan.findings.append(f"private key: /{path}")
        if path.startswith("opt/venv/") and path.endswith(".pyc") and data[4:8] == b"\0\0\0\0":
            scan.findings.append(f"timestamp-based bytecode (differs per build): /{path}")
    return scan


def layer_path(name: str) -> str:
    """A tar member's path as the rules see it: no leading "./" or "/" (base layers carry "./")."""
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def scan_layer(layer: IO[bytes]) -> LayerScan:
    """Scan one layer tar read as a stream."""
    with tarfile.open(fileobj=layer, mode="r|") as tar:
        return scan_entries((layer_path(entry.name), entry.isfile(), entry.size,
                             lambda entry=entry: tar.extractfile(entry).read()) for entry in tar)


# What the scans depend on besides the layer's bytes: a kept scan made under other rules is unused.
RULES = hashlib.sha256(json.dumps([FORBIDDEN, EMPTIED, PEM_CERT.pattern.decode(), PRIVATE_KEY.pattern.decode(),
                                   SMALL, WHEEL_TEST_DATA, "timestamp-pyc", "paths-without-dot-slash"]
                                  ).encode()).hexdigest()[:16]


def _kept(diff_id: str) -> Path:
    return cache.path("layer-scans", RULES, diff_id.replace("sha256:", "") + ".json")


def keep(diff_id: str, scan: LayerScan) -> None:
    data = asdict(scan) | {"cert_files": {p: sorted(ids) for p, ids in scan.cert_files.items()}}
    path = _kept(diff_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)  # whole or absent, even if two builds scan the same layer


def kept(diff_id: str) -> LayerScan | None:
    try:
        data = json.loads(_kept(diff_id).read_text())
    except (OSError, ValueError):
        return None
    return LayerScan(findings=data["findings"], file_hashes=data["file_hashes"],
                     cert_files={p: set(ids) for p, ids in data["cert_files"].items()})


def scan_files(entries: Iterable[tuple[str, bool, int, int]], f: BinaryIO) -> LayerScan:
    """Scan a layer the normalizer just wrote, from its entries, reading file data at their offsets in `f`."""
    def reader(offset: int, size: int) -> Callable[[], bytes]:
        def read() -> bytes:
            f.seek(offset)
            return f.read(size)
        return read
    return scan_entries((layer_path(path), is_file, size, reader(offset, size))
                        for path, is_file, size, offset in entries)


def scan_and_keep(diff_id: str, entries: Iterable[tuple[str, bool, int, int]], f: BinaryIO) -> None:
    """The normalizer's hook: scan a layer it just wrote and keep the scan by its diff ID."""
    keep(diff_id, scan_files(entries, f))


def scan_archive(archive: Archive) -> list[LayerScan]:
    """Scan every layer of an image archive; the layers in stack order (lowest first)."""
    return [scan_layer(Window(f, offset, size)) for f, offset, size in archive.layers]


def judge(layers: list[LayerScan], build_bundle: bytes | None, history: list[str]) -> list[str]:
    """Every finding: forbidden paths, build-only certificates, exact copies, telling history."""
    findings = [f for layer in layers for f in layer.findings]
    for line in history:
        hits = [m for m in HISTORY_MARKERS if m in line]
        if hits:
            findings.append(f"history entry mentions {', '.join(hits)}: {line[:160]}")
    if not build_bundle:
        return findings
    bundle_hash = hashlib.sha256(build_bundle).hexdigest()
    # The OS's own store as first shipped, and public bundles from wheels, are the reference:
    # a build CA merged into the system store later (update-ca-certificates) still counts.
    reference: set[str] = set()
    first_store = next((l.cert_files[SYSTEM_STORE] for l in layers if SYSTEM_STORE in l.cert_files), set())
    reference |= first_store
    for layer in layers:
        for path, ids in layer.cert_files.items():
            if any(fnmatch.fnmatch(path, p) for p in PUBLIC_BUNDLES):
                reference |= ids
    build_only = cert_ids(build_bundle) - reference
    for layer in layers:
        for path, digest in layer.file_hashes.items():
            if digest == bundle_hash:
                findings.append(f"copy of the build CA bundle: /{path}")
        for path, ids in layer.cert_files.items():
            if ids & build_only and layer.file_hashes.get(path) != bundle_hash:
                findings.append(f"build-only CA certificate ({len(ids & build_only)}) in /{path}")
    return findings


def scan_image(c: Engine, image: str, build_bundle: Path | None, *, use_kept: bool = True) -> list[str]:
    """Findings for an image in the engine (empty means clean).

    Layers come from the scans kept by diff ID when every layer has one (the engine checked each
    layer's digest when it took it in); otherwise the image is saved and scanned now, and those
    scans are kept.
    """
    diff_ids = c.diff_ids(image)
    layers = [kept(d) for d in diff_ids] if use_kept else [None]
    if any(scan is None for scan in layers):
        with c.layers(image) as (archive, _):
            layers = scan_archive(archive)
        for diff_id, scan in zip(diff_ids, layers):
            keep(diff_id, scan)
    history = c.history(image)
    return judge(layers, build_bundle.read_bytes() if build_bundle else None, history)
