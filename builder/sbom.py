"""A CycloneDX JSON SBOM of a built image: every Python distribution and every dpkg package in it.

The package lists come from running the image (builder/inside/inventory.py), so the SBOM says
what is there; the sha256 hashes of Python packages come from the hash locks that
`pip install --require-hashes` enforced (every hash the lock accepts for that version: pip
installed a file matching one of them). Packages the lock does not cover (pip itself, the
selftest probe) are listed without hashes.

Same image, same bytes: components are sorted, every bom-ref is a purl, the timestamp is
SOURCE_DATE_EPOCH, and the serial number is a uuid5 of the image's layer diff IDs. It is derived
from the layers rather than the image ID so that adding the SBOM's digest as a label (which
changes the config, and so the ID) leaves the SBOM valid for the labelled image.

What an audit finds changes over time while the image does not, so findings never go into that
file: audited() writes the next version of the same BOM (same serialNumber, version + 1) with a
`vulnerabilities` section, as its own file next to the record.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cyclonedx.model import HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.impact_analysis import ImpactAnalysisAffectedStatus, ImpactAnalysisResponse
from cyclonedx.model.vulnerability import (BomTarget, BomTargetVersionRange, Vulnerability, VulnerabilityAnalysis,
                                           VulnerabilityReference, VulnerabilitySource)
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

from builder.audit import CVE, Finding, Result
from builder.blobs import Blob
from builder.engine import Engine
from builder.errors import BuildFailed

SCRIPT = Path(__file__).parent / "inside" / "inventory.py"
SCHEMA_VERSION = SchemaVersion.V1_6
SERIAL_NAMESPACE = uuid.UUID("5f0c7b8e-3c1d-5a4e-9f7b-2a6d1e0c4b93")  # this project's uuid5 namespace
HASH_LINE = re.compile(r"--hash=sha256:([0-9a-f]{64})")
PROP = "pytorch-cuda"  # prefix of this project's CycloneDX property names
AUDITED_SUFFIX = ".audit.cdx.json"
ADVISORIES = "https://osv.dev/vulnerability/"  # where a Python advisory id (PYSEC, GHSA) or its CVE alias is published


@dataclass(frozen=True, order=True)
class PythonPackage:
    name: str
    version: str


@dataclass(frozen=True, order=True)
class DebPackage:
    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class Inventory:
    """What an image contains, as the image itself reports it."""

    python: tuple[PythonPackage, ...]
    deb: tuple[DebPackage, ...]
    os_id: str
    os_version: str


def normalize_name(name: str) -> str:
    """PEP 503 name: how the lock, pip and the pypi purl spell a distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_hashes(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """normalized name → (version, sorted sha256 hex digests) of every package in a uv/pip hash lock."""
    found: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement = line.split(";")[0].split("\\")[0].strip()
            if "==" not in requirement:
                current = None
                continue
            name, version = (part.strip() for part in requirement.split("==", 1))
            current = normalize_name(name.split("[")[0])
            found[current] = (version, [])
        if current:
            found[current][1].extend(HASH_LINE.findall(line))
    return {name: (version, sorted(set(hashes))) for name, (version, hashes) in found.items()}


def parse_inventory(output: str) -> Inventory:
    """Read the INVENTORY line of builder/inside/inventory.py's output."""
    for line in output.splitlines():
        if line.startswith("INVENTORY "):
            data = json.loads(line[len("INVENTORY "):])
            break
    else:
        raise BuildFailed(f"the image did not report its packages:\n{output[-3000:]}")
    if data.get("deb_error"):
        raise BuildFailed(f"listing the image's dpkg packages failed: {data['deb_error']}")
    return Inventory(python=tuple(sorted(PythonPackage(p["name"], p["version"]) for p in data["python"])),
                     deb=tuple(sorted(DebPackage(p["name"], p["version"], p["arch"]) for p in data["deb"] or [])),
                     os_id=data["os"]["id"] or "unknown", os_version=data["os"]["version"] or "")


def inventory(c: Engine, image: str) -> Inventory:
    """Run the inventory script in the image (its own entrypoint and user, no network)."""
    result = c.run(image, ["python", "-c", SCRIPT.read_text()], network_disabled=True)
    if result.exit_code != 0:
        raise BuildFailed(f"image {image}: the package inventory exited {result.exit_code}:\n{result.output[-3000:]}")
    return parse_inventory(result.output)


def serial_number(diff_ids: Iterable[str]) -> uuid.UUID:
    return uuid.uuid5(SERIAL_NAMESPACE, "\n".join(diff_ids))


def python_component(package: PythonPackage, locked: dict[str, tuple[str, list[str]]]) -> Component:
    name = normalize_name(package.name)
    purl = PackageURL(type="pypi", name=name, version=package.version)
    version, hashes = locked.get(name, (None, []))
    properties = []
    if version == package.version and hashes:
        properties.append(Property(name=f"{PROP}:hashes", value="the hash lock's sha256 set for this version"))
    else:
        hashes = []
        why = "not in the hash lock" if version is None else f"the hash lock pins {version}"
        properties.append(Property(name=f"{PROP}:hashes", value=f"none: {why}"))
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version, purl=purl,
                     bom_ref=purl.to_string(),
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h) for h in hashes],
                     properties=properties)


def deb_component(package: DebPackage, os_id: str, os_version: str) -> Component:
    purl = PackageURL(type="deb", namespace=os_id, name=package.name, version=package.version,
                      qualifiers={"arch": package.arch, "distro": f"{os_id}-{os_version}"})
    return Component(type=ComponentType.LIBRARY, name=package.name, version=package.version, purl=purl,
                     bom_ref=purl.to_string())


def make_bom(inv: Inventory, *, name: str, tag: str, diff_ids: list[str], source_date_epoch: int,
             locks: Iterable[Path], builder_version: str = "0", layer_blobs: Iterable[Blob] = (),
             blob_scheme: str = "") -> Bom:
    """The SBOM of one image: root component = the image (name, version = its full tag).
    locks: every hash lock the venv was installed from (runtime's and each flavor layer's).
    layer_blobs: each layer's registry blob (builder/blobs.py, compressed as ``blob_scheme``
    says), what a push uploads. The manifest digest itself cannot be here: it names the config,
    which carries this SBOM's digest as a label; the build record has it."""
    locks = list(locks)
    locked: dict[str, tuple[str, list[str]]] = {}
    for lock in locks:
        locked.update(lock_hashes(lock))
    layer_props = [Property(name=f"{PROP}:layer-diff-id", value=d) for d in diff_ids]
    # "<diff id> <blob digest> <size>": CycloneDX sorts properties, so each names its layer
    layer_props += [Property(name=f"{PROP}:layer-blob", value=f"{b.diff_id} {b.digest} {b.size}") for b in layer_blobs]
    layer_props += [Property(name=f"{PROP}:blob-compression", value=blob_scheme)] if blob_scheme else []
    root = Component(type=ComponentType.CONTAINER, name=name, version=tag, bom_ref=f"image:{name}:{tag}",
                     properties=layer_props)
    components = [python_component(p, locked) for p in inv.python]
    components += [deb_component(p, inv.os_id, inv.os_version) for p in inv.deb]
    timestamp = datetime.datetime.fromtimestamp(source_date_epoch, datetime.timezone.utc)
    metadata = BomMetaData(component=root, timestamp=timestamp,
                           properties=[Property(name=f"{PROP}:lock", value=lock.name) for lock in locks])
    metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="pytorch-cuda-images builder",
                                            version=builder_version, bom_ref="tool:pytorch-cuda-images"))
    bom = Bom(components=components, metadata=metadata, serial_number=serial_number(diff_ids))
    bom.register_dependency(root, components)
    return bom


def to_json(bom: Bom) -> str:
    """Serialize and validate against the CycloneDX JSON schema; an invalid SBOM is never written."""
    text = JsonV1Dot6(bom).output_as_string(indent=2) + "\n"
    validate(text)
    return text


def validate(text: str) -> None:
    error = JsonStrictValidator(SCHEMA_VERSION).validate_str(text)
    if error is not None:
        detail = getattr(error.data, "message", None) or str(error)[:500]
        where = "/".join(map(str, getattr(error.data, "absolute_path", []) or []))
        raise BuildFailed(f"the SBOM does not validate against CycloneDX {SCHEMA_VERSION.to_version()}: "
                          f"{detail}{f' (at {where})' if where else ''}")


def write(text: str, path: Path) -> str:
    """Write the SBOM; return its sha256 (what the build record and the image label point to)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return hashlib.sha256(text.encode()).hexdigest()


def file_name(variant: str, text: str) -> str:
    """`<variant>-<sha256 prefix>.cdx.json`: named by content, not by image ID, because labelling the
    image with this SBOM's digest changes the image ID but not the SBOM."""
    return f"{variant}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.cdx.json"


def sbom_for_image(c: Engine, image: str, *, variant: str, name: str, tag: str,
                   source_date_epoch: int, locks: Iterable[Path], records_dir: Path,
                   builder_version: str = "0", layer_blobs: Iterable[Blob] = (),
                   blob_scheme: str = "") -> tuple[Path, str]:
    """Inventory the image and write its SBOM into records_dir; return (path, sha256), which is
    what record.make_record takes as `sbom`."""
    diff_ids = c.diff_ids(image)
    bom = make_bom(inventory(c, image), name=name, tag=tag, diff_ids=diff_ids,
                   source_date_epoch=source_date_epoch, locks=locks, builder_version=builder_version,
                   layer_blobs=layer_blobs, blob_scheme=blob_scheme)
    text = to_json(bom)
    path = Path(records_dir) / file_name(variant, text)
    return path, write(text, path)


# --- the audited version ------------------------------------------------------------------------

def audited_file_name(variant: str, short_id: str) -> str:
    """`<variant>-<short image id>.audit.cdx.json`, next to the record of the same name."""
    return f"{variant}-{short_id}{AUDITED_SUFFIX}"


def component_key(kind: str, name: str, version: str) -> tuple[str, str, str]:
    return kind, normalize_name(name) if kind == "pypi" else name, version


def component_refs(bom: Bom) -> dict[tuple[str, str, str], str]:
    """(purl type, name, version) → bom-ref of every package component."""
    return {component_key(c.purl.type, c.purl.name, c.purl.version or ""): str(c.bom_ref.value)
            for c in bom.components if c.purl is not None}


def vulnerability_ids(f: Finding) -> list[str]:
    """The ids a finding is listed under: each CVE id of an Ubuntu finding (or, with none, the
    package and the version that fixes it); a Python advisory's CVE alias, else its own id."""
    if f.source == "ubuntu":
        return list(f.ids) or [f"{f.package}={f.fixed}"]
    return [next((i for i in f.ids if CVE.fullmatch(i)), f.where)]


def vulnerability_source(f: Finding, mirror: str) -> VulnerabilitySource:
    if f.source == "ubuntu":
        return VulnerabilitySource(name=f"Ubuntu {f.where}", url=XsUri(f"{mirror.rstrip('/')}/dists/{f.where}/"))
    return VulnerabilitySource(name=f"Python advisory {f.where}", url=XsUri(f"{ADVISORIES}{f.where}"))


def fixed_in(f: Finding) -> str:
    if not f.fixed:
        return f"{f.package} {f.installed}: no fixed version published yet"
    return f"{f.package} {f.installed} -> {f.fixed}" + (f" ({f.where})" if f.source == "ubuntu" else "")


def vulnerabilities(findings: Iterable[Finding], refs: dict[tuple[str, str, str], str],
                    mirror: str) -> list[Vulnerability]:
    """One CycloneDX vulnerability per id and source, affecting each component it was found in,
    with the installed version affected and the fixed one not."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        for vid in vulnerability_ids(f):
            groups.setdefault((vid, f.where), []).append(f)
    result = []
    for (vid, where), group in sorted(groups.items()):
        affects = []
        for f in group:
            ref = refs.get(component_key("deb" if f.source == "ubuntu" else "pypi", f.package, f.installed))
            if ref is None:
                continue  # not in the SBOM (not expected: both read the same image)
            versions = [BomTargetVersionRange(version=f.installed, status=ImpactAnalysisAffectedStatus.AFFECTED)]
            versions += [BomTargetVersionRange(version=v.strip(), status=ImpactAnalysisAffectedStatus.UNAFFECTED)
                         for v in f.fixed.split(",") if v.strip()]
            affects.append(BomTarget(ref=ref, versions=versions))
        others = sorted({i for f in group for i in [f.where, *f.ids] if i != vid and f.source == "python"})
        notes = sorted({f.note for f in group if f.note})
        fixable = [f for f in group if f.fixed]
        result.append(Vulnerability(
            bom_ref=f"vulnerability:{where}:{vid}", id=vid, source=vulnerability_source(group[0], mirror),
            references=[VulnerabilityReference(id=i, source=VulnerabilitySource(name="OSV",
                                                                                url=XsUri(f"{ADVISORIES}{i}")))
                        for i in others],
            detail="; ".join(notes) or None,
            recommendation=("upgrade: " + "; ".join(fixed_in(f) for f in fixable)) if fixable else None,
            analysis=VulnerabilityAnalysis(
                responses=[ImpactAnalysisResponse.UPDATE if fixable else ImpactAnalysisResponse.CAN_NOT_FIX],
                detail="; ".join(fixed_in(f) for f in group)),
            affects=affects))
    return result


def audited(text: str, results: Iterable[Result], *, mirror: str, at: datetime.datetime) -> str:
    """The next version of an SBOM (text: its JSON) with an audit's findings: same serialNumber,
    version + 1, timestamp `at`, a `vulnerabilities` section, and per source whether it was
    checked (a source not checked says so: no vulnerabilities from it does not mean none).
    mirror: the Ubuntu archive the pockets were read from. Validated like the build-time SBOM."""
    validate(text)  # only a valid document is read back
    try:
        bom = Bom.from_json(json.loads(text))  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildFailed(f"the SBOM to add the audit to cannot be read: {exc}") from None
    results = list(results)
    bom.version = bom.version + 1
    bom.metadata.timestamp = at
    for r in results:
        state = f"{len(r.findings)} finding(s)" if r.checked else "not checked"
        bom.metadata.properties.add(Property(name=f"{PROP}:audit:{r.source}", value=f"{state}: {r.why}"))
    for v in vulnerabilities([f for r in results for f in r.findings], component_refs(bom), mirror):
        bom.vulnerabilities.add(v)
    return to_json(bom)
