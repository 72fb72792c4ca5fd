"""Record and push: turn a built, verified image into something a team can pull and trust.

record_build(): SBOM + build record written side by side, and attached to the image as labels
that carry their digests (the labelled image shares every layer with the verified one; only the
config gains two labels); with a security audit once verify passed, summarized in the record
(outside its label digest) and added to the SBOM's next version in its own file. push(): only an
image whose record shows every check passed, then pull it back by digest and check the ID.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import subprocess
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import docker.errors
from debian.arfile import ArError

from builder import audit, blobs, engine, record, registry, sbom, upload
from builder.engine import Engine
from builder.errors import BuildFailed, UserError
from builder.manifest import Manifest
from builder.pipeline import Built
from builder.normalize import with_labels
from builder.rewrite import relabel_in_engine
from builder.tags import full_tag, observed_versions

AUDIT_SOURCES = ("ubuntu", "python")
# What the audit's network, tools, parsing and engine calls can raise. Any of them makes that
# source "not checked", never a failed build. Not an interrupt or termination: those still stop
# the build and leave no tag.
AUDIT_ERRORS = (audit.Unavailable, UserError, BuildFailed, OSError, ValueError, LookupError, TypeError,
                AttributeError, RuntimeError, EOFError, lzma.LZMAError, tarfile.TarError, subprocess.SubprocessError,
                ArError, docker.errors.DockerException)


def run_audit(c: Engine, image: str, manifest: Manifest, sources: tuple[str, ...] = AUDIT_SOURCES,
              mirror: str | None = None) -> list[audit.Result]:
    """audit.audit, one source at a time; a source that breaks is "not checked" with the reason, so
    the audit informs a build and never fails it."""
    results = []
    for source in sources:
        try:
            results += audit.audit(c, image, manifest, (source,), mirror=mirror)
        except AUDIT_ERRORS as exc:
            results.append(audit.Result(source, False, f"the audit stopped: {type(exc).__name__}: {exc}"))
    return results


def audit_mirror(manifest: Manifest, mirror: str | None = None) -> str:
    """The Ubuntu archive the audit reads the pockets from (as audit.audit_ubuntu picks it)."""
    return (mirror or (manifest.os.get("bootstrap") or {}).get("mirror") or "").rstrip("/")


def write_audited_sbom(build_sbom: Path, results: list[audit.Result], path: Path, *, mirror: str,
                       at: datetime | None = None) -> dict[str, object]:
    """Write the build-time SBOM's next version with the findings (audited at ``at``, default now)
    to ``path``; the record's audit.sbom entry (path relative to the records directory, sha256,
    BOM version)."""
    path = Path(path)
    text = sbom.audited(Path(build_sbom).read_text(), results, mirror=mirror, at=at or datetime.now(timezone.utc))
    digest = sbom.write(text, path)
    version = json.loads(text)["version"]
    return {"path": path.name, "sha256": digest, "format": "CycloneDX 1.6 JSON", "version": version}


def audit_block(results: list[audit.Result], at: datetime, build_sbom: Path, variant: str, image_id: str,
                records_dir: Path, mirror: str, quiet: bool = False) -> dict[str, object]:
    """The record's `audit` value: the summary, and the audited SBOM next to the record (null when
    it cannot be written; that does not fail the build either)."""
    block = audit.summary(results, at)
    path = Path(records_dir) / sbom.audited_file_name(variant, record.short_id(image_id))
    try:
        block["sbom"] = write_audited_sbom(build_sbom, results, path, mirror=mirror, at=at)
    except (BuildFailed, OSError, ValueError) as exc:
        print(f"the audited SBOM was not written: {exc}", file=sys.stderr)
    if not quiet:
        states = [f"{r.source} {len(r.findings)} finding(s)" if r.checked else f"{r.source} not checked ({r.why})"
                  for r in results]
        print("audit: " + "; ".join(states) + (f"; wrote {path}" if block["sbom"] else ""))
    return block


def build_sbom_of(c: Engine, image: str, records_dir: Path) -> Path:
    """The build-time SBOM of an image built earlier, from its record, else from its SBOM label;
    checked against the digest they give (so a findings file is never added to another image's SBOM)."""
    image_id = c.image_id(image)
    rec = record.find_record(records_dir, image_id)
    labels = c.run_config(image).get("Labels") or {}
    if rec is not None and rec.get("sbom"):
        path, digest = Path(records_dir) / rec["sbom"]["path"], rec["sbom"]["sha256"]
    elif labels.get(record.LABEL_SBOM) and labels.get("pytorch-cuda.variant"):
        digest = labels[record.LABEL_SBOM]
        path = Path(records_dir) / f"{labels['pytorch-cuda.variant']}-{digest[:12]}.cdx.json"
    else:
        raise UserError(f"{image} has no build record or SBOM label to find its SBOM by under {records_dir}: "
                        f"give --records DIR where it was built, or build it with "
                        f"`{' '.join(filter(None, ('python build.py build', labels.get('pytorch-cuda.variant'))))}`")
    if not path.is_file():
        raise UserError(f"the SBOM of {image} is not at {path}: give --records DIR where it was built")
    if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise UserError(f"{path} is not the SBOM of {image} (its sha256 differs from what the image's record "
                        f"or label names)")
    return path


def record_build(c: Engine, built: Built, checks: list, records_dir: Path = record.RECORDS,
                 quiet: bool = False, audit_sources: tuple[str, ...] = ()) -> tuple[str, Path]:
    """Write the SBOM and record and label the image with their digests; (labelled image ID, record path).
    With audit_sources, once every check passed, audit the image and put what it found into the
    record and the SBOM's next version (see the module doc); the audit never fails the build.

    Nothing is tagged here: the caller tags the labelled image last, once it knows the checks passed.
    """
    variant, manifest = built.variant, built.variant.manifest
    tag = full_tag(observed_versions(built.facts), variant.flavor)
    if not quiet:
        print("compressing the layers as a push will (their blobs and the registry digest go into the record)",
              flush=True)
    with blobs.compressors() as pool:  # layers compressed before (a flavor's runtime part) come from the index
        layer_blobs = upload.describe(c, built.image_id, pool=pool).blobs
    scheme = blobs.scheme()
    sbom_file = sbom.sbom_for_image(c, built.image_id, variant=variant.name, name=manifest.name, tag=tag,
                                    source_date_epoch=manifest.source_date_epoch, locks=record.lock_files(variant),
                                    records_dir=records_dir, layer_blobs=layer_blobs, blob_scheme=scheme)
    audited, audited_at = None, datetime.now(timezone.utc)
    if audit_sources and checks and all(r.ok for r in checks):
        audited = run_audit(c, built.image_id, manifest, audit_sources)
    rec = record.make_record(variant, image=record.inspect_image(c, built.image_id),
                             base=record.inspect_image(c, manifest.base_ref), tags=built.refs, facts=built.facts,
                             checks=checks, sbom=sbom_file, builder=record.builder_info(c),
                             layer_blobs=layer_blobs, blob_scheme=scheme)
    labels = record.attachment_labels(rec)
    labelled = relabel_in_engine(c, built.config, labels, manifest.source_date_epoch)
    rec["registry"]["digest"] = blobs.digest_of(blobs.manifest(with_labels(built.config, labels), layer_blobs))
    if labelled != built.image_id:
        labelled_info = record.inspect_image(c, labelled)
        rec["image"]["id"], rec["sizes"]["image_bytes"] = labelled_info.id, labelled_info.size
        # the unlabelled image stays: it costs a config file, and an unchanged rebuild finds it
        # instead of normalizing 7 GB again
    if audited is not None:  # outside the label digest, so it is added after labelling
        rec["audit"] = audit_block(audited, audited_at, sbom_file[0], variant.name, rec["image"]["id"], records_dir,
                                   audit_mirror(manifest), quiet=quiet)
    path = record.write_record(rec, records_dir)
    if not quiet:
        print(f"recorded {path} and {sbom_file[0]}; {labelled} carries their digests")
    return labelled, path


def push(c: Engine, image: str, target: str, *, records_dir: Path = record.RECORDS,
         quiet: bool = False, auth_config: dict | None = None, latest: bool = False,
         compression: blobs.Compression = blobs.GZIP) -> dict[str, str]:
    """Push every tag of a verified image to HOST[:PORT]/NAMESPACE, pull it back by digest, record it."""
    if compression is blobs.ZSTD and c.info.major < 23:
        raise UserError(f"--compression zstd: Docker {c.info.server_version} cannot pull zstd layers (Docker 23 "
                        f"and later can), so the pull-back check after the push would fail. Nothing was pushed: "
                        f"push with gzip, or from an engine that pulls zstd")
    if not c.image_exists(image):
        raise UserError(f"no image {image} in the engine: build its variant first "
                        f"(`python build.py list` names them)")
    image_id = c.image_id(image)
    rec = record.find_record(records_dir, image_id)
    refusal = record.push_refusal(rec, (c.run_config(image).get("Labels") or {}).get("pytorch-cuda.variant"))
    if refusal:
        raise UserError(f"refusing to push {image} ({image_id[:19]}): {refusal}. Nothing was pushed.")
    host, namespace = registry.parse_registry(target)
    auth_config = auth_config or engine.credentials(host)  # as the Docker CLI finds them, for every request
    refs = list(rec["tags"])
    if latest:
        refs.append(f"{refs[0].rpartition(':')[0]}:latest")
    auth = (auth_config["username"], auth_config["password"]) if auth_config else None
    by_repo: dict[str, list[str]] = {}
    for remote in (registry.remote_ref(ref, host, namespace) for ref in refs):
        repo, tag = registry.split_ref(remote)
        by_repo.setdefault(repo, []).append(tag)
    digests: dict[str, str] = {}
    first = ""  # the repository pushed first: the others mount its blobs
    with blobs.compressors() as pool:
        for repo, repo_tags in by_repo.items():
            path = repo.split("/", 1)[1]
            pushed = upload.push(c, image_id, host, path, repo_tags, auth=auth, pool=pool, mount_from=first,
                                 compression=compression, say=(lambda line: None) if quiet else print)
            first = first or path
            digests |= {f"{repo}:{tag}": pushed.digest for tag in repo_tags}
            if not quiet:
                print(f"pushed {repo}@{pushed.digest} ({', '.join(repo_tags)}): {pushed.uploaded} blobs uploaded "
                      f"({pushed.bytes_sent / 1e9:.2f} GB), {pushed.skipped} already there, {pushed.seconds} s")
    for remote, digest in digests.items():
        repo = remote.rpartition(":")[0]
        # the engine still holds the layers, so pulling back proves the config; the registry's
        # own API proves every blob is there
        problems = registry.remote_problems(host, repo.split("/", 1)[1], digest, expected_image_id=image_id, auth=auth)
        if problems:
            raise BuildFailed(f"{remote} is incomplete in the registry: " + "; ".join(problems))
        pulled = registry.pull_back(c, f"{repo}@{digest}", expected_image_id=image_id, auth_config=auth_config)
        rec = record.add_push(rec, remote, digest, pulled)
        c.untag([f"{repo}@{digest}"])
        if not quiet:
            print(f"{remote} → {digest}; pulled back by digest as {pulled[:19]}")
    record.write_record(rec, records_dir)
    return digests
