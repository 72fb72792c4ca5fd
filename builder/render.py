"""Render templates/ + the manifest into images/<variant>/ (Dockerfile and image.json).

Rendering is a pure function of its inputs, so the rendered files are committed and a version
bump shows up as a readable diff; `check_drift` is what the tests use to keep them honest.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import jinja2
from packaging.version import Version

from builder import aptlock, debserver
from builder.errors import UserError
from builder.manifest import ROOT, Manifest, Variant
from builder.tags import expected_versions, full_tag
from builder.normalize import BUILD_VARYING

TEMPLATES = ROOT / "templates"
IMAGES = ROOT / "images"
DOCKERFILE_TEMPLATE = "Dockerfile.j2"
BUILDKIT_DOCKERFILE = "Dockerfile.buildkit"  # beside Dockerfile in images/<variant>/
PYPI = "https://pypi.org/simple"


def common_labels(variant: Variant) -> dict[str, str]:
    """OCI and version labels shared by every flavor of one CUDA build."""
    m, cuda = variant.manifest, variant.cuda
    created = datetime.datetime.fromtimestamp(m.source_date_epoch, datetime.timezone.utc)
    labels = {
        "org.opencontainers.image.title": m.name,
        "org.opencontainers.image.created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.base.name": m.base_ref,
        "pytorch-cuda.os": f"{m.os['name']}{m.os['version']}",
        "pytorch-cuda.python": m.python,
        "pytorch-cuda.cuda-build": cuda.key,
        "pytorch-cuda.torch": cuda.torch,
        "pytorch-cuda.torchvision": cuda.torchvision,
        "pytorch-cuda.torchaudio": cuda.torchaudio,
        "pytorch-cuda.cuda": cuda.cuda,
        "pytorch-cuda.cudnn": cuda.cudnn,
        "pytorch-cuda.nccl": cuda.nccl,
        "pytorch-cuda.triton": cuda.triton,
        "pytorch-cuda.source-date-epoch": str(m.source_date_epoch),
    }
    for name, version in sorted(m.data["python_packages"].items()):
        labels[f"pytorch-cuda.{name}"] = version
    for key in ("source", "url", "vendor", "licenses"):  # the revision is set when the build runs
        if key in m.data.get("project", {}):
            labels[f"org.opencontainers.image.{key}"] = m.data["project"][key]
    return labels


def driver_cuda(cuda: str) -> str:
    """The oldest driver CUDA version the wheels of a CUDA build run on: CUDA's minor-version
    compatibility lets a 12.x build run on any 12.0+ driver, so asking for 12.8 would turn away
    drivers that work."""
    return f"{Version(cuda).major}.0"


def flavor_labels(variant: Variant, flavor: str) -> dict[str, str]:
    """Labels a flavor's stage sets last, overriding those of the stages it builds on."""
    tag = full_tag(expected_versions(variant), flavor)
    cuda = variant.cuda
    return {
        "org.opencontainers.image.version": tag,
        "org.opencontainers.image.description":
            f"PyTorch {cuda.torch}, CUDA {cuda.cuda}, cuDNN {cuda.cudnn}, Python {variant.manifest.python}, "
            f"{variant.manifest.os['name'].capitalize()} {variant.manifest.os['version']}: {flavor}",
        "pytorch-cuda.flavor": flavor,
        "pytorch-cuda.variant": variant.sibling(flavor).name,
    }


def stages(variant: Variant) -> list[dict]:
    """The flavor stages above runtime, in build order, with what each one adds."""
    lineage = variant.lineage()
    return [{"name": flavor, "parent": parent, "parts": variant.parts(flavor),
             "services": variant.spec(flavor).get("services", []), "ports": variant.spec(flavor)["ports"]}
            for parent, flavor in zip(lineage, lineage[1:])]


def render_variant(variant: Variant) -> dict[str, str]:
    """File name → content for images/<variant>/."""
    m = variant.manifest
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    flavors = variant.lineage()
    context = {
        "variant": variant,
        "cuda": variant.cuda,
        "python": m.python,
        "user": m.user,
        "base": {"image": m.os.get("image"), "ref": m.base_ref,
                 "packages": m.os.get("packages") or m.os.get("bootstrap", {}).get("packages", [])},
        "extra_indexes": [] if variant.cuda.on_pypi else [PYPI],
        "common_labels": common_labels(variant),
        "flavor_labels": {f: flavor_labels(variant, f) for f in flavors},
        "image_refs": {f: f"{m.name}:{full_tag(expected_versions(variant), f)}" for f in flavors},
        "stages": stages(variant),
        "layers": variant.python_layers()[1:],
        "venv_layers": list(m.venv_layers),
        # every .deb a flavor's apt step installs: name, version, sha256, pool path (the apt lock)
        "apt_pins": aptlock.flavor_pins(variant),
        "debs_url": debserver.url(),  # where a flavor's build fetches its pinned .debs (builder/debserver.py)
        "apt_packages": {f: variant.spec(f).get("apt_packages", []) for f in variant.contents()},
        "epoch": m.source_date_epoch,
        "driver_cuda": driver_cuda(variant.cuda.cuda),
        # what an apt step leaves that varies per build: the one list the normalizer and hygiene use
        "apt_clean": " ".join("/" + p for p in ("var/lib/apt/lists/*", *BUILD_VARYING)),
    }
    try:
        dockerfile = env.get_template(DOCKERFILE_TEMPLATE).render(context, buildkit=False)
        buildkit = env.get_template(DOCKERFILE_TEMPLATE).render(context, buildkit=True)
    except jinja2.TemplateNotFound as exc:
        raise UserError(f"template {TEMPLATES / exc.name} is missing; restore it from git "
                        f"(git checkout -- templates/) or add it") from None
    image_info = {"labels": common_labels(variant), "gpu_hour_usd": m.data["gpu_hour_usd"]}
    # one template, two renderings: the classic builder's, and BuildKit's with the build CA as a
    # secret and pip's cache as a cache mount (the classic builder knows neither)
    return {"Dockerfile": dockerfile, BUILDKIT_DOCKERFILE: buildkit,
            "image.json": json.dumps(image_info, indent=2, sort_keys=True) + "\n"}


def images_dir(m: Manifest) -> Path:
    """Where a manifest's rendered images go: images/ for this repository's manifests, else images/
    beside the manifest, so rendering another manifest never overwrites this repository's images."""
    if m.path.resolve().parent == (ROOT / "manifests").resolve():
        return IMAGES
    return m.path.resolve().parent / "images"


def render_all(manifest: Manifest) -> dict[str, dict[str, str]]:
    return {name: render_variant(v) for name, v in manifest.variants().items()}


def write(manifest: Manifest, names: list[str], out: Path = IMAGES) -> list[Path]:
    """Write the rendered files of the named variants; returns the paths written."""
    written = []
    for name in names:
        for filename, content in render_variant(manifest.variant(name)).items():
            path = out / name / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            written.append(path)
    return written


def check_drift(manifest: Manifest, out: Path = IMAGES) -> list[str]:
    """Differences between images/ and what the templates render now (empty when in sync)."""
    problems = []
    rendered = render_all(manifest)
    for name, files in rendered.items():
        for filename, content in files.items():
            path = out / name / filename
            if not path.exists():
                problems.append(f"{path} is missing")
            elif path.read_text() != content:
                problems.append(f"{path} differs from what the templates render")
    if out.exists():
        problems += [f"{d} is not a variant of the manifest" for d in sorted(out.iterdir())
                     if d.is_dir() and d.name not in rendered]
    return problems
