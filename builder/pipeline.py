"""`build`: base → context → docker build → normalize → read versions → check tags → tag.

The image gets its tags only after what it reports about itself matches the manifest, so a
failed or mismatched build leaves nothing tagged. The tagged image is the normalized one: same
inputs, same image ID (the raw build stays behind, untagged, as the layer cache).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import docker

from builder import aptlock, base, cache, context, engine, facts, hygiene, lock, tags
from builder import normalize as normalize_
from builder.errors import BuildFailed, UserError
from builder.manifest import Variant


@dataclass
class Built:
    variant: Variant
    image_id: str
    refs: list[str]
    facts: dict
    raw_id: str = ""  # what docker build produced, before normalization
    config: bytes = b""  # the normalized config (its sha256 is image_id)
    seconds: dict = field(default_factory=dict)  # base (bootstrap), build, normalize (and its parts)


def _known_layers() -> dict:
    """What normalization learned on this machine: "<epoch>:<raw diff ID>" → normalized diff ID,
    and "image:<epoch>:<raw image ID>" → normalized image."""
    try:
        return json.loads(cache.path("normalized-layers.json").read_text())
    except (OSError, ValueError):
        return {}


def _keep_known_layers(known: dict) -> None:
    path = cache.path("normalized-layers.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=0, sort_keys=True))


def ensure_base(c: docker.DockerClient, variant: Variant, quiet: bool) -> None:
    """Bootstrap the base if missing. A bootstrapped base is imported already normalized, so its
    layer is remembered as its own normalized form: no build rewrites or re-sends it."""
    manifest = variant.manifest
    if engine.image_exists(c, manifest.base_ref):
        return
    base.ensure_base(c, manifest, quiet=quiet)
    if "bootstrap" in manifest.os:
        (layer,) = c.api.inspect_image(manifest.base_ref)["RootFS"]["Layers"]
        known = _known_layers()
        known[f"{manifest.source_date_epoch}:{layer}"] = layer
        _keep_known_layers(known)


def normalize(c: docker.DockerClient, raw_id: str, epoch: int, quiet: bool) -> tuple[str, bytes, dict]:
    """Rewrite the built image deterministically and load it back; (image ID, config bytes, seconds).

    Layers normalized before are reused, and a raw image normalized before (an unchanged
    rebuild) is not saved again at all: its normalized config is remembered. Each layer written
    is scanned for hygiene while its bytes are at hand, so `verify` need not save the image again.
    """
    known_layers = _known_layers()
    known = known_layers.get(f"image:{epoch}:{raw_id}")
    if known and engine.image_exists(c, known["id"]):
        return known["id"], known["config"].encode(), {}
    report = normalize_.normalize_in_engine(c, raw_id, epoch, cache=known_layers, scan=hygiene.scan_and_keep)
    known_layers[f"image:{epoch}:{raw_id}"] = {"id": report.image_id, "config": report.config.decode()}
    _keep_known_layers(known_layers)
    if not quiet:
        sent = [layer for layer in report.layers if not layer.reused]
        print(f"normalized {raw_id[:19]} → {report.image_id[:19]} ({len(sent)} of {len(report.layers)} layers "
              f"rewritten, {sum(layer.removed for layer in sent)} build-varying files dropped; "
              + ", ".join(f"{k} {v} s" for k, v in report.seconds.items()) + ")", flush=True)
    return report.image_id, report.config, report.seconds


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


def build(c: docker.DockerClient, variant: Variant, *, repository: str | None = None,
          ca_bundle: str | None = None, nocache: bool = False, quiet: bool = False,
          update_apt_lock: bool = False) -> Built:
    check_buildable(variant)
    if variant.flavor != "runtime":
        # Flavors are built on runtime's stage; building (from cache) and tagging runtime too
        # gives verify the image whose layers the flavor must share.
        build(c, variant.sibling("runtime"), repository=repository, ca_bundle=ca_bundle, nocache=nocache,
              quiet=quiet, update_apt_lock=update_apt_lock)
    ca = context.find_ca_bundle(ca_bundle)
    started = time.monotonic()
    ensure_base(c, variant, quiet=quiet)
    if not quiet:
        print(f"building {variant.name} (CA bundle for the build stage: {ca or 'none'})", flush=True)
    based_at = time.monotonic()
    raw_id = engine.build(c, context.build_context(variant, ca), target=variant.flavor,
                          nocache=nocache, quiet=quiet)
    built_at = time.monotonic()
    image_id, config, parts = normalize(c, raw_id, variant.manifest.source_date_epoch, quiet)
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
    aptlock.check(c, variant, image_id, update=update_apt_lock, quiet=quiet)
    repo = repository or variant.manifest.name
    refs = [f"{repo}:{t}" for t in tags.tags_for(observed, variant.flavor, variant.manifest.source_date_epoch)]
    engine.tag(c, image_id, refs)
    if not quiet:
        print(f"built {image_id}\n" + "".join(f"tagged {r}\n" for r in refs), end="", flush=True)
    return Built(variant=variant, image_id=image_id, refs=refs, facts=found, raw_id=raw_id,
                 config=config, seconds=seconds)


def check_reproducible(c: docker.DockerClient, variant: Variant, **options) -> list[str]:
    """Build twice, each time from a cleared layer cache and a freshly bootstrapped base; the IDs."""
    ids = []
    for attempt in (1, 2):
        engine.untag(c, [variant.manifest.base_ref])  # the next build bootstraps the base anew
        ids.append(build(c, variant, nocache=True, **options).image_id)
        print(f"build {attempt}: {ids[-1]}", flush=True)
    return ids
