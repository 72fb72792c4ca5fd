"""`build`: base → context → docker build → read versions → check tags → tag.

The image gets its tags only after what it reports about itself matches the manifest, so a
failed or mismatched build leaves nothing tagged.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import docker

from builder import base, context, engine, facts, lock, tags
from builder.errors import BuildFailed, UserError
from builder.manifest import Variant


@dataclass
class Built:
    variant: Variant
    image_id: str
    refs: list[str]
    facts: dict


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
          ca_bundle: str | None = None, nocache: bool = False, quiet: bool = False) -> Built:
    check_buildable(variant)
    if variant.flavor != "runtime":
        # Flavors are built on runtime's stage; building (from cache) and tagging runtime too
        # gives verify the image whose layers the flavor must share.
        build(c, variant.sibling("runtime"), repository=repository, ca_bundle=ca_bundle, nocache=nocache, quiet=quiet)
    ca = context.find_ca_bundle(ca_bundle)
    base.ensure_base(c, variant.manifest, quiet=quiet)
    if not quiet:
        print(f"building {variant.name} (CA bundle for the build stage: {ca or 'none'})", flush=True)
    image_id = engine.build(c, context.build_context(variant, ca), target=variant.flavor,
                            nocache=nocache, quiet=quiet)
    found = facts.collect(c, image_id)
    if "torch_error" in found:
        raise BuildFailed(f"variant {variant.name}: torch does not import in the built image "
                          f"{image_id}: {found['torch_error']}")
    observed = tags.observed_versions(found)
    wrong = tags.mismatches(tags.expected_versions(variant), observed)
    if wrong:
        raise BuildFailed(f"variant {variant.name}: the built image {image_id} does not match the manifest, "
                          f"so it is left untagged:\n  " + "\n  ".join(wrong))
    repo = repository or variant.manifest.name
    refs = [f"{repo}:{t}" for t in tags.tags_for(observed, variant.flavor, variant.manifest.source_date_epoch)]
    engine.tag(c, image_id, refs)
    if not quiet:
        print(f"built {image_id}\n" + "".join(f"tagged {r}\n" for r in refs), end="", flush=True)
    return Built(variant=variant, image_id=image_id, refs=refs, facts=found)
