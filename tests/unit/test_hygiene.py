"""The layer scan on hand-made layers: what it must find, and what it must let through."""
from __future__ import annotations

import base64
import io
import os
import tarfile

from builder import hygiene
from tests.support import tar_of


def pem(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"


PUBLIC = pem(b"public root certificate" * 4)
PROXY = pem(b"intercepting proxy CA" * 4)
BUILD_BUNDLE = PUBLIC + PROXY


layer_tar = tar_of


def layer(files: dict[str, bytes]) -> hygiene.LayerScan:
    return hygiene.scan_layer(io.BytesIO(layer_tar(files)))


OS_LAYER = {"etc/ssl/certs/ca-certificates.crt": PUBLIC, "usr/bin/true": b"\x7fELF..."}


def test_clean_image_has_no_findings():
    layers = [layer(OS_LAYER), layer({"opt/venv/lib/python3.12/site-packages/pip/_vendor/certifi/cacert.pem": PUBLIC})]
    assert hygiene.judge(layers, BUILD_BUNDLE, ["COPY dir:abc in /opt/venv"]) == []


def test_copy_of_the_bundle_is_found_even_if_a_later_layer_deletes_it():
    layers = [layer(OS_LAYER), layer({"etc/pip.pem": BUILD_BUNDLE}), layer({"etc/.wh.pip.pem": b""})]
    findings = hygiene.judge(layers, BUILD_BUNDLE, [])
    assert "copy of the build CA bundle: /etc/pip.pem" in findings


def test_proxy_ca_merged_into_the_system_store_is_found():
    layers = [layer(OS_LAYER), layer({"etc/ssl/certs/ca-certificates.crt": PROXY + PUBLIC})]
    findings = hygiene.judge(layers, BUILD_BUNDLE, [])
    assert findings == ["build-only CA certificate (1) in /etc/ssl/certs/ca-certificates.crt"]


def test_forbidden_paths():
    layers = [layer({"root/.cache/pip/http/x": b"1", "var/lib/apt/lists/archive_noble_InRelease": b"2",
                     "etc/ssh/ssh_host_ed25519_key": b"3", "tmp/build/requirements.lock": b"4"})]
    findings = hygiene.judge(layers, None, [])
    assert any(f.startswith("pip cache") for f in findings)
    assert any(f.startswith("apt package lists") for f in findings)
    assert any(f.startswith("SSH host key") for f in findings)
    assert any(f.startswith("build CA bundle file: /tmp/build") for f in findings)


def test_downloaded_debs_and_the_builders_cache_never_ship():
    """What the apt pins and `audit` download stays on the host: a .deb or the cache in a layer is found."""
    layers = [layer({"tmp/openssh-server_9.6p1-3ubuntu13.20_amd64.deb": b"1",
                     "var/cache/apt/archives/libc6_2.39-0ubuntu8.12_amd64.deb": b"2",
                     "root/.cache/pytorch-cuda/debs/ab.deb.part": b"3",
                     "home/user/.cache/pytorch-cuda/apt-indexes/x.xz": b"4"})]
    findings = hygiene.judge(layers, None, [])
    assert sum(f.startswith("downloaded .deb") for f in findings) == 2
    assert sum(f.startswith("builder cache") for f in findings) == 2


def test_private_keys_but_not_libraries_that_parse_them():
    key = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.b64encode(os.urandom(60)) + b"\n"
    library = b"\x7fELF" + b"\0" * 10 + key
    findings = hygiene.judge([layer({"home/user/.ssh/id_ed25519": key, "usr/lib/libtls.so": library})], None, [])
    assert findings == ["private key: /home/user/.ssh/id_ed25519"]


def test_timestamp_bytecode_in_the_venv_is_found_hash_based_is_not():
    timestamp_pyc = b"\xcb\x0d\x0d\x0a" + b"\0\0\0\0" + b"\x01" * 8
    hash_pyc = b"\xcb\x0d\x0d\x0a" + b"\x01\0\0\0" + b"\x01" * 8
    findings = hygiene.judge([layer({"opt/venv/a/__pycache__/x.cpython-312.pyc": timestamp_pyc,
                                     "opt/venv/a/__pycache__/y.cpython-312.pyc": hash_pyc})], None, [])
    assert findings == ["timestamp-based bytecode (differs per build): /opt/venv/a/__pycache__/x.cpython-312.pyc"]


def test_history_that_mentions_the_ca():
    findings = hygiene.judge([layer({})], None, ["/bin/sh -c PIP_CERT=/ca.pem pip install torch"])
    assert findings and "PIP_CERT" in findings[0]


def test_build_varying_files_and_a_set_machine_id():
    findings = hygiene.judge([layer({"var/log/dpkg.log": b"2026-11-28 install x", "var/cache/ldconfig/aux-cache": b"1",
                                     "etc/machine-id": b"0123456789abcdef\n"})], None, [])
    assert sorted(findings) == ["build-varying file: /etc/machine-id is not empty",
                                "build-varying file: /var/cache/ldconfig/aux-cache",
                                "build-varying file: /var/log/dpkg.log"]
    assert hygiene.judge([layer({"etc/machine-id": b""})], None, []) == []


def test_scan_of_entries_equals_scan_of_the_tar_and_survives_keeping(tmp_path, monkeypatch):
    """The normalizer's scan (entries + data) and verify's (a tar stream) agree; a kept scan
    reads back equal, and is looked up under the current rules only."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    files = {**OS_LAYER, "etc/pip.pem": BUILD_BUNDLE, "root/.cache/pip/x": b"1",
             "opt/venv/lib/python3.12/site-packages/x/__pycache__/a.cpython-312.pyc": b"\x00" * 16}
    from_tar = layer(files)
    from_entries = hygiene.scan_entries((p, True, len(d), lambda d=d: d) for p, d in files.items())
    assert from_entries == from_tar and from_tar.findings
    assert hygiene.kept("sha256:" + "ab" * 32) is None
    hygiene.keep("sha256:" + "ab" * 32, from_tar)
    assert hygiene.kept("sha256:" + "ab" * 32) == from_tar
    monkeypatch.setattr(hygiene, "RULES", "other-rules")
    assert hygiene.kept("sha256:" + "ab" * 32) is None


def test_a_layer_scanned_from_its_tar_or_from_the_normalizer_gives_one_scan():
    """Base layers name entries "./etc/..."; the normalizer's entries keep that form, a tar
    stream's scan strips it: both must key the scan the same way, or kept scans never match."""
    data = layer_tar({"./etc/ssl/certs/ca-certificates.crt": PUBLIC, "./.hidden": b"x",
                      "./var/log/dpkg.log": b"when"})
    from_tar = hygiene.scan_layer(io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        entries = [(m.name, m.isfile(), m.size, m.offset_data) for m in tar.getmembers()]
    from_normalizer = hygiene.scan_files(entries, io.BytesIO(data))
    assert from_tar == from_normalizer
    assert ".hidden" in from_tar.file_hashes and "etc/ssl/certs/ca-certificates.crt" in from_tar.cert_files
    assert any("var/log/dpkg.log" in f for f in from_tar.findings)
