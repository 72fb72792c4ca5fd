"""Build records: one JSON file per built image saying what went in, what came out, and whether it passed.

`push` trusts an image only through its record (verified: every check passed), so the record
is validated against manifests/record.schema.json whenever it is written or read, and a record
that does not validate is a UserError naming the key. Records and SBOMs sit side by side under
the records directory (default build/records/): a record is named after the variant and the short
image ID, its SBOM after the variant and the SBOM's own digest (see builder/sbom.py).

The record's digest for an image label (record_digest) leaves out the image ID, the builder
block, the audit and the push log: adding the label changes the image ID, the builder block holds
the time and checkout of this run (a label that changed with them would break "same inputs, same
image ID"), an audit's findings change as advisories are published while the image does not, and
pushes happen later. Everything else, inputs, layers, facts and check results, is covered; of a
check, its id and whether it passed (a WARN passes: its warning depends on when verify ran).
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from builder.blobs import Blob
from builder.engine import Engine
from builder.errors import UserError
from builder.manifest import ROOT, Variant
from builder.render import images_dir

SCHEMA = ROOT / "manifests" / "record.schema.json"
RECORDS = ROOT / "build" / "records"
RECORD_VERSION = 1
RECORD_SUFFIX = ".record.json"
LABEL_RECORD = "pytorch-cuda.record.sha256"
LABEL_SBOM = "pytorch-cuda.sbom.sha256"
# What record_digest leaves out (see above); also each check's free-text detail, which can name
# per-run values (a container's fresh host key, say): the digest covers each check's id and result.
# The registry digest names the labelled config, so it cannot be under the label either.
NOT_IN_DIGEST = (("image", "id"), ("base", "image_id"), ("builder",), ("pushes",), ("audit",), ("registry", "digest"))


@dataclass(frozen=True)
class ImageInfo:
    """What the engine says about an image: its ID (the config digest), layers and size."""

    ref: str
    id: str
    diff_ids: list[str]
    size: int


def inspect_image(c: Engine, ref: str) -> ImageInfo:
    attrs = c.inspect(ref)
    return ImageInfo(ref=ref, id=c.image_id(ref), diff_ids=list(attrs["RootFS"].get("Layers") or []),
                     size=int(attrs.get("Size") or 0))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it, so records compare across checkouts."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _file(path: Path) -> dict[str, str]:
    return {"path": shown(path), "sha256": sha256_file(path)}


def manifest_entries(variant: Variant) -> dict[str, dict[str, Any]]:
    """Every manifest entry this variant's image is made from, each with the sha256 of its canonical JSON:
    the shared ones, its CUDA build, and every flavor whose stage or additions it contains."""
    m = variant.manifest.data
    picked = {
        "name": ("name", m["name"]),
        "source_date_epoch": ("source_date_epoch", m["source_date_epoch"]),
        "os": ("os", m["os"]),
        "python": ("python", m["python"]),
        "user": ("user", m["user"]),
        "cuda": (f"cuda.{variant.cuda.key}", m["cuda"][variant.cuda.key]),
        "python_packages": ("python_packages", m["python_packages"]),
    }
    for flavor in dict.fromkeys([*variant.lineage(), *variant.contents()]):
        picked[f"flavors.{flavor}"] = (f"flavors.{flavor}", m["flavors"][flavor])
    return {name: {"key": key, "sha256": hashlib.sha256(canonical(value)).hexdigest(), "value": value}
            for name, (key, value) in picked.items()}


def lock_files(variant: Variant) -> list[Path]:
    """The hash locks the image's venv is installed from: runtime's, then each flavor layer's."""
    return [variant.lock_path(layer) for layer in variant.python_layers()]


def inputs(variant: Variant) -> dict[str, Any]:
    rendered = images_dir(variant.manifest) / variant.name
    files = sorted(p for p in rendered.rglob("*") if p.is_file()) if rendered.is_dir() else []
    missing = [shown(p) for p in lock_files(variant) if not p.exists()]
    if missing:
        raise UserError(f"variant {variant.name}: no lock file {', '.join(missing)} to record")
    return {"manifest": _file(variant.manifest.path), "locks": [_file(p) for p in lock_files(variant)],
            "files": [_file(p) for p in files], "entries": manifest_entries(variant)}


def _git(*args: str) -> str | None:
    try:
        # safe.directory: a user building from a checkout someone else owns (a CI runner's docker
        # group user, say) reads the same commit; git refuses such a repository otherwise
        proc = subprocess.run(["git", "-c", f"safe.directory={ROOT}", "-C", str(ROOT), *args],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


# what a build of an image reads from the checkout (the build context's sources)
IMAGE_SOURCES = ("manifests", "templates", "selftest", "images")


def source_revision() -> str:
    """The commit an image is built from, for its org.opencontainers.image.revision label:
    `<commit>-dirty` when the image's sources differ from it, `unknown` outside a git checkout.
    A build from an export without .git (a source tarball) names its commit in SOURCE_REVISION."""
    if os.environ.get("SOURCE_REVISION"):
        return os.environ["SOURCE_REVISION"]
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", *IMAGE_SOURCES)
    return f"{commit}-dirty" if changed else commit


def builder_info(c: Engine | None = None) -> dict[str, Any]:
    """Who made the record and when: builder and engine versions, the checkout's commit."""
    try:
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        try:
            version = importlib.metadata.version("pytorch-cuda-images")
        except importlib.metadata.PackageNotFoundError:
            version = "0+unknown"
    engine_version = (f"Docker {c.info.server_version} ({c.info.storage_driver}, {c.info.image_store} image store, "
                      f"layers read from the {c.info.layer_source})" if c is not None else None)
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": version, "python": platform.python_version(), "engine": engine_version,
            "git_commit": commit, "git_dirty": None if status is None else bool(status),
            "recorded_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _check(result: Any) -> dict[str, Any]:
    """A verify.CheckResult (or a dict with id/ok/detail/warn) as the record stores it: a WARN is
    ok (it passed) with warn true."""
    if isinstance(result, dict):
        return {"id": str(result["id"]), "ok": bool(result["ok"]), "detail": str(result["detail"]),
                "warn": bool(result.get("warn", False))}
    return {"id": str(result.id), "ok": bool(result.ok), "detail": str(result.detail),
            "warn": bool(getattr(result, "warn", False))}


def make_record(variant: Variant, *, image: ImageInfo, base: ImageInfo, tags: Iterable[str],
                facts: dict[str, Any], checks: Iterable[Any], sbom: tuple[Path, str] | None = None,
                builder: dict[str, Any] | None = None, audit: dict[str, Any] | None = None,
                layer_blobs: Iterable[Blob] = (), blob_scheme: str = "") -> dict[str, Any]:
    """The record of one built image. checks: verify's results (empty when verify was skipped:
    then the image is not verified). sbom: (path of the SBOM file, its sha256). audit: the
    audit's summary (builder/audit.py summary), None when it did not run. layer_blobs: each
    layer's registry blob, compressed as blob_scheme says (the manifest digest is added once the
    image carries its labels, by release.record_build)."""
    results = [_check(r) for r in checks]
    record = {
        "record_version": RECORD_VERSION,
        "variant": variant.name,
        "flavor": variant.flavor,
        "cuda_build": variant.cuda.key,
        "inputs": inputs(variant),
        "base": {"ref": base.ref, "image_id": base.id, "diff_ids": base.diff_ids},
        "source_date_epoch": variant.manifest.source_date_epoch,
        "image": {"id": image.id, "diff_ids": image.diff_ids},
        **({"registry": {"compression": blob_scheme,
                         "blobs": [{"digest": b.digest, "size": b.size} for b in layer_blobs]}}
           if layer_blobs else {}),
        "tags": list(tags),
        "facts": facts,
        "checks": results,
        "verified": bool(results) and all(r["ok"] for r in results),
        "sizes": {"image_bytes": image.size, "base_bytes": base.size},
        "sbom": None if sbom is None else {"path": sbom[0].name, "sha256": sbom[1], "format": "CycloneDX 1.6 JSON"},
        "builder": builder if builder is not None else builder_info(),
        "audit": audit,
    }
    validate(record)
    return record


def validate(record: Any, where: str = "build record") -> None:
    """Schema and consistency checks; every problem is named by its key."""
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    problems = []
    for error in errors:
        key = ".".join(map(str, error.absolute_path)) or "(top level)"
        message = error.message if len(error.message) < 300 else error.message[:300] + "…"
        if error.validator == "const" and list(error.absolute_path)[-1:] == ["ok"]:
            message = "verified is true but this check failed"
        problems.append(f"{where}: key {key}: {message}")
    if not problems and record["verified"] != (bool(record["checks"]) and all(c["ok"] for c in record["checks"])):
        problems.append(f"{where}: key verified: is {record['verified']}, but the checks say "
                        f"{'all passed' if record['checks'] else 'none ran'}")
    for name, source in ((record.get("audit") or {}).get("sources") or {}).items() if not problems else ():
        if source["count"] != len(source["findings"]):
            problems.append(f"{where}: key audit.sources.{name}.count: is {source['count']}, "
                            f"but {len(source['findings'])} findings are listed")
    if problems:
        raise UserError("\n".join(problems) + "\n(manifests/record.schema.json describes every key; "
                        "`python build.py build` writes a new record)")


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def record_path(records_dir: Path, variant: str, image_id: str) -> Path:
    return records_dir / f"{variant}-{short_id(image_id)}{RECORD_SUFFIX}"


def write_record(record: dict[str, Any], records_dir: Path = RECORDS) -> Path:
    """Validate and write (atomically) `<variant>-<short image id>.record.json`; return its path."""
    validate(record)
    path = record_path(records_dir, record["variant"], record["image"]["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def load_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the build record ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not JSON ({exc}); rebuild the image to write a new record") from None
    validate(record, where=str(path))
    return record


def find_record_path(records_dir: Path, image_id: str) -> Path | None:
    """The record of an image (full ID, with or without sha256:, or a prefix of 12+ hex digits)."""
    wanted = image_id.removeprefix("sha256:")
    if len(wanted) < 12:
        raise UserError(f"image ID {image_id!r} is too short to find its record (give 12 or more hex digits)")
    for path in sorted(Path(records_dir).glob(f"*-{wanted[:12]}{RECORD_SUFFIX}")):
        try:
            found = json.loads(path.read_text())["image"]["id"].removeprefix("sha256:")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if found.startswith(wanted):
            return path
    return None


def find_record(records_dir: Path, image_id: str) -> dict[str, Any] | None:
    """The validated record of an image, or None when there is none (an invalid one is a UserError)."""
    path = find_record_path(records_dir, image_id)
    return None if path is None else load_record(path)


def push_refusal(record: dict[str, Any] | None, variant: str | None = None) -> str | None:
    """Why an image must not be pushed (None when it may); the remedy builds the image's variant
    (its pytorch-cuda.variant label), since a bare `build` builds the default one."""
    build = f"`python build.py build {variant}`" if variant else "`python build.py build` with the image's variant"
    if record is None:
        return f"it has no build record: build it with {build} (which verifies and records it)"
    if not record["checks"]:
        return f"verification was skipped when it was built (--skip-verify): run {build} without it"
    failed = [c["id"] for c in record["checks"] if not c["ok"]]
    if failed:
        return f"its build record shows failed checks: {', '.join(failed)}"
    if not record["verified"]:
        return "its build record does not mark it verified"
    return None


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of the record's canonical JSON without the image ID, builder block, audit and pushes (see module doc)."""
    trimmed = json.loads(json.dumps(record))
    for path in NOT_IN_DIGEST:
        node = trimmed
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    trimmed["checks"] = [{"id": c["id"], "ok": c["ok"]} for c in trimmed.get("checks", [])]
    return hashlib.sha256(canonical(trimmed)).hexdigest()


def attachment_labels(record: dict[str, Any]) -> dict[str, str]:
    """The labels that point from an image to its record and SBOM."""
    labels = {LABEL_RECORD: record_digest(record)}
    if record.get("sbom"):
        labels[LABEL_SBOM] = record["sbom"]["sha256"]
    return labels


def add_push(record: dict[str, Any], ref: str, digest: str, pulled_image_id: str) -> dict[str, Any]:
    """A copy of the record with one more push: the remote ref, its manifest digest, the ID pulled back."""
    entry = {"ref": ref, "digest": digest, "pulled_image_id": pulled_image_id,
             "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    updated = {**record, "pushes": [*record.get("pushes", []), entry]}
    validate(updated)
    return updated
