"""The fingerprint: a versioned JSON record of one probe run, checked against
the JSON Schema shipped next to this module.

Fingerprints are written to compare later (``selftest compare``), so the
document is plain JSON with stable keys, and the schema is part of the package.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from typing import Any, Optional

try:  # jsonschema ships in the image; on a bare host the probe still runs
    import jsonschema
except ImportError:  # pragma: no cover - exercised only where jsonschema is missing
    jsonschema = None

from . import SCHEMA_VERSION, __version__

SCHEMA_FILE = "fingerprint.schema.json"


def lookup(doc: Any, *path: str) -> Any:
    """The value at ``path`` in a fingerprint, or None where any step is missing (older schemas)."""
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def load_schema() -> dict:
    """The JSON Schema for fingerprints, read from the package."""
    try:
        from importlib.resources import files

        text = files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    except (ImportError, AttributeError, FileNotFoundError, TypeError):
        with open(os.path.join(os.path.dirname(__file__), SCHEMA_FILE), encoding="utf-8") as fh:
            text = fh.read()
    return json.loads(text)


def schema_errors(document: Any) -> Optional[list[str]]:
    """Schema violations as readable lines; [] when valid, None when jsonschema is missing."""
    if jsonschema is None:
        return None
    validator_cls = jsonschema.validators.validator_for(load_schema())
    validator = validator_cls(load_schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def utc_stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def gpu_slug(name: Optional[str]) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'; None -> 'cpu'."""
    if not name:
        return "cpu"
    slug = name.lower()
    slug = re.sub(r"^(nvidia|tesla)\s+", "", slug)
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    return slug or "gpu"


def default_filename(gpu_name: Optional[str], moment: dt.datetime) -> str:
    """fingerprint-<gpu>-<YYYYMMDD>.json, in the current directory."""
    return f"fingerprint-{gpu_slug(gpu_name)}-{moment.astimezone(dt.timezone.utc):%Y%m%d}.json"


def build(
    *,
    mode: str,
    quick: bool,
    status: str,
    exit_code: int,
    checks: list[dict],
    environment: dict,
    workload: dict,
    results: dict,
    telemetry: dict,
    cost: dict,
    stability: dict,
    created: dt.datetime,
    duration_s: float,
    argv: Optional[list[str]] = None,
) -> dict:
    """Assemble the document in its canonical key order."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "selftest", "version": __version__, "argv": list(argv or [])},
        "created_utc": utc_stamp(created),
        "mode": mode,
        "quick": quick,
        "status": status,
        "exit_code": exit_code,
        "duration_s": duration_s,
        "checks": checks,
        "environment": environment,
        "workload": workload,
        "results": results,
        "telemetry": telemetry,
        "cost": cost,
        "stability": stability,
    }


def jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity: store them as null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dumps(document: dict) -> str:
    return json.dumps(jsonable(document), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write(document: dict, path: str) -> None:
    """Write atomically, so a crash never leaves half a fingerprint behind."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(dumps(document))
    os.replace(tmp, path)


def load(path: str) -> dict:
    """Read a fingerprint; ValueError with a readable reason when it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            document = json.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or "schema_version" not in document:
        raise ValueError(f"{path} is not a selftest fingerprint (no schema_version)")
    return document
