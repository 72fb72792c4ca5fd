"""The command line of build.py: a thin shell over the pipeline modules."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder import context, engine, lock, manifest, pipeline, render, tags, verify
from builder.errors import BuildFailed, UserError

DESCRIPTION = """Build, tag and verify reproducible PyTorch/CUDA images from manifests/images.yaml.

Variants are a flavor (runtime, devel, jupyter, ssh, workstation) on a CUDA build; the
default CUDA build has the bare flavor name, the others a suffix (runtime-cu126).
Exit codes: 0 success, 1 a build or check failed, 2 bad input or unusable environment."""


def cmd_list(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    c = None
    try:
        c = engine.client()
    except UserError:
        pass
    print(f"{'variant':<20} {'status':<22} tag")
    for name, v in m.variants().items():
        tag = f"{m.name}:{tags.full_tag(tags.expected_versions(v), v.flavor)}"
        if not v.built:
            status = "rendered only"
        elif not all(v.lock_path(layer).exists() for layer in v.python_layers()):
            status = "no lock (index unreachable?)"
        elif c is None:
            status = "buildable (no engine)"
        else:
            status = "built" if engine.image_exists(c, tag) else "not built"
        print(f"{name:<20} {status:<22} {tag}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    if args.check:
        problems = render.check_drift(m)
        for p in problems:
            print(p)
        if problems:
            print("images/ is out of date: run `python build.py render --all` and commit it", file=sys.stderr)
        return 1 if problems else 0
    names = list(m.variants()) if args.all or not args.variant else [m.variant(args.variant).name]
    for path in render.write(m, names):
        print(f"wrote {path.relative_to(manifest.ROOT)}")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    chosen = m.variants().values() if args.all or not args.variant else [m.variant(args.variant)]
    failed = 0
    done: set = set()
    for v in chosen:
        for layer in v.python_layers():
            path = v.lock_path(layer)
            if path in done:
                continue
            done.add(path)
            try:
                lock.lock(v, layer)
            except BuildFailed as exc:
                print(f"{exc}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


def cmd_build(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    variant = m.variant(args.variant or m.data["default_variant"])
    pipeline.check_buildable(variant)
    c = engine.client()
    built = pipeline.build(c, variant, repository=args.repository, ca_bundle=args.ca_bundle,
                           nocache=args.no_cache, quiet=args.quiet)
    if args.skip_verify:
        return 0
    ok = run_verify(c, built.refs[0], variant, args.ca_bundle)
    if not ok:
        engine.untag(c, built.refs)
        print(f"verification failed: tags removed; the image stays as {built.image_id}", file=sys.stderr)
    return 0 if ok else 1


def run_verify(c, image: str, variant: manifest.Variant, ca_bundle: str | None) -> bool:
    repository = image.rpartition(":")[0] if ":" in image and not image.startswith("sha256:") else variant.manifest.name
    runtime = variant.sibling("runtime")
    runtime_ref = f"{repository}:{tags.full_tag(tags.expected_versions(runtime), 'runtime')}"
    evidence = verify.gather(c, image, variant, context.find_ca_bundle(ca_bundle), runtime_ref)
    print(f"verifying {image} as variant {variant.name}")
    return verify.report(verify.run_checks(evidence))


def cmd_verify(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    c = engine.client()
    if args.target in m.variants():
        variant = m.variant(args.target)
        image = f"{args.repository or m.name}:{tags.full_tag(tags.expected_versions(variant), variant.flavor)}"
    else:
        image, variant = args.target, None
    if not engine.image_exists(c, image):
        raise UserError(f"no image {image} in the engine: build it first (`python build.py build {args.target}`)")
    if variant is None:
        config = c.api.inspect_image(image)["Config"]
        if not (config.get("Labels") or {}).get("pytorch-cuda.variant"):
            raise UserError(f"image {image} has no pytorch-cuda.variant label: it was not built by build.py; "
                            f"name the variant instead")
        variant = verify.variant_of(m, config, None)
    return 0 if run_verify(c, image, variant, args.ca_bundle) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=manifest.MANIFEST, help="the manifest (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="variants, their tags, and whether each is built here")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("render", help="write images/<variant>/ from templates/ and the manifest")
    s.add_argument("variant", nargs="?", help="one variant (default: all)")
    s.add_argument("--all", action="store_true", help="every variant")
    s.add_argument("--check", action="store_true", help="only report drift between images/ and the templates")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("lock", help="resolve hash-locked requirements into manifests/locks/ (uv)")
    s.add_argument("variant", nargs="?", help="one variant's lock (default: all)")
    s.add_argument("--all", action="store_true", help="every lock")
    s.set_defaults(func=cmd_lock)

    s = sub.add_parser("build", help="bootstrap the base if needed, build, check tags, tag, verify")
    s.add_argument("variant", nargs="?", help="the variant (default: the manifest's default_variant)")
    s.add_argument("--ca-bundle", help="PEM bundle pip trusts in the build stage only "
                                       "(default: $SSL_CERT_FILE, $REQUESTS_CA_BUNDLE or $PIP_CERT)")
    s.add_argument("--repository", help="image repository name (default: the manifest's name)")
    s.add_argument("--no-cache", action="store_true", help="do not reuse cached layers")
    s.add_argument("--skip-verify", action="store_true", help="tag without running verify")
    s.add_argument("--quiet", action="store_true", help="no build output unless a step fails")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("verify", help="run an image and check it; one PASS/FAIL line per check")
    s.add_argument("target", metavar="VARIANT|IMAGE", help="a variant name, or an image reference or ID")
    s.add_argument("--ca-bundle", help="the CA bundle the build used, to prove it did not leak "
                                       "(default: as for build)")
    s.add_argument("--repository", help="repository the variant's tag is under (default: the manifest's name)")
    s.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BuildFailed as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
