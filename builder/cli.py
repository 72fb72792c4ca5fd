"""The command line of build.py: a thin shell over the pipeline modules."""
from __future__ import annotations

import argparse
import difflib
import json
import shutil
import signal
import sys
from pathlib import Path

from builder import (aptlock, aptresolve, audit, blobs, context, diff, engine, facts, lock, manifest, pipeline, record,
                     release, render, tags, upload, verify)
from builder.errors import BuildFailed, UserError

DESCRIPTION = """Build, tag and verify reproducible PyTorch/CUDA images from manifests/images.yaml.

Variants are a flavor (runtime, devel, jupyter, ssh, workstation) on a CUDA build; the
default CUDA build has the bare flavor name, the others a suffix (runtime-cu126).
Exit codes: 0 success, 1 a build or check failed, 2 bad input or unusable environment."""


def command(m: manifest.Manifest, *words: str) -> str:
    """A build.py command line to suggest, with --manifest when the manifest is not the default one,
    so that the hint runs against the manifest the user is working with."""
    default = m.path.resolve() == manifest.MANIFEST.resolve()
    return " ".join(("python build.py", *words) + (() if default else ("--manifest", str(lock.shown(m.path)))))


def missing_locks(m: manifest.Manifest) -> dict[Path, list[manifest.Variant]]:
    """Each lock file that does not exist → the variants (built ones) that need it."""
    missing: dict[Path, list[manifest.Variant]] = {}
    for v in m.variants().values():
        for layer in v.python_layers() if v.built else []:
            if not v.lock_path(layer).exists():
                missing.setdefault(v.lock_path(layer), []).append(v)
    return missing


def cmd_list(args: argparse.Namespace) -> int:
    """A short status per variant, and below the table why a variant cannot be built: the status
    column stays one word or two, so it never pushes the tags out of line."""
    m = manifest.load(args.manifest)
    c = None
    try:
        c = engine.connect()
    except UserError:
        pass
    missing = missing_locks(m)
    rows, notes, stale = [], [], {}
    for name, v in m.variants().items():
        tag = f"{m.name}:{tags.full_tag(tags.expected_versions(v), v.flavor)}"
        if not v.built:
            status = "rendered only"
        elif any(v.lock_path(layer) in missing for layer in v.python_layers()):
            status = "no lock"
        elif lock.stale(v):
            status = "stale lock"
            for problem in lock.stale(v):  # one note per problem, however many variants share the lock
                stale.setdefault(problem.partition("; run `")[0], []).append(v)
        elif c is None:
            status = "buildable (no engine)"
        else:
            status = "built" if c.image_exists(tag) else "not built"
        rows.append((name, status, tag))
    for path, needing in missing.items():
        first = needing[0]
        layer = path.name.removesuffix(f"-{first.cuda.key}.txt")
        maker = first.sibling(layer).name  # locking that variant writes this file (runtime's first)
        notes.append(f"no lock: {lock.shown(path)} does not exist (needed by {', '.join(v.name for v in needing)}); "
                     f"`{command(m, 'lock', maker)}` makes it from {first.cuda.index}")
    for problem, needing in stale.items():
        fix = "" if "fix cuda." in problem else f"; `{command(m, 'lock', needing[0].name)}` resolves it again"
        notes.append(f"stale lock: {problem} (needed by {', '.join(v.name for v in needing)}){fix}")
    widths = [max(len(r[i]) for r in rows + [("variant", "status", "tag")]) for i in range(2)]
    for name, status, tag in [("variant", "status", "tag")] + rows:
        print(f"{name:<{widths[0]}}  {status:<{widths[1]}}  {tag}")
    if notes:
        print()
        print("\n".join(notes))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    out = render.images_dir(m)
    if args.check:
        problems = render.check_drift(m, out)
        for p in problems:
            print(p)
        if problems:
            print(f"{lock.shown(out)}/ is out of date: run `{command(m, 'render', '--all')}` and commit it",
                  file=sys.stderr)
        return 1 if problems else 0
    names = list(m.variants()) if args.all or not args.variant else [m.variant(args.variant).name]
    for path in render.write(m, names, out):
        print(f"wrote {lock.shown(path)}")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    if args.apt:
        changed = aptresolve.lock_apt(m, quiet=args.quiet)
        print("\n".join(changed) if changed else "no Ubuntu package changed")
        out = render.images_dir(m)
        written = render.write(m, list(m.variants()), out)  # the flavors' pinned .debs are in the Dockerfiles
        print(f"wrote {lock.shown(aptlock.lock_path(m))} and {len(written)} files under {lock.shown(out)}/: "
              f"commit them, then build")
        return 0
    chosen = m.variants().values() if args.all or not args.variant else [m.variant(args.variant)]
    failed, unreachable = 0, set()
    done: set = set()
    for v in chosen:
        if v.cuda.index in unreachable:  # said once already; asking again costs uv's retries
            continue
        for layer in v.python_layers():
            path = v.lock_path(layer)
            if path in done:
                continue
            done.add(path)
            try:
                lock.lock(v, layer)
            except lock.IndexUnreachable as exc:  # one line; the variant's other layers need this one
                print(f"error: {exc}", file=sys.stderr)
                unreachable.add(v.cuda.index)
                break
            except BuildFailed as exc:
                print(f"{exc}", file=sys.stderr)
                failed += 1
    return 2 if unreachable else 1 if failed else 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build → verify the image by its ID → record → tag: the tags are the last thing written."""
    m = manifest.load(args.manifest)
    variant = m.variant(args.variant or m.data["default_variant"])
    pipeline.check_buildable(variant)
    c = engine.connect(args.layer_source)
    options = dict(repository=args.repository, ca_bundle=args.ca_bundle, quiet=args.quiet, backend=args.backend)
    if args.check_reproducible:
        first, built = pipeline.check_reproducible(c, variant, **options)
        if first.image_id != built.image_id:
            print(f"NOT reproducible: {first.image_id} != {built.image_id}; nothing was tagged; what differs:",
                  file=sys.stderr, flush=True)
            diff.explain(c, first.image_id, built.image_id, sys.stderr)
            return 1
        print(f"reproducible: both builds gave {built.image_id}")
    else:
        built = pipeline.build(c, variant, nocache=args.no_cache, **options)
    results = [] if args.skip_verify else run_verify(c, built.image_id, variant, args.ca_bundle, built.runtime_id)
    audit_sources = () if args.skip_verify or args.skip_audit else release.AUDIT_SOURCES
    image_id, _ = release.record_build(c, built, results, args.records, quiet=args.quiet, audit_sources=audit_sources)
    if results and not all(r.ok for r in results):
        print(f"verification failed: nothing was tagged; the image stays as {image_id}", file=sys.stderr)
        return 1
    c.tag(image_id, built.refs)
    if not args.quiet:
        print("".join(f"tagged {r}\n" for r in built.refs), end="", flush=True)
    return 0


def run_verify(c: engine.Engine, image: str, variant: manifest.Variant, ca_bundle: str | None,
               runtime_image: str | None = None) -> list[verify.CheckResult]:
    """Verify an image (a reference or an ID) as ``variant``; a flavor's layers are checked against
    ``runtime_image``, or runtime's tag when none is given."""
    if runtime_image is None:
        named = ":" in image and not image.startswith("sha256:")
        repository = image.rpartition(":")[0] if named else variant.manifest.name
        runtime = variant.sibling("runtime")
        runtime_image = f"{repository}:{tags.full_tag(tags.expected_versions(runtime), 'runtime')}"
    evidence = verify.gather(c, image, variant, context.find_ca_bundle(ca_bundle), runtime_image or None)
    print(f"verifying {image} as variant {variant.name}")
    results = verify.run_checks(evidence)
    verify.report(results)
    return results


def cmd_doctor(args: argparse.Namespace) -> int:
    """What the engine probe found, how layers will be read and why, and what is missing."""
    try:
        c = engine.connect(args.layer_source)
    except UserError as exc:
        print(f"engine        none\n              {exc}")
        return 2
    i = c.info
    rows = [("engine", f"Docker {i.server_version} (API {i.api_version}) at {i.docker_host}"
                       + (", rootless" if i.rootless else "") + ("" if i.local else ", remote")),
            ("storage", f"{i.storage_driver or 'unknown'} driver, {i.image_store} image store"),
            ("layers", f"read from the {'engine store' if i.layer_source == 'store' else 'image archive (docker save)'}"),
            ("", i.layer_source_reason),
            ("buildkit", "yes: `build` (backend auto) builds with BuildKit through the docker CLI" if i.buildkit
             else "no (no buildx plugin, no docker CLI older than 23): `build` uses the classic builder")]
    free = engine.free_bytes(i)
    rows.append(("disk", f"{free / 1e9:.1f} GB free in {i.data_root}" if free is not None
                 else f"unknown (the data root {i.data_root or '?'} is not visible to the builder)"))
    problems = []
    if free is not None and free < 30e9:
        problems.append(f"less than 30 GB free in {i.data_root}: a build needs about 15 GB "
                        f"(28 GB on the containerd image store); run `docker system prune`")
    mmdebstrap = shutil.which("mmdebstrap")
    rows.append(("mmdebstrap", mmdebstrap or "missing"))
    if not mmdebstrap and "bootstrap" in manifest.load(args.manifest).os:
        problems.append("mmdebstrap is missing and the manifest bootstraps the base: `apt-get install mmdebstrap` "
                        "(or `make tools`)")
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    for p in problems:
        print(f"problem: {p}")
    blocking = [p for p in problems if "mmdebstrap" in p]
    print("a build can run" if not blocking else "a build cannot run until the problem above is fixed")
    return 2 if blocking else 0


def closest_variant(m: manifest.Manifest, target: str) -> str | None:
    """The variant a name or image reference most likely means: the one whose tags the reference
    carries (any repository), else the nearest variant name; None when nothing is close."""
    variants = m.variants()
    if target in variants:
        return target
    tag = target.rsplit("/", 1)[-1].partition("@")[0].rpartition(":")[2] if ":" in target else ""
    for name, v in variants.items():
        if tag and tag in tags.tags_for(tags.expected_versions(v), v.flavor, m.source_date_epoch):
            return name
    words = [target, tag, tag.rsplit("-", 1)[-1]] if tag else [target]
    for word in filter(None, words):
        close = difflib.get_close_matches(word, variants, n=1, cutoff=0.6)
        if close:
            return close[0]
    return None


def build_hint(m: manifest.Manifest, target: str) -> str:
    """What to run to have the image of ``target``: a real variant's build command, never a
    placeholder, and never a build of something the manifest does not declare."""
    if target in m.variants():
        return f"build it first: `{command(m, 'build', target)}`"
    guess = closest_variant(m, target)
    if guess is not None:
        return (f"{target!r} is not a variant of {lock.shown(m.path)}; did you mean {guess}? "
                f"`{command(m, 'build', guess)}` builds it (`{command(m, 'list')}` shows every variant)")
    return (f"{target!r} is not a variant of {lock.shown(m.path)}, whose variants are {', '.join(m.variants())} "
            f"(`{command(m, 'list')}` shows their status)")


def require_image(c: engine.Engine, m: manifest.Manifest, target: str, image: str) -> None:
    """Stop with a hint naming a real variant when the image is not in the engine."""
    if not c.image_exists(image):
        raise UserError(f"no image {image} in the engine; {build_hint(m, target)}")


def cmd_verify(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    c = engine.connect()
    image = image_of(m, args.target, args.repository)
    variant = m.variant(args.target) if args.target in m.variants() else None
    require_image(c, m, args.target, image)
    if variant is None:
        config = c.run_config(image)
        if not (config.get("Labels") or {}).get("pytorch-cuda.variant"):
            raise UserError(f"image {image} has no pytorch-cuda.variant label: it was not built by build.py; "
                            f"name one of the variants of {lock.shown(m.path)} instead ({', '.join(m.variants())})")
        variant = verify.variant_of(m, config, None)
    return 0 if all(r.ok for r in run_verify(c, image, variant, args.ca_bundle)) else 1


def image_of(m: manifest.Manifest, target: str, repository: str | None) -> str:
    """A variant's full tag in the engine, or the image reference given."""
    if target in m.variants():
        variant = m.variant(target)
        return f"{repository or m.name}:{tags.full_tag(tags.expected_versions(variant), variant.flavor)}"
    return target


def cmd_tags(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    variant = m.variant(args.variant)
    c = engine.connect()
    image = image_of(m, args.variant, args.repository)
    if not c.image_exists(image):
        raise UserError(f"no image {image} in the engine: tags are read from inside the image, so "
                        f"{build_hint(m, args.variant)}")
    found = facts.collect(c, image)
    for tag in tags.tags_for(tags.observed_versions(found), variant.flavor, m.source_date_epoch) + \
            (["latest"] if args.latest else []):
        print(f"{args.repository or m.name}:{tag}")
    return 0


def add_compression(s: argparse.ArgumentParser) -> None:
    s.add_argument("--compression", choices=sorted(blobs.COMPRESSIONS), default="gzip",
                   help="layer compression: gzip (default; every engine pulls it) or zstd (smaller and faster to "
                        "compress; Docker 23+ and containerd 1.5+ pull it, Docker 20.10 does not)")


def cmd_push(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    image = image_of(m, args.target, args.repository)
    auth = None
    if args.username:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            example = command(m, "push", args.target, "--registry", args.registry, "--username", args.username)
            raise UserError(f"--username given: write the password (or token) on standard input, e.g. "
                            f"`echo \"$TOKEN\" | {example}`")
        auth = {"username": args.username, "password": password}
    c = engine.connect()
    require_image(c, m, args.target, image)
    release.push(c, image, args.registry, records_dir=args.records, quiet=args.quiet, auth_config=auth,
                 latest=args.latest, compression=blobs.COMPRESSIONS[args.compression])
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    image = image_of(m, args.target, args.repository)
    c = engine.connect()
    require_image(c, m, args.target, image)
    compression = blobs.COMPRESSIONS[args.compression]
    with blobs.compressors() as pool:
        described = upload.describe(c, image, pool=pool, compression=compression)
    if args.json:
        print(json.dumps({"image": image, "image_id": described.image_id,
                          "manifest_digest": described.digest, "compression": blobs.scheme(compression),
                          "config": {"digest": described.image_id, "size": len(described.config)},
                          "layers": [{"diff_id": b.diff_id, "digest": b.digest, "size": b.size}
                                     for b in described.blobs]}, indent=2))
    else:
        print(described.digest)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    rows = [{"variant": v.name, "flavor": v.flavor, "cuda": v.cuda.key,
             "tag": f"{m.name}:{tags.full_tag(tags.expected_versions(v), v.flavor)}",
             "locked": all(v.lock_path(layer).exists() for layer in v.python_layers())}
            for v in m.variants().values() if v.built]
    if args.locked_only:  # what a CI job can build from the checkout as it is
        rows = [r for r in rows if r["locked"]]
    if args.format == "github":
        print("matrix=" + json.dumps({"include": rows}, separators=(",", ":")))
    else:
        print(json.dumps(rows, indent=2))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    c = engine.connect()
    for image in (args.image_a, args.image_b):
        if not c.image_exists(image):
            raise UserError(f"no image {image} in the engine")
    return 0 if diff.explain(c, args.image_a, args.image_b, sys.stdout, limit=args.limit) else 1


def cmd_audit(args: argparse.Namespace) -> int:
    m = manifest.load(args.manifest)
    sources = [s.strip() for s in args.source.split(",") if s.strip()]
    unknown = [s for s in sources if s not in audit.SOURCES]
    if unknown or not sources:
        raise UserError(f"--source {args.source}: expected a comma-separated list of {', '.join(audit.SOURCES)}")
    c = engine.connect()
    image = image_of(m, args.target, args.repository)
    require_image(c, m, args.target, image)
    build_sbom = release.build_sbom_of(c, image, args.records) if args.sbom else None  # before the slow part
    results = audit.audit(c, image, m, sources, mirror=args.mirror)
    sys.stdout.write(audit.as_json(image, results) if args.json else audit.report(image, results))
    if build_sbom is not None:
        written = release.write_audited_sbom(build_sbom, results, args.sbom, mirror=release.audit_mirror(m, args.mirror))
        print(f"wrote {args.sbom}: version {written['version']} of {build_sbom.name} with the findings "
              f"(sha256 {written['sha256']})", file=sys.stderr)
    return audit.exit_code(results)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=manifest.MANIFEST, help="the manifest (default: %(default)s)")
    # the same option after the command; SUPPRESS leaves the one given before it (or the default) alone
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--manifest", type=Path, default=argparse.SUPPRESS,
                       help="the manifest, after the command or before it (default: manifests/images.yaml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command_parser(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[after], **kwargs)

    s = command_parser("list", help="variants, their tags, and whether each is built in the engine or why it cannot be")
    s.set_defaults(func=cmd_list)

    s = command_parser("render", help="write images/<variant>/ from templates/ and the manifest")
    s.add_argument("variant", nargs="?", help="one variant (default: all)")
    s.add_argument("--all", action="store_true", help="every variant")
    s.add_argument("--check", action="store_true", help="only report drift between images/ and the templates")
    s.set_defaults(func=cmd_render)

    s = command_parser("lock", help="resolve hash-locked requirements into manifests/locks/ (uv); "
                                    "--apt: the Ubuntu packages (apt)")
    s.add_argument("variant", nargs="?", help="one variant's lock (default: all)")
    s.add_argument("--all", action="store_true", help="every lock")
    s.add_argument("--apt", action="store_true",
                   help="pin the newest Ubuntu packages of the release, -updates and -security pockets "
                        "(exact versions and .deb sha256s) in manifests/locks/apt-*.txt and print what changed")
    s.add_argument("--quiet", action="store_true", help="print only what changed")
    s.set_defaults(func=cmd_lock)

    s = command_parser("doctor", help="what engine answers, how its layers will be read and why, what is missing")
    s.add_argument("--layer-source", choices=engine.LAYER_SOURCES, default="auto",
                   help="check this way of reading layers (default: %(default)s)")
    s.set_defaults(func=cmd_doctor)

    s = command_parser("build", help="bootstrap the base if needed, build, verify, record, then tag")
    s.add_argument("variant", nargs="?", help="the variant (default: the manifest's default_variant)")
    s.add_argument("--ca-bundle", help="PEM bundle pip trusts in the build stage only "
                                       "(default: $SSL_CERT_FILE, $REQUESTS_CA_BUNDLE or $PIP_CERT)")
    s.add_argument("--repository", help="image repository name (default: the manifest's name)")
    s.add_argument("--no-cache", action="store_true", help="do not reuse cached layers")
    s.add_argument("--skip-verify", action="store_true",
                   help="record and tag without running verify (nor the security audit)")
    s.add_argument("--skip-audit", action="store_true",
                   help="do not audit the verified image against the Ubuntu pockets and Python advisories "
                        "(the record then says audit: null)")
    s.add_argument("--layer-source", choices=engine.LAYER_SOURCES, default="auto",
                   help="how normalization reads the built layers: the engine's store, the image archive "
                        "(docker save), or auto: the store where it is local and readable (default)")
    s.add_argument("--backend", choices=engine.BACKENDS, default="auto",
                   help="the builder: classic (the engine's API), buildkit (the docker CLI: the build CA as a "
                        "secret, pip's downloads in a cache mount, stages in parallel) or auto: buildkit where "
                        "the CLI can drive it; all give one image ID (default: %(default)s)")
    s.add_argument("--check-reproducible", action="store_true",
                   help="build twice from a cleared cache (base bootstrap included); exit 1 unless the IDs match")
    s.add_argument("--quiet", action="store_true", help="no build output unless a step fails")
    s.add_argument("--records", type=Path, default=record.RECORDS,
                   help="where build records and SBOMs go (default: build/records)")
    s.set_defaults(func=cmd_build)

    s = command_parser("verify", help="run an image and check it; one PASS/FAIL line per check")
    s.add_argument("target", metavar="VARIANT|IMAGE", help="a variant name, or an image reference or ID")
    s.add_argument("--ca-bundle", help="the CA bundle the build used, to prove it did not leak "
                                       "(default: as for build)")
    s.add_argument("--repository", help="repository the variant's tag is under (default: the manifest's name)")
    s.set_defaults(func=cmd_verify)

    s = command_parser("tags", help="the tags of a built variant, read from inside the image")
    s.add_argument("variant")
    s.add_argument("--repository", help="repository name (default: the manifest's name)")
    s.add_argument("--latest", action="store_true", help="also print `latest`")
    s.set_defaults(func=cmd_tags)

    s = command_parser("push", help="push a verified image (every tag), pull it back by digest, record it")
    s.add_argument("target", metavar="VARIANT|IMAGE")
    s.add_argument("--registry", required=True, metavar="HOST[:PORT]/NAMESPACE")
    s.add_argument("--username", help="registry user; the password is read from standard input "
                                      "(default: the Docker config and its credential helpers)")
    s.add_argument("--repository", help="repository the variant's tag is under (default: the manifest's name)")
    s.add_argument("--records", type=Path, default=record.RECORDS, help="build records (default: build/records)")
    s.add_argument("--latest", action="store_true", help="also push `latest`")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    add_compression(s)
    s.set_defaults(func=cmd_push)

    s = command_parser("digest", help="the registry digest a push of the image gives, computed without pushing")
    s.add_argument("target", metavar="VARIANT|IMAGE")
    s.add_argument("--repository", help="repository the variant's tag is under (default: the manifest's name)")
    s.add_argument("--json", action="store_true", help="with the config and each layer's compressed digest and size")
    add_compression(s)
    s.set_defaults(func=cmd_digest)

    s = command_parser("matrix", help="the variant matrix for a CI system to fan out builds")
    s.add_argument("--format", choices=("github", "json"), default="json")
    s.add_argument("--locked-only", action="store_true",
                   help="only the variants whose lock files exist (the ones a build can start from)")
    s.set_defaults(func=cmd_matrix)

    s = command_parser("diff", help="explain how two images differ: config, then files per layer")
    s.add_argument("image_a", metavar="IMAGE_A")
    s.add_argument("image_b", metavar="IMAGE_B")
    s.add_argument("--limit", type=int, default=40, help="paths shown per layer (default: %(default)s)")
    s.set_defaults(func=cmd_diff)

    s = command_parser("audit", help="what in a built image has a published fix it lacks (Ubuntu pockets, "
                                     "Python advisories); exit 0 clean, 1 findings, 2 a source not checked")
    s.add_argument("target", metavar="VARIANT|IMAGE")
    s.add_argument("--source", default=",".join(audit.SOURCES),
                   help="comma-separated: ubuntu (installed packages against the -updates and -security "
                        "pockets), python (pip-audit) (default: %(default)s)")
    s.add_argument("--mirror", help="the Ubuntu archive to compare with (default: the manifest's os.bootstrap.mirror)")
    s.add_argument("--repository", help="repository the variant's tag is under (default: the manifest's name)")
    s.add_argument("--json", action="store_true", help="the findings as JSON")
    s.add_argument("--sbom", type=Path, metavar="PATH",
                   help="also write the image's SBOM (from its build record) as its next version with the "
                        "findings as CycloneDX vulnerabilities")
    s.add_argument("--records", type=Path, default=record.RECORDS,
                   help="where the image's build record and SBOM are (default: build/records)")
    s.set_defaults(func=cmd_audit)
    return p


class Terminated(Exception):
    """SIGTERM, what CI sends on cancel: raised like Ctrl-C so every clean-up runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    c_tagged = engine.TAGGED
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        print(f"{what}: " + (f"after tagging {', '.join(c_tagged)}" if c_tagged else "nothing was tagged"),
              file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    except Exception as exc:
        lost = engine.connection_lost(exc)
        if lost is None:
            if isinstance(exc, BuildFailed):
                print(f"build failed: {exc}", file=sys.stderr)
                return exc.exit_code
            raise
        print(f"error: lost the connection to the Docker engine at {engine.docker_host()} ({lost}); "
              + (f"tagged before that: {', '.join(c_tagged)}" if c_tagged else "nothing was tagged")
              + "; run the same command again once the engine answers", file=sys.stderr)
        return 2
