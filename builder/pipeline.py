"""`build`: base → context → docker build → normalize → read versions → check tags.

The build leaves its image untagged: it computes the tags from what the image reports about
itself and checks them against the manifest, and the command line writes them last, after
verify and the record (a tag is a promise). The image is the normalized one: same inputs,
same image ID (the raw build stays behind, untagged, as the layer cache).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from builder import aptlock, base, cache, context, debserver, facts, hygiene, lock, record, render, rewrite, tags
from builder import normalize as normalizer  # `normalize` below is this module's own step
from builder.engine import BACKENDS, Engine
from builder.errors import BuildFailed, UserError
from builder.manifest import Variant


@dataclass
class Built:
    variant: Variant
    image_id: str
    refs: list[str]  # the tags it gets once verified and recorded
    facts: dict
    raw_id: str = ""  # what docker build produced, before normalization
    config: bytes = b""  # the normalized config (its sha256 is image_id)
    seconds: dict = field(default_factory=dict)  # base (bootstrap), build, normalize (and its parts)
    runtime_id: str = ""  # a flavor's runtime stage, built on the way: the layers it must share
    layer_source: str = ""  # where normalization read the layers: "store" or "archive" ("" if cached)
    backend: str = ""  # the builder that made the raw image: "classic" or "buildkit"


def _known_layers_path() -> Path:
    """One file per version of the normalizer's code: what an older one learned is not reused."""
    return cache.path(f"normalized-layers-{normalizer.code_id()}.json")


def _known_layers() -> dict:
    """What normalization learned on this machine: "<epoch>:<raw diff ID>" → normalized diff ID,
    and "image:<epoch>:<raw image ID>" → normalized image."""
    try:
        return json.loads(_known_layers_path().read_text())
    except (OSError, ValueError):
        return {}


def _keep_known_layers(known: dict) -> None:
    path = _known_layers_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=0, sort_keys=True))


def ensure_base(c: Engine, variant: Variant, quiet: bool) -> None:
    """Bootstrap the base if missing. A bootstrapped base is imported already normalized, so its
    layer is remembered as its own normalized form: no build rewrites or re-sends it."""
    manifest = variant.manifest
    if c.image_exists(manifest.base_ref):
        return
    base.ensure_base(c, manifest, quiet=quiet)
    if "bootstrap" in manifest.os:
        (layer,) = c.diff_ids(manifest.base_ref)
        known = _known_layers()
        known[f"{manifest.source_date_epoch}:{layer}"] = layer
        _keep_known_layers(known)


def normalize(c: Engine, raw_id: str, epoch: int, quiet: bool) -> tuple[str, bytes, dict, str]:
    """Rewrite the built image deterministically and load it back; (image ID, config, seconds, layer source).

    Layers normalized before are reused, and a raw image normalized before (an unchanged
    rebuild) is not saved again at all: its normalized config is remembered. Each layer written
    is scanned for hygiene while its bytes are at hand, so `verify` need not save the image again.
    """
    known_layers = _known_layers()
    known = known_layers.get(f"image:{epoch}:{raw_id}")
    if known and c.image_exists(known["id"]):
        return known["id"], known["config"].encode(), {}, ""
    report = rewrite.normalize_in_engine(c, raw_id, epoch, cache=known_layers, scan=hygiene.scan_and_keep)
    known_layers[f"image:{epoch}:{raw_id}"] = {"id": report.image_id, "config": report.config.decode()}
    _keep_known_layers(known_layers)
    if not quiet:
        sent = [layer for layer in report.layers if not layer.reused]
        print(f"normalized {raw_id[:19]} → {report.image_id[:19]} (layers from the {report.layer_source}; "
              f"{len(sent)} of {len(report.layers)} layers "
              f"rewritten, {sum(layer.removed for layer in sent)} build-varying files dropped; "
              + ", ".join(f"{k} {v} s" for k, v in report.seconds.items()) + ")", flush=True)
    return report.image_id, report.config, report.seconds, report.layer_source


def check_buildable(variant: Variant) -> None:
    """Refuse early, with the reason, what cannot be built on this machine or from this checkout."""
    if not variant.built:
        raise UserError(f"variant {variant.name}: flavor {variant.flavor} is rendered but not built yet "
                        f"(flavors.{variant.flavor}.built is false in the manifest)")
    missing = [variant.lock_path(layer).name for layer in variant.python_layers()
               if not variant.lock_path(layer).exists()]
    if missing:
        where = variant.cuda.index
        raise UserError(f"variant {variant.name}: no lock file {', '.join(missing)}; its wheels come from "
                        f"{where}. Run `python build.py lock {variant.name}` on a machine that reaches {where}, "
                        f"commit the lock, then build")
    problems = lock.stale(variant)
    if problems:
        raise UserError("\n".join(problems))


def flavor_debs(variant: Variant) -> list[tuple[aptlock.Pin, Path]]:
    """The pinned .debs the variant's flavor steps install, in the user's cache and checked; fetched
    before anything is built, so a .deb neither the cache nor the archive has stops the build first."""
    pins = {p for flavor_pins in aptlock.flavor_pins(variant).values() for p in flavor_pins}
    return aptlock.fetch_debs(sorted(pins, key=lambda p: p.name), aptlock.mirror(variant.manifest)) if pins else []


def choose_backend(c: Engine, requested: str) -> str:
    """auto: BuildKit where the docker CLI here can drive it for this engine, else classic; both
    give one image ID (the normalizer makes it so), BuildKit builds groups in parallel, keeps the
    build CA out of every layer as a secret and pip's downloads in a cache mount."""
    if requested not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "buildkit" and not c.info.buildkit:
        raise UserError("--backend buildkit: no BuildKit client here for this engine (it needs the docker "
                        "CLI's buildx plugin, or a docker CLI older than 23); use --backend classic or auto")
    if requested == "auto":
        return "buildkit" if c.info.buildkit else "classic"
    return requested


def engine_build(c: Engine, variant: Variant, backend: str, *, ca: Path | None,
                 edit: dict[str, Callable[[str], str]] | None = None, nocache: bool = False,
                 quiet: bool = False, out: IO[str] = sys.stdout, extra_hosts: dict[str, str] | None = None,
                 revision: str | None = None) -> str:
    """The engine's raw build of a variant by the chosen backend: the classic builder gets the CA
    in its context (its install stages only; the final stage copies none), BuildKit as a secret.
    ``edit``: file name → text edit of the context (what a lock bump changes)."""
    buildkit = backend == "buildkit"
    build_context = context.build_context(variant, None if buildkit else ca)
    if edit:
        build_context = context.edited(build_context, edit)
    return c.build(build_context, target=variant.flavor, nocache=nocache, quiet=quiet, out=out,
                   extra_hosts=extra_hosts or {}, backend=backend,
                   buildargs={"SOURCE_REVISION": revision or record.source_revision()},
                   dockerfile=render.BUILDKIT_DOCKERFILE if buildkit else "Dockerfile",
                   secrets={"build-ca": ca} if buildkit and ca else {})


def build(c: Engine, variant: Variant, *, repository: str | None = None,
          ca_bundle: str | None = None, nocache: bool = False, quiet: bool = False,
          backend: str = "auto") -> Built:
    """Build, normalize and check one variant; nothing is tagged (see the module's docstring)."""
    check_buildable(variant)
    backend = choose_backend(c, backend)
    runtime_id = ""
    if variant.flavor != "runtime":
        # Flavors are built on runtime's stage; building it (from cache) gives verify the image
        # whose layers the flavor must share. It stays untagged: it was not verified here.
        runtime_id = build(c, variant.sibling("runtime"), repository=repository, ca_bundle=ca_bundle,
                           nocache=nocache, quiet=quiet, backend=backend).image_id
    ca = context.find_ca_bundle(ca_bundle)
    debs = flavor_debs(variant)
    started = time.monotonic()
    ensure_base(c, variant, quiet=quiet)
    if not quiet:
        print(f"building {variant.name} with the {backend} builder "
              f"(CA bundle for the build stages: {ca or 'none'})", flush=True)
    based_at = time.monotonic()
    with debserver.serving(c, variant.manifest.base_ref, debs) if debs else contextlib.nullcontext({}) as hosts:
        raw_id = engine_build(c, variant, backend, ca=ca, nocache=nocache, quiet=quiet, extra_hosts=hosts)
    built_at = time.monotonic()
    image_id, config, parts, source = normalize(c, raw_id, variant.manifest.source_date_epoch, quiet)
    seconds = {"base": round(based_at - started, 1), "build": round(built_at - based_at, 1),
               "normalize": round(time.monotonic() - built_at, 1)} | {f"normalize_{k}": v for k, v in parts.items()}
    found = facts.collect(c, image_id)
    if "torch_error" in found:
        raise BuildFailed(f"variant {variant.name}: torch does not import in the built image "
                          f"{image_id}: {found['torch_error']}")
    observed = tags.observed_versions(found)
    wrong = tags.mismatches(tags.expected_versions(variant), observed)
    if wrong:
        raise BuildFailed(f"variant {variant.name}: the built image {image_id} does not match the manifest, "
                          f"so it is left untagged:\n  " + "\n  ".join(wrong))
    aptlock.check(c, variant, image_id)
    repo = repository or variant.manifest.name
    refs = [f"{repo}:{t}" for t in tags.tags_for(observed, variant.flavor, variant.manifest.source_date_epoch)]
    if not quiet:
        print(f"built {image_id} (untagged until verified and recorded)", flush=True)
    return Built(variant=variant, image_id=image_id, refs=refs, facts=found, raw_id=raw_id,
                 config=config, seconds=seconds, runtime_id=runtime_id, layer_source=source,
                 backend=backend)


def build_and_tag(c: Engine, variant: Variant, **options) -> Built:
    """Build and tag without verify or record: what tests and benchmarks stand on
    (`build.py build` tags only a verified, recorded image)."""
    built = build(c, variant, **options)
    c.tag(built.image_id, built.refs)
    return built


def check_reproducible(c: Engine, variant: Variant, **options) -> list[Built]:
    """Build twice, each time from a cleared layer cache and a freshly bootstrapped base; both builds."""
    builds = []
    for attempt in (1, 2):
        c.untag([variant.manifest.base_ref])  # the next build bootstraps the base anew
        builds.append(build(c, variant, nocache=True, **options))
        print(f"build {attempt}: {builds[-1].image_id}", flush=True)
    return builds
