"""The CycloneDX SBOM: made with cyclonedx-python-lib from an inventory, hashes from the real lock,
byte-identical for the same image, valid against the CycloneDX 1.6 JSON schema."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys

import pytest

from builder import blobs, sbom
from builder.errors import BuildFailed
from tests.support import ROOT

LOCK = ROOT / "manifests" / "locks" / "runtime-cu128.txt"
JUPYTER_LOCK = ROOT / "manifests" / "locks" / "jupyter-cu128.txt"
DIFF_IDS = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
TAG = "2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime"
EPOCH = 1795824000


def lock_by_hand(lock=LOCK) -> dict[str, tuple[str, set[str]]]:
    """A lock read independently of sbom.lock_hashes: `name==version \\` then `--hash=sha256:` lines."""
    pins: dict[str, tuple[str, set[str]]] = {}
    name = None
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            name = m.group(1).lower()
            pins[name] = (m.group(2), set())
        for h in re.findall(r"sha256:([0-9a-f]{64})", line):
            pins[name][1].add(h)
    return pins


def inventory(extra_deb=()) -> sbom.Inventory:
    """What the runtime image holds: the lock's packages plus pip and the probe, and some OS packages."""
    python = [sbom.PythonPackage(name, version) for name, (version, _) in lock_by_hand().items()]
    python += [sbom.PythonPackage("pip", "25.2"), sbom.PythonPackage("pytorch-cuda-selftest", "0.1.0")]
    deb = [sbom.DebPackage("libc6", "2.39-0ubuntu8", "amd64"), sbom.DebPackage("tini", "0.19.0-1", "amd64"),
           sbom.DebPackage("tzdata", "2024a-2ubuntu1", "all"), *extra_deb]
    return sbom.Inventory(python=tuple(reversed(python)), deb=tuple(reversed(deb)), os_id="ubuntu", os_version="24.04")


def render(inv: sbom.Inventory, diff_ids=DIFF_IDS, locks=(LOCK,)) -> str:
    return sbom.to_json(sbom.make_bom(inv, name="pytorch-cuda", tag=TAG, diff_ids=diff_ids,
                                      source_date_epoch=EPOCH, locks=locks))


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(render(inventory()))


def by_name(document: dict) -> dict[str, dict]:
    return {c["name"]: c for c in document["components"]}


def test_torch_and_cudnn_are_listed_with_the_lock_hashes(document):
    expected = lock_by_hand()
    components = by_name(document)
    for name, version in (("torch", "2.8.0"), ("nvidia-cudnn-cu12", "9.10.2.21")):
        c = components[name]
        assert c["version"] == version
        assert c["purl"] == f"pkg:pypi/{name}@{version}"
        hashes = {h["content"] for h in c["hashes"] if h["alg"] == "SHA-256"}
        assert hashes == expected[name][1] and hashes


def test_every_locked_package_is_there_and_unlocked_ones_have_no_hashes(document):
    components = by_name(document)
    for name, (version, hashes) in lock_by_hand().items():
        assert components[name]["version"] == version
        assert {h["content"] for h in components[name]["hashes"]} == hashes
    for name in ("pip", "pytorch-cuda-selftest"):
        assert "hashes" not in components[name]
        assert components[name]["properties"] == [{"name": "pytorch-cuda:hashes", "value": "none: not in the hash lock"}]


def test_a_flavor_layer_lock_adds_its_hashes():
    jupyter = lock_by_hand(JUPYTER_LOCK)
    version, hashes = jupyter["jupyterlab"]
    inv = sbom.Inventory(python=(sbom.PythonPackage("torch", "2.8.0"), sbom.PythonPackage("jupyterlab", version)),
                         deb=(), os_id="ubuntu", os_version="24.04")
    components = by_name(json.loads(render(inv, locks=(LOCK, JUPYTER_LOCK))))
    assert {h["content"] for h in components["jupyterlab"]["hashes"]} == hashes and hashes
    assert {h["content"] for h in components["torch"]["hashes"]} == lock_by_hand()["torch"][1]
    assert "hashes" not in by_name(json.loads(render(inv)))["jupyterlab"]  # runtime's lock alone lacks it


def test_os_packages_have_deb_purls(document):
    components = by_name(document)
    assert components["libc6"]["purl"] == "pkg:deb/ubuntu/libc6@2.39-0ubuntu8?arch=amd64&distro=ubuntu-24.04"
    assert components["tzdata"]["purl"] == "pkg:deb/ubuntu/tzdata@2024a-2ubuntu1?arch=all&distro=ubuntu-24.04"


def test_root_is_the_image_and_metadata_is_fixed(document):
    root = document["metadata"]["component"]
    assert (root["type"], root["name"], root["version"]) == ("container", "pytorch-cuda", TAG)
    assert [p["value"] for p in root["properties"]] == DIFF_IDS
    assert document["metadata"]["timestamp"].startswith("2026-11-28T00:00:00")
    assert document["specVersion"] == "1.6" and document["bomFormat"] == "CycloneDX"
    assert document["serialNumber"] == f"urn:uuid:{sbom.serial_number(DIFF_IDS)}"


def test_the_image_lists_each_layers_registry_blob_after_its_diff_ids():
    layer_blobs = [blobs.Blob(d, "sha256:" + f"{i}" * 64, 100 + i) for i, d in enumerate(DIFF_IDS, start=1)]
    document = json.loads(sbom.to_json(sbom.make_bom(inventory(), name="pytorch-cuda", tag=TAG, diff_ids=DIFF_IDS,
                                                     source_date_epoch=EPOCH, locks=(LOCK,), layer_blobs=layer_blobs,
                                                     blob_scheme="gzip:test")))
    properties = {(p["name"], p["value"]) for p in document["metadata"]["component"]["properties"]}
    assert properties == ({("pytorch-cuda:layer-diff-id", d) for d in DIFF_IDS}
                          | {("pytorch-cuda:layer-blob", f"{b.diff_id} {b.digest} {b.size}") for b in layer_blobs}
                          | {("pytorch-cuda:blob-compression", "gzip:test")})


def test_same_image_same_bytes_other_layers_other_serial():
    first, second = render(inventory()), render(inventory())
    assert first == second
    other = json.loads(render(inventory(), diff_ids=DIFF_IDS[:1]))
    assert other["serialNumber"] != json.loads(first)["serialNumber"]
    inv = inventory()
    shuffled = sbom.Inventory(python=inv.python[::-1], deb=inv.deb[::-1], os_id="ubuntu", os_version="24.04")
    assert render(shuffled) == first  # the order the image lists packages in does not matter


def test_a_version_the_lock_does_not_pin_gets_no_hashes():
    inv = sbom.Inventory(python=(sbom.PythonPackage("torch", "2.7.1"),), deb=(), os_id="ubuntu", os_version="24.04")
    torch = by_name(json.loads(render(inv)))["torch"]
    assert "hashes" not in torch
    assert torch["properties"][0]["value"] == "none: the hash lock pins 2.8.0"


def test_an_invalid_document_is_refused():
    text = render(inventory())
    sbom.validate(text)
    broken = json.loads(text)
    broken["components"][0]["hashes"][0]["content"] = "not-a-hash"
    with pytest.raises(BuildFailed, match="does not validate against CycloneDX 1.6"):
        sbom.validate(json.dumps(broken))
    del broken["bomFormat"]
    with pytest.raises(BuildFailed, match="bomFormat"):
        sbom.validate(json.dumps(broken))


def test_the_file_is_named_by_its_content_and_write_returns_its_sha256(tmp_path):
    text = render(inventory())
    path = tmp_path / "records" / sbom.file_name("runtime", text)
    digest = sbom.write(text, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name == f"runtime-{digest[:12]}.cdx.json"
    assert sbom.file_name("runtime", render(inventory(), diff_ids=DIFF_IDS[:1])) != path.name


def test_the_inventory_script_reports_this_hosts_packages():
    """The script that runs inside images, run here on the host (it has python and dpkg)."""
    proc = subprocess.run([sys.executable, "-c", sbom.SCRIPT.read_text()], capture_output=True, text=True, check=True)
    inv = sbom.parse_inventory(proc.stdout)
    python = {p.name.lower(): p.version for p in inv.python}
    assert python["jsonschema"] == importlib.metadata.version("jsonschema")
    deb = {p.name: p for p in inv.deb}
    dpkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dpkg"], capture_output=True, text=True, check=True)
    assert deb["dpkg"].version == dpkg.stdout
    assert inv.os_id and inv.os_version


def test_an_inventory_without_its_line_is_a_clear_failure():
    with pytest.raises(BuildFailed, match="did not report its packages"):
        sbom.parse_inventory("python: not found\n")
    with pytest.raises(BuildFailed, match="dpkg-query exited 2"):
        sbom.parse_inventory('INVENTORY {"python": [], "deb": null, "deb_error": "dpkg-query exited 2: x", '
                             '"os": {"id": "ubuntu", "version": "24.04"}}')
