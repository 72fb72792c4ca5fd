"""Build records: made from the real manifest and lock, validated against manifests/record.schema.json,
written and found again by image ID; validation names what is missing or wrong."""
from __future__ import annotations

import copy
import hashlib
import json

import pytest

from builder import manifest, record
from builder.errors import UserError
from builder.verify import CheckResult
from tests.support import ROOT

IMAGE_ID = "sha256:" + "1a2b3c4d5e6f" + "0" * 52
BASE_ID = "sha256:" + "b" * 64
DIFF_IDS = ["sha256:" + "c" * 64, "sha256:" + "d" * 64]
FACTS = {"python": "3.12.3", "os_id": "ubuntu", "os_version": "24.04", "torch": "2.8.0+cu128", "cuda": "12.8",
         "cudnn": 91002, "packages": {"torch": "2.8.0", "nvidia-cudnn-cu12": "9.10.2.21"}}
TAGS = ["pytorch-cuda:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime",
        "pytorch-cuda:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime-20261128"]
BUILDER = {"version": "0.1.0", "python": "3.11.7", "engine": "20.10.24", "git_commit": None, "git_dirty": None,
           "recorded_at": "2026-11-28T10:00:00Z"}


@pytest.fixture(scope="module")
def runtime():
    return manifest.load().variant("runtime")


def make(variant, checks=None, image_id=IMAGE_ID, **overrides):
    checks = [CheckResult("torch-version", True, "torch 2.8.0 (manifest: 2.8.0)"),
              CheckResult("hygiene", True, "clean")] if checks is None else checks
    kwargs = dict(image=record.ImageInfo(ref=TAGS[0], id=image_id, diff_ids=DIFF_IDS, size=7_300_000_000),
                  base=record.ImageInfo(ref="pytorch-cuda-base:ubuntu24.04-x", id=BASE_ID, diff_ids=DIFF_IDS[:1],
                                        size=437_000_000),
                  tags=TAGS, facts=FACTS, checks=checks, builder=BUILDER)
    kwargs.update(overrides)
    return record.make_record(variant, **kwargs)


def test_a_record_carries_inputs_hashes_and_results(runtime):
    r = make(runtime)
    lock = ROOT / "manifests" / "locks" / "runtime-cu128.txt"
    assert r["inputs"]["locks"] == [{"path": "manifests/locks/runtime-cu128.txt",
                                     "sha256": hashlib.sha256(lock.read_bytes()).hexdigest()}]
    assert r["inputs"]["manifest"]["sha256"] == hashlib.sha256((ROOT / "manifests/images.yaml").read_bytes()).hexdigest()
    cuda = r["inputs"]["entries"]["cuda"]
    assert cuda["key"] == "cuda.cu128" and cuda["value"]["cudnn"] == "9.10.2.21"
    assert cuda["sha256"] == hashlib.sha256(json.dumps(cuda["value"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert "images/runtime/Dockerfile" in [f["path"] for f in r["inputs"]["files"]]
    assert r["base"] == {"ref": "pytorch-cuda-base:ubuntu24.04-x", "image_id": BASE_ID, "diff_ids": DIFF_IDS[:1]}
    assert r["image"] == {"id": IMAGE_ID, "diff_ids": DIFF_IDS}
    assert r["source_date_epoch"] == 1795824000 and r["sizes"]["image_bytes"] == 7_300_000_000
    assert r["verified"] is True and [c["id"] for c in r["checks"]] == ["torch-version", "hygiene"]


def test_a_flavor_records_every_lock_and_flavor_it_is_made_of():
    workstation = manifest.load().variant("workstation")
    r = make(workstation)
    assert [f["path"] for f in r["inputs"]["locks"]] == [
        "manifests/locks/runtime-cu128.txt", "manifests/locks/devel-cu128.txt", "manifests/locks/jupyter-cu128.txt"]
    for f in r["inputs"]["locks"]:
        assert f["sha256"] == hashlib.sha256((ROOT / f["path"]).read_bytes()).hexdigest()
    flavors = {k for k in r["inputs"]["entries"] if k.startswith("flavors.")}
    assert flavors == {"flavors.runtime", "flavors.devel", "flavors.workstation", "flavors.jupyter", "flavors.ssh"}
    assert r["inputs"]["entries"]["flavors.jupyter"]["value"]["python_packages"]["jupyterlab"]
    assert "images/workstation/Dockerfile" in [f["path"] for f in r["inputs"]["files"]]


def test_entries_differ_between_cuda_builds(runtime):
    other = manifest.load().variant("runtime-cu126")
    a, b = record.manifest_entries(runtime), record.manifest_entries(other)
    assert a["cuda"]["sha256"] != b["cuda"]["sha256"]
    assert a["python_packages"]["sha256"] == b["python_packages"]["sha256"]


def test_a_failed_or_skipped_verify_is_not_verified(runtime):
    failed = make(runtime, checks=[CheckResult("hygiene", False, "apt lists in layer 3"), CheckResult("torch-version", True, "ok")])
    assert failed["verified"] is False
    assert "hygiene" in record.push_refusal(failed)
    skipped = make(runtime, checks=[])
    assert skipped["verified"] is False and "skipped" in record.push_refusal(skipped)
    assert record.push_refusal(None).startswith("it has no build record")
    assert record.push_refusal(make(runtime)) is None


def test_write_load_and_find_by_image_id(runtime, tmp_path):
    r = make(runtime)
    path = record.write_record(r, tmp_path)
    assert path.name == "runtime-1a2b3c4d5e6f.record.json"
    assert record.load_record(path) == r
    other = make(runtime, image_id="sha256:" + "1a2b3c4d5e6f" + "f" * 52)  # same short ID, other image
    other_path = record.write_record(other, tmp_path / "elsewhere")
    assert record.find_record(tmp_path, IMAGE_ID) == r
    assert record.find_record(tmp_path, IMAGE_ID.removeprefix("sha256:")) == r
    assert record.find_record(tmp_path, IMAGE_ID[7:7 + 20]) == r
    assert record.find_record(tmp_path, "sha256:" + "9" * 64) is None
    assert record.find_record(other_path.parent, IMAGE_ID) is None
    assert record.find_record(other_path.parent, other["image"]["id"]) == other
    with pytest.raises(UserError, match="too short"):
        record.find_record(tmp_path, "1a2b")


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r.pop("image"), "(top level)"),
    (lambda r: r["image"].update(id="1a2b"), "image.id"),
    (lambda r: r.update(source_date_epoch="1795824000"), "source_date_epoch"),
    (lambda r: r["inputs"]["locks"][0].update(sha256="xyz"), "inputs.locks.0.sha256"),
    (lambda r: r["inputs"].update(locks=[]), "inputs.locks"),
    (lambda r: r["inputs"]["entries"].pop("cuda"), "inputs.entries"),
    (lambda r: r["checks"][0].pop("ok"), "checks.0"),
    (lambda r: r["base"].update(diff_ids=[]), "base.diff_ids"),
    (lambda r: r.update(unexpected=1), "(top level)"),
    (lambda r: r["tags"].append("Not A Tag"), "tags.2"),
    (lambda r: r["facts"].pop("packages"), "facts"),
])
def test_validation_names_the_wrong_key(runtime, mutate, key):
    r = copy.deepcopy(make(runtime))
    mutate(r)
    with pytest.raises(UserError) as caught:
        record.validate(r)
    assert f"key {key}:" in str(caught.value)


def test_verified_must_agree_with_the_checks(runtime):
    r = make(runtime, checks=[CheckResult("hygiene", False, "apt lists")])
    r["verified"] = True
    with pytest.raises(UserError, match="verified is true but this check failed"):
        record.validate(r)
    r = make(runtime, checks=[])
    r["verified"] = True
    with pytest.raises(UserError, match="key checks"):
        record.validate(r)
    r = make(runtime)
    r["verified"] = False
    with pytest.raises(UserError, match="key verified"):
        record.validate(r)


def test_load_rejects_a_broken_file(runtime, tmp_path):
    path = record.write_record(make(runtime), tmp_path)
    data = json.loads(path.read_text())
    data["checks"][0]["ok"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"key checks\.0\.ok"):
        record.load_record(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not JSON"):
        record.load_record(path)


def test_the_label_digest_ignores_per_run_values_only(runtime):
    """Image ID, base image ID (a fresh import), builder block, pushes and check details vary per run."""
    r = make(runtime)
    digest = record.record_digest(r)
    relabelled = copy.deepcopy(r)
    relabelled["image"]["id"] = "sha256:" + "e" * 64
    relabelled["builder"]["recorded_at"] = "2027-01-01T00:00:00Z"
    pushed = record.add_push(relabelled, "127.0.0.1:5000/team/pytorch-cuda:x", "sha256:" + "f" * 64, r["image"]["id"])
    assert record.record_digest(pushed) == digest
    changed = copy.deepcopy(r)
    changed["checks"][1]["detail"] = "two containers: 1a2b… and 3c4d…"
    changed["base"]["image_id"] = "sha256:" + "d" * 64
    assert record.record_digest(changed) == digest
    changed["checks"][1]["ok"] = not changed["checks"][1]["ok"]
    assert record.record_digest(changed) != digest
    changed = copy.deepcopy(r)
    changed["image"]["diff_ids"] = changed["image"]["diff_ids"][::-1]
    assert record.record_digest(changed) != digest
    labels = record.attachment_labels(make(runtime, sbom=(ROOT / "x.cdx.json", "a" * 64)))
    assert labels == {record.LABEL_RECORD: labels[record.LABEL_RECORD], record.LABEL_SBOM: "a" * 64}


def test_add_push_validates_the_entry(runtime):
    r = make(runtime)
    pushed = record.add_push(r, "127.0.0.1:5000/team/pytorch-cuda:tag", "sha256:" + "f" * 64, IMAGE_ID)
    assert pushed["pushes"][0]["digest"] == "sha256:" + "f" * 64 and "pushes" not in r
    with pytest.raises(UserError, match="pushes.0.digest"):
        record.add_push(r, "127.0.0.1:5000/team/pytorch-cuda:tag", "f" * 64, IMAGE_ID)


def test_the_builder_block_names_the_engine_outside_the_label_digest(runtime):
    """Which engine built the image is recorded, and the label digest does not depend on it (one
    labelled image ID from every engine)."""
    from builder.engine.probe import EngineInfo

    info = EngineInfo(docker_host="unix:///x", server_version="28.5.2", api_version="1.51", storage_driver="overlayfs",
                      image_store="containerd", data_root="/var/lib/docker", local=True, rootless=False,
                      buildkit=True, store_readable=False, layer_source="archive", layer_source_reason="")
    engine = type("Engine", (), {"info": info})()
    block = record.builder_info(engine)
    assert block["engine"] == "Docker 28.5.2 (overlayfs, containerd image store, layers read from the archive)"
    on_28 = make(runtime, builder=block)
    assert record.record_digest(on_28) == record.record_digest(make(runtime))


def test_a_warning_passes_is_recorded_as_such_and_leaves_the_label_digest_alone(runtime):
    """A WARN (an apt lock gone stale) is ok: verified, pushable; whether it warned depends on when
    verify ran, so the label digest covers only that it passed."""
    warned = make(runtime, checks=[CheckResult("torch-version", True, "ok"),
                                   CheckResult("security-pocket", True, "lock 20 days old", warn=True)])
    assert warned["checks"][1] == {"id": "security-pocket", "ok": True, "detail": "lock 20 days old", "warn": True}
    assert warned["checks"][0]["warn"] is False
    assert warned["verified"] is True and record.push_refusal(warned) is None
    passed = make(runtime, checks=[CheckResult("torch-version", True, "ok"),
                                   CheckResult("security-pocket", True, "lock 0 days old")])
    assert record.record_digest(warned) == record.record_digest(passed)
    older = copy.deepcopy(passed)
    for check in older["checks"]:
        del check["warn"]  # a record from before warnings still validates
    record.validate(older)
    assert record.record_digest(older) == record.record_digest(passed)


def audit_summary(count: int = 1) -> dict:
    finding = {"package": "libc6", "installed": "2.39-0ubuntu8", "fixed": "2.39-0ubuntu8.12", "where": "noble-security",
               "ids": ["CVE-2024-2961"]}
    return {"at": "2026-12-05T09:00:00Z",
            "sources": {"ubuntu": {"checked": True, "why": "dpkg's packages against noble-updates, noble-security",
                                   "count": count, "findings": [finding]},
                        "python": {"checked": False, "why": "pip-audit is not installed", "count": 0, "findings": []}},
            "sbom": {"path": "runtime-1a2b3c4d5e6f.audit.cdx.json", "sha256": "e" * 64,
                     "format": "CycloneDX 1.6 JSON", "version": 2}}


def test_the_audit_is_recorded_outside_the_label_digest(runtime):
    """Advisories are published after the build: the same image audited later must keep its label."""
    audited = make(runtime, audit=audit_summary())
    assert audited["audit"]["sources"]["ubuntu"]["findings"][0]["ids"] == ["CVE-2024-2961"]
    skipped = make(runtime)
    assert skipped["audit"] is None
    assert record.record_digest(audited) == record.record_digest(skipped)
    later = copy.deepcopy(audited)
    later["audit"]["sources"]["ubuntu"]["findings"] = []
    later["audit"]["sources"]["ubuntu"]["count"] = 0
    assert record.record_digest(later) == record.record_digest(audited)
    older = copy.deepcopy(skipped)
    del older["audit"]  # a record from before audits still validates
    record.validate(older)


@pytest.mark.parametrize("mutate, key", [
    (lambda a: a["sources"]["ubuntu"].pop("checked"), "audit.sources.ubuntu"),
    (lambda a: a["sources"]["ubuntu"]["findings"][0].update(ids="CVE-2024-2961"), "audit.sources.ubuntu.findings.0.ids"),
    (lambda a: a["sbom"].update(version=1), "audit.sbom.version"),
    (lambda a: a.update(at="yesterday"), "audit.at"),
    (lambda a: a["sources"]["ubuntu"].update(count=2), "audit.sources.ubuntu.count"),
])
def test_a_broken_audit_block_is_named(runtime, mutate, key):
    block = audit_summary()
    mutate(block)
    with pytest.raises(UserError) as caught:
        make(runtime, audit=block)
    assert f"key {key}:" in str(caught.value)


def test_the_revision_label_is_the_same_for_a_user_who_does_not_own_the_checkout():
    """git refuses a repository another user owns ("dubious ownership"); the revision, an input of
    the image ID, must not turn into `unknown` for a CI runner's docker-group user."""
    import os
    import subprocess
    import sys

    from builder import record

    if os.getuid() != 0:
        pytest.skip("needs root to run as another user (CI runs as root)")
    mine = record.source_revision()
    assert mine != "unknown"
    theirs = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                             "from builder import record; print(record.source_revision())"],
                            capture_output=True, text=True, cwd=record.ROOT, env={"HOME": "/tmp", "PATH": os.environ["PATH"]})
    assert theirs.stdout.strip() == mine, theirs.stderr
