"""The audited SBOM: the build-time SBOM's next version (same serial number, version + 1) with the
audit's findings as CycloneDX 1.6 vulnerabilities, valid against the schema; the build-time
document itself is never changed."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from builder import audit, sbom
from builder.errors import BuildFailed
from tests.unit.test_sbom import inventory, render

MIRROR = "http://archive.ubuntu.com/ubuntu"
AT = datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc)
LIBC = "pkg:deb/ubuntu/libc6@2.39-0ubuntu8?arch=amd64&distro=ubuntu-24.04"
EXTRA = (sbom.DebPackage("openssh-client", "1:9.6p1-3ubuntu13", "amd64"),
         sbom.DebPackage("openssh-server", "1:9.6p1-3ubuntu13", "amd64"))


def results() -> list[audit.Result]:
    F = audit.Finding
    return [
        audit.Result("ubuntu", True, f"dpkg's packages against noble-updates, noble-security at {MIRROR}", [
            F("ubuntu", "libc6", "2.39-0ubuntu8", "2.39-0ubuntu8.12", "noble-security", ["CVE-2024-2961", "CVE-2024-33599"]),
            F("ubuntu", "openssh-client", "1:9.6p1-3ubuntu13", "1:9.6p1-3ubuntu13.5", "noble-security", ["CVE-2024-6387"]),
            F("ubuntu", "openssh-server", "1:9.6p1-3ubuntu13", "1:9.6p1-3ubuntu13.5", "noble-security", ["CVE-2024-6387"]),
            F("ubuntu", "tzdata", "2024a-2ubuntu1", "2025b-0ubuntu0.24.04", "noble-updates", [],
              "no changelog found in 1 .deb(s) of source tzdata"),
        ]),
        audit.Result("python", True, "the image's Python distributions with pip-audit", [
            F("python", "numpy", "2.5.5", "2.5.6, 2.6.1", "GHSA-aaaa-bbbb-cccc", ["GHSA-aaaa-bbbb-cccc", "CVE-2026-1234"]),
            F("python", "jsonschema", "4.26.0", "", "PYSEC-2026-7", ["PYSEC-2026-7"]),
        ]),
    ]


@pytest.fixture(scope="module")
def documents() -> tuple[str, dict, dict]:
    text = render(inventory(extra_deb=EXTRA))
    audited = sbom.audited(text, results(), mirror=MIRROR, at=AT)
    return text, json.loads(text), json.loads(audited)


def vulns(document: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for v in document["vulnerabilities"]:
        found.setdefault(v["id"], []).append(v)
    return found


def test_it_is_the_next_version_of_the_same_bom(documents):
    text, before, after = documents
    assert "vulnerabilities" not in before and before["version"] == 1
    assert after["serialNumber"] == before["serialNumber"] and after["version"] == 2
    assert after["components"] == before["components"] and after["dependencies"] == before["dependencies"]
    assert after["metadata"]["timestamp"].startswith("2026-12-05T09:00:00")
    assert render(inventory(extra_deb=EXTRA)) == text  # the build-time document is not touched


def test_each_cve_of_an_ubuntu_finding_affects_its_component_with_the_fixed_version(documents):
    _, _, after = documents
    [v] = vulns(after)["CVE-2024-2961"]
    assert v["source"] == {"name": "Ubuntu noble-security", "url": f"{MIRROR}/dists/noble-security/"}
    assert v["affects"] == [{"ref": LIBC, "versions": [{"version": "2.39-0ubuntu8", "status": "affected"},
                                                      {"version": "2.39-0ubuntu8.12", "status": "unaffected"}]}]
    assert "2.39-0ubuntu8.12" in v["recommendation"] and "2.39-0ubuntu8.12" in v["analysis"]["detail"]
    assert v["analysis"]["response"] == ["update"]
    assert [x["id"] for x in vulns(after)["CVE-2024-33599"]] == ["CVE-2024-33599"]


def test_one_cve_in_two_packages_is_one_vulnerability_affecting_both(documents):
    _, _, after = documents
    [v] = vulns(after)["CVE-2024-6387"]
    assert sorted(a["ref"].split("@")[0] for a in v["affects"]) == ["pkg:deb/ubuntu/openssh-client",
                                                                    "pkg:deb/ubuntu/openssh-server"]


def test_a_finding_without_ids_gets_a_descriptive_id_and_says_why(documents):
    _, _, after = documents
    [v] = vulns(after)["tzdata=2025b-0ubuntu0.24.04"]
    assert v["source"]["name"] == "Ubuntu noble-updates" and v["detail"].startswith("no changelog found")


def test_a_python_advisory_is_listed_under_its_cve_with_the_advisory_as_source(documents):
    _, _, after = documents
    [v] = vulns(after)["CVE-2026-1234"]
    assert v["source"] == {"name": "Python advisory GHSA-aaaa-bbbb-cccc",
                           "url": "https://osv.dev/vulnerability/GHSA-aaaa-bbbb-cccc"}
    assert [r["id"] for r in v["references"]] == ["GHSA-aaaa-bbbb-cccc"]
    [affects] = v["affects"]
    assert affects["ref"] == "pkg:pypi/numpy@2.5.5"
    assert [x["version"] for x in affects["versions"] if x["status"] == "unaffected"] == ["2.5.6", "2.6.1"]
    [unfixed] = vulns(after)["PYSEC-2026-7"]
    assert unfixed["analysis"]["response"] == ["can_not_fix"] and "recommendation" not in unfixed
    assert "no fixed version" in unfixed["analysis"]["detail"]


def test_which_sources_were_checked_is_said_in_the_metadata(documents):
    _, _, after = documents
    text = render(inventory())
    unchecked = json.loads(sbom.audited(text, [audit.Result("python", False, "pip-audit is not installed")],
                                        mirror=MIRROR, at=AT))
    props = {p["name"]: p["value"] for p in unchecked["metadata"]["properties"]}
    assert props["pytorch-cuda:audit:python"] == "not checked: pip-audit is not installed"
    assert "vulnerabilities" not in unchecked or unchecked["vulnerabilities"] == []
    props = {p["name"]: p["value"] for p in after["metadata"]["properties"]}
    assert props["pytorch-cuda:audit:ubuntu"].startswith("4 finding(s): dpkg's packages")


def test_the_audited_document_validates_and_is_the_same_for_the_same_findings(documents):
    text, _, after = documents
    again = sbom.audited(text, results(), mirror=MIRROR, at=AT)
    sbom.validate(again)
    assert json.loads(again) == after
    assert sbom.audited_file_name("runtime", "1a2b3c4d5e6f") == "runtime-1a2b3c4d5e6f.audit.cdx.json"


def test_a_document_that_is_not_an_sbom_is_refused():
    with pytest.raises(BuildFailed):
        sbom.audited('{"bomFormat": "CycloneDX", "specVersion": "1.6", "version": "x"}', results(),
                     mirror=MIRROR, at=AT)
