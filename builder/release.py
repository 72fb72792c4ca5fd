"""Record and push: turn a built, verified image into something a team can pull and trust.

record(): SBOM + build record written side by side, and attached to the image as labels that
carry their digests (the labelled image shares every layer with the verified one; only the
config gains two labels). push(): only an image whose record shows every check passed, then
pull it back by digest and check the ID.
"""
from __future__ import annotations

from pathlib import Path


from builder import engine, record, registry, sbom
from builder.engine import Engine
from builder.errors import BuildFailed, UserError
from builder.pipeline import Built
from builder.rewrite import relabel_in_engine
from builder.tags import full_tag, observed_versions


def record_build(c: Engine, built: Built, checks: list, records_dir: Path = record.RECORDS,
                 quiet: bool = False) -> tuple[str, Path]:
    """Write the SBOM and record and label the image with their digests; (labelled image ID, record path).

    Nothing is tagged here: the caller tags the labelled image last, once it knows the checks passed.
    """
    variant, manifest = built.variant, built.variant.manifest
    tag = full_tag(observed_versions(built.facts), variant.flavor)
    sbom_file = sbom.sbom_for_image(c, built.image_id, variant=variant.name, name=manifest.name, tag=tag,
                                    source_date_epoch=manifest.source_date_epoch, locks=record.lock_files(variant),
                                    records_dir=records_dir)
    rec = record.make_record(variant, image=record.inspect_image(c, built.image_id),
                             base=record.inspect_image(c, manifest.base_ref), tags=built.refs, facts=built.facts,
                             checks=checks, sbom=sbom_file, builder=record.builder_info(c))
    labelled = relabel_in_engine(c, built.config, record.attachment_labels(rec), manifest.source_date_epoch)
    if labelled != built.image_id:
        with_labels = record.inspect_image(c, labelled)
        rec["image"]["id"], rec["sizes"]["image_bytes"] = with_labels.id, with_labels.size
        # the unlabelled image stays: it costs a config file, and an unchanged rebuild finds it
        # instead of normalizing 7 GB again
    path = record.write_record(rec, records_dir)
    if not quiet:
        print(f"recorded {path} and {sbom_file[0]}; {labelled} carries their digests")
    return labelled, path


def push(c: Engine, image: str, target: str, *, records_dir: Path = record.RECORDS,
         quiet: bool = False, auth_config: dict | None = None, latest: bool = False) -> dict[str, str]:
    """Push every tag of a verified image to HOST[:PORT]/NAMESPACE, pull it back by digest, record it."""
    if not c.image_exists(image):
        raise UserError(f"no image {image} in the engine: build it first (`python build.py build VARIANT`)")
    image_id = c.image_id(image)
    rec = record.find_record(records_dir, image_id)
    refusal = record.push_refusal(rec)
    if refusal:
        raise UserError(f"refusing to push {image} ({image_id[:19]}): {refusal}. Nothing was pushed.")
    host, namespace = registry.parse_registry(target)
    auth_config = auth_config or engine.credentials(host)  # as the Docker CLI finds them, for every request
    refs = list(rec["tags"])
    if latest:
        refs.append(f"{refs[0].rpartition(':')[0]}:latest")
    digests = registry.push(c, image_id, refs, host, namespace, quiet=quiet, auth_config=auth_config)
    auth = (auth_config["username"], auth_config["password"]) if auth_config else None
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
