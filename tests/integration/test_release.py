"""Release of the runtime image: build record and SBOM, push to a real registry only when
verified, pull back by tag and by digest. The registry is the distribution registry from
Debian's docker-registry package, started here on a test port with its own storage."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from builder import record, registry, release, sbom, upload
from builder.errors import UserError
from tests.integration.test_registry import HOST, reg  # noqa: F401  (the registry fixture)
from tests.support import ROOT, TEST_REPOSITORY

RELEASE_REPOSITORY = f"{TEST_REPOSITORY}-release"  # its own tags: the other tests keep theirs


@pytest.fixture(scope="module")
def released(runtime_image, tmp_path_factory):
    """`build.py build runtime` as a user runs it (from the cache): verify, record, SBOM, labels."""
    records = tmp_path_factory.mktemp("records")
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "build", "runtime", "--quiet",
                           "--repository", RELEASE_REPOSITORY, "--records", str(records)],
                          capture_output=True, text=True, cwd=ROOT)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    [path] = records.glob("*.record.json")
    return records, record.load_record(path)


def test_record_lists_inputs_versions_checks_and_layers(released, docker_client):
    records, rec = released
    assert rec["verified"] is True and all(c["ok"] for c in rec["checks"])
    assert rec["facts"]["torch"] == "2.8.0+cu128"
    assert rec["source_date_epoch"] == 1795824000
    labels = docker_client.run_config(rec["image"]["id"])["Labels"]
    assert labels[record.LABEL_RECORD] == record.record_digest(rec)
    assert labels[record.LABEL_SBOM] == rec["sbom"]["sha256"]
    assert docker_client.image_id(rec["tags"][0]) == rec["image"]["id"]
    # what a push will upload, each layer's blob in the record and the SBOM alike
    described = upload.describe(docker_client, rec["image"]["id"])
    assert rec["registry"]["digest"] == described.digest
    assert rec["registry"]["blobs"] == [{"digest": b.digest, "size": b.size} for b in described.blobs]
    image = json.loads((records / rec["sbom"]["path"]).read_text())["metadata"]["component"]
    assert {p["value"] for p in image["properties"] if p["name"] == "pytorch-cuda:layer-blob"} == \
        {f"{b.diff_id} {b.digest} {b.size}" for b in described.blobs}


def test_sbom_lists_torch_and_cudnn_with_lock_hashes_and_os_packages(released):
    records, rec = released
    text = (records / rec["sbom"]["path"]).read_text()
    sbom.validate(text)
    components = {c["name"]: c for c in json.loads(text)["components"]}
    assert components["torch"]["version"] == "2.8.0" and components["torch"]["hashes"]
    assert components["nvidia-cudnn-cu12"]["version"] == "9.10.2.21"
    assert any(c.get("purl", "").startswith("pkg:deb/ubuntu/python3.12@") for c in components.values())


def test_the_record_carries_the_audit_and_the_audited_sbom(released, docker_client):
    """The audit ran after verify: each source checked or saying why not, outside the label digest;
    where the SBOM's next version was written, it is the same BOM with the findings."""
    records, rec = released
    assert set(rec["audit"]["sources"]) == {"ubuntu", "python"}
    for source in rec["audit"]["sources"].values():
        assert source["why"] and source["count"] == len(source["findings"])
    labels = docker_client.run_config(rec["image"]["id"])["Labels"]
    assert labels[record.LABEL_RECORD] == record.record_digest({**rec, "audit": None})
    if rec["audit"]["sbom"]:
        text = (records / rec["audit"]["sbom"]["path"]).read_text()
        sbom.validate(text)
        audited, built = json.loads(text), json.loads((records / rec["sbom"]["path"]).read_text())
        assert audited["serialNumber"] == built["serialNumber"] and audited["version"] == built["version"] + 1


def test_an_image_without_a_passing_record_is_refused(runtime_image, docker_client, tmp_path, reg):  # noqa: F811
    with pytest.raises(UserError, match="no build record"):
        release.push(docker_client, runtime_image.refs[0], f"{HOST}/team", records_dir=tmp_path)
    assert not registry.registry_has_tag(HOST, f"team/{TEST_REPOSITORY}", runtime_image.refs[0].split(":")[1])


def test_push_then_pull_by_tag_and_digest(released, docker_client, reg):  # noqa: F811
    records, rec = released
    digests = release.push(docker_client, rec["tags"][0], f"{HOST}/team", records_dir=records, quiet=True)
    assert len(digests) == len(rec["tags"])
    assert set(digests.values()) == {rec["registry"]["digest"]}  # the record named it before the push
    pushed = record.find_record(records, rec["image"]["id"])
    assert [p["pulled_image_id"] for p in pushed["pushes"]] == [rec["image"]["id"]] * len(digests)
    remote, digest = next(iter(digests.items()))
    repo = remote.rpartition(":")[0]
    assert registry.remote_problems(HOST, repo.split("/", 1)[1], digest, expected_image_id=rec["image"]["id"]) == []
    docker_client.client.api.remove_image(rec["image"]["id"], force=True, noprune=True)
    try:
        by_tag = docker_client.client.images.pull(remote)
        by_digest = docker_client.client.images.pull(f"{repo}@{digest}")
        assert by_tag.id == by_digest.id == rec["image"]["id"]
    finally:
        for ref in [remote, f"{repo}@{digest}"]:
            try:
                docker_client.client.api.remove_image(ref, noprune=True)
            except Exception:
                pass
