"""The audit a build runs once verify passed: summarized in the record (outside its label digest),
its findings in the SBOM's next version next to the record, never a reason for the build to fail;
and `build.py audit --sbom` writing that version for an image built earlier. The engine, the
archive and pip-audit are stood in for; the real audit is tests/integration/test_audit.py."""
from __future__ import annotations

import hashlib
import json
import types

import pytest

from builder import audit, blobs, cli, engine, manifest, record, release, sbom, upload
from builder.normalize import with_labels
from builder.errors import UserError
from builder.verify import CheckResult
from tests.unit.test_record import BASE_ID, BUILDER, DIFF_IDS, FACTS, TAGS
from tests.unit.test_sbom import inventory, render

BUILT_ID = "sha256:" + "1" * 64
LABELLED_ID = "sha256:" + "2a3b4c5d6e7f" + "2" * 52
BLOBS = [blobs.Blob(d, "sha256:" + f"{i:x}" * 64, 1000 + i) for i, d in enumerate(DIFF_IDS, start=10)]
PASSED = [CheckResult("torch-version", True, "ok"), CheckResult("security-pocket", True, "lock 20 days old", warn=True)]


def findings() -> list[audit.Result]:
    return [audit.Result("ubuntu", True, "dpkg's packages against noble-updates, noble-security", [
                audit.Finding("ubuntu", "libc6", "2.39-0ubuntu8", "2.39-0ubuntu8.12", "noble-security", ["CVE-2024-2961"])]),
            audit.Result("python", False, "pip-audit is not installed")]


class Stand:
    """What record_build talks to, stood in for: the SBOM step, the engine's inspect, relabelling,
    and the audit's sources; every audit call is written down."""

    def __init__(self, monkeypatch, tmp_path, sources=None):
        self.audited: list[tuple[str, ...]] = []
        self.sources = sources or {r.source: r for r in findings()}

        def sbom_for_image(c, image, *, variant, records_dir, **kwargs):
            text = render(inventory())
            path = records_dir / sbom.file_name(variant, text)
            return path, sbom.write(text, path)

        def audit_one(c, image, m, sources, mirror=None):
            self.audited.append(tuple(sources))
            outcome = self.sources[sources[0]]
            if isinstance(outcome, BaseException):
                raise outcome
            return [outcome]

        monkeypatch.setattr(release.sbom, "sbom_for_image", sbom_for_image)
        monkeypatch.setattr(release.record, "inspect_image", lambda c, ref: record.ImageInfo(
            ref=ref, id=BASE_ID if "base" in ref else ref, diff_ids=DIFF_IDS if "base" not in ref else DIFF_IDS[:1],
            size=1000))
        monkeypatch.setattr(release.record, "builder_info", lambda c=None: dict(BUILDER))
        monkeypatch.setattr(release, "relabel_in_engine", lambda c, config, labels, epoch: LABELLED_ID)
        monkeypatch.setattr(release.audit, "audit", audit_one)
        monkeypatch.setattr(release.upload, "describe", lambda c, image, pool=None: upload.Image(b"{}", BLOBS))
        self.records = tmp_path / "records"
        self.variant = manifest.load().variant("runtime")

    def build(self, checks=PASSED, audit_sources=release.AUDIT_SOURCES) -> dict:
        built = types.SimpleNamespace(variant=self.variant, image_id=BUILT_ID, refs=TAGS, facts=FACTS, config=b"{}")
        labelled, path = release.record_build(None, built, checks, self.records, quiet=True,  # type: ignore[arg-type]
                                              audit_sources=audit_sources)
        assert labelled == LABELLED_ID
        return record.load_record(path)


def test_a_verified_build_records_the_audit_and_writes_the_audited_sbom(monkeypatch, tmp_path):
    stand = Stand(monkeypatch, tmp_path)
    rec = stand.build()
    assert stand.audited == [("ubuntu",), ("python",)]
    block = rec["audit"]
    assert block["sources"]["ubuntu"] == {
        "checked": True, "why": "dpkg's packages against noble-updates, noble-security", "count": 1,
        "findings": [{"package": "libc6", "installed": "2.39-0ubuntu8", "fixed": "2.39-0ubuntu8.12",
                      "where": "noble-security", "ids": ["CVE-2024-2961"]}]}
    assert block["sources"]["python"] == {"checked": False, "why": "pip-audit is not installed", "count": 0,
                                          "findings": []}
    assert block["at"].endswith("Z")
    assert block["sbom"]["path"] == "runtime-2a3b4c5d6e7f.audit.cdx.json" and block["sbom"]["version"] == 2
    audited = stand.records / block["sbom"]["path"]
    assert hashlib.sha256(audited.read_bytes()).hexdigest() == block["sbom"]["sha256"]
    sbom.validate(audited.read_text())
    built_time = json.loads((stand.records / rec["sbom"]["path"]).read_text())
    document = json.loads(audited.read_text())
    assert document["serialNumber"] == built_time["serialNumber"] and "vulnerabilities" not in built_time
    assert [v["id"] for v in document["vulnerabilities"]] == ["CVE-2024-2961"]
    assert rec["sbom"]["sha256"] == hashlib.sha256((stand.records / rec["sbom"]["path"]).read_bytes()).hexdigest()
    assert rec["checks"][1]["warn"] is True and rec["verified"] is True


def test_the_label_digest_is_the_same_with_or_without_the_audit(monkeypatch, tmp_path):
    stand = Stand(monkeypatch, tmp_path)
    with_audit = stand.build()
    without = stand.build(audit_sources=())
    assert without["audit"] is None
    assert record.record_digest(with_audit) == record.record_digest(without)


def test_the_record_and_sbom_carry_what_a_push_uploads(monkeypatch, tmp_path):
    """Each layer's blob in both; the manifest digest in the record only, computed for the labelled
    config (the one pushed) and outside the label digest, which that config carries."""
    stand = Stand(monkeypatch, tmp_path)
    rec = stand.build(audit_sources=())
    assert rec["registry"]["blobs"] == [{"digest": b.digest, "size": b.size} for b in BLOBS]
    assert rec["registry"]["compression"] == blobs.scheme()
    labels = record.attachment_labels(rec)
    assert rec["registry"]["digest"] == blobs.digest_of(blobs.manifest(with_labels(b"{}", labels), BLOBS))
    assert record.record_digest({**rec, "registry": {**rec["registry"], "digest": "sha256:" + "0" * 64}}) \
        == labels[record.LABEL_RECORD]


def test_no_audit_when_verify_failed_or_was_skipped(monkeypatch, tmp_path):
    stand = Stand(monkeypatch, tmp_path)
    assert stand.build(checks=[CheckResult("hygiene", False, "apt lists")])["audit"] is None
    assert stand.build(checks=[])["audit"] is None
    assert stand.audited == []


@pytest.mark.parametrize("error", [
    audit.Unavailable("cannot fetch http://archive.ubuntu.com/ubuntu/dists/noble-updates/InRelease"),
    UserError("manifest key os.bootstrap.keyring.url: cannot fetch it"),
    FileNotFoundError(2, "No such file or directory", "gpgv"),
    ValueError("not a Packages index"),
    engine.APIError("500 Server Error"),
])
def test_an_audit_that_breaks_is_not_checked_and_the_build_goes_on(monkeypatch, tmp_path, error):
    stand = Stand(monkeypatch, tmp_path, sources={"ubuntu": error, "python": findings()[1]})
    rec = stand.build()
    ubuntu = rec["audit"]["sources"]["ubuntu"]
    assert ubuntu["checked"] is False and ubuntu["count"] == 0
    assert ubuntu["why"].startswith(f"the audit stopped: {type(error).__name__}")
    assert rec["audit"]["sbom"] is not None and rec["verified"] is True


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), cli.Terminated()])
def test_an_interrupt_during_the_audit_still_stops_the_build(monkeypatch, tmp_path, interrupt):
    stand = Stand(monkeypatch, tmp_path, sources={"ubuntu": interrupt})
    with pytest.raises(type(interrupt)):
        stand.build()
    assert not list(stand.records.glob("*.record.json"))


class FakeEngine:
    """An engine holding one image with the given labels."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels

    def image_exists(self, image):
        return True

    def image_id(self, image):
        return LABELLED_ID

    def run_config(self, image):
        return {"Labels": self.labels}


def test_audit_sbom_writes_the_next_version_of_an_earlier_builds_sbom(monkeypatch, tmp_path, capsys):
    text = render(inventory())
    records = tmp_path / "records"
    digest = sbom.write(text, records / sbom.file_name("runtime", text))
    fake = FakeEngine({record.LABEL_SBOM: digest, "pytorch-cuda.variant": "runtime"})
    monkeypatch.setattr(engine, "connect", lambda layer_source="auto": fake)
    monkeypatch.setattr(audit, "audit", lambda c, image, m, sources, mirror=None: findings())
    out = tmp_path / "out" / "runtime.audit.cdx.json"
    code = cli.main(["audit", "pytorch-cuda:x", "--sbom", str(out), "--records", str(records)])
    assert code == 2  # python was not checked
    document = json.loads(out.read_text())
    assert document["version"] == 2 and document["serialNumber"] == json.loads(text)["serialNumber"]
    assert document["vulnerabilities"][0]["affects"][0]["ref"].startswith("pkg:deb/ubuntu/libc6@2.39-0ubuntu8?")
    assert f"wrote {out}: version 2" in capsys.readouterr().err


def test_audit_sbom_needs_the_builds_own_sbom(monkeypatch, tmp_path):
    records = tmp_path / "records"
    text = render(inventory())
    digest = hashlib.sha256(text.encode()).hexdigest()
    fake = FakeEngine({record.LABEL_SBOM: digest, "pytorch-cuda.variant": "runtime"})
    with pytest.raises(UserError, match="is not at"):
        release.build_sbom_of(fake, "img", records)  # type: ignore[arg-type]
    (records / sbom.file_name("runtime", text)).parent.mkdir(parents=True)
    (records / sbom.file_name("runtime", text)).write_text(text + " ")
    with pytest.raises(UserError, match="is not the SBOM of img"):
        release.build_sbom_of(fake, "img", records)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="no build record or SBOM label"):
        release.build_sbom_of(FakeEngine({}), "img", records)  # type: ignore[arg-type]
