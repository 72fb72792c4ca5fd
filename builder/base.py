"""The base image: an Ubuntu root filesystem bootstrapped with mmdebstrap, or a pinned registry image.

These machines reach the Ubuntu archive but no registry, so the default base is made locally,
from pinned inputs, and imported under a tag that names those inputs (see Manifest.base_ref).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from debian import debfile

from builder import aptlock, engine, normalize
from builder.engine import Engine
from builder.errors import BuildFailed, UserError
from builder.manifest import Manifest


FILE_MIRROR_HOOKS = "/usr/share/mmdebstrap/hooks/file-mirror-automount"  # makes file:// mirrors visible in the chroot


def ensure_base(c: Engine, manifest: Manifest, quiet: bool = False) -> str:
    """Return the base reference, bootstrapping (or pulling) it only if the engine lacks it."""
    ref = manifest.base_ref
    if c.image_exists(ref):
        return ref
    if "image" in manifest.os:
        return pull_pinned(c, ref)
    pins = aptlock.pins(aptlock.read(aptlock.lock_path(manifest)), "os")
    with tempfile.TemporaryDirectory(prefix="pytorch-cuda-base-") as tmp:
        os.chmod(tmp, 0o755)  # apt reads the local repository as the unprivileged _apt user
        repo = local_repository(pins, aptlock.mirror(manifest), Path(tmp) / "repo", manifest.os["codename"], quiet)
        rootfs = Path(tmp) / "rootfs.tar"
        bootstrap(manifest, pins, repo, rootfs, quiet)
        canonical = Path(tmp) / "rootfs-canonical.tar"
        with open(rootfs, "rb") as src, open(canonical, "wb") as dst:
            # imported in the form normalization gives it, the base layer is never rewritten again
            normalize.normalize_layer(src, dst, manifest.source_date_epoch)
        rootfs.unlink()
        import_rootfs(c, canonical, ref)
    return ref


def local_repository(pins: list[aptlock.Pin], archive: str, repo: Path, codename: str, quiet: bool) -> Path:
    """An apt repository (suite `codename`, component main) holding exactly the pinned .debs,
    each checked against its sha256.

    mmdebstrap installs from it alone, so apt has one candidate per package: the lock's. The
    .debs come from the user's cache, or from the archive once (then they are cached).
    """
    pool, index = repo / "pool", repo / "dists" / codename / "main" / "binary-amd64"
    pool.mkdir(parents=True)
    index.mkdir(parents=True)
    if not quiet:
        print(f"fetching {len(pins)} pinned Ubuntu packages (sha256 checked; cache: "
              f"{aptlock.cached_deb('x').parent})", flush=True)
    stanzas = []
    for pin, deb in aptlock.fetch_debs(pins, archive):
        target = pool / pin.deb
        shutil.copyfile(deb, target)
        control = debfile.DebFile(str(target)).debcontrol()
        control["Filename"] = f"pool/{pin.deb}"
        control["Size"] = str(target.stat().st_size)
        control["SHA256"] = pin.sha256
        stanzas.append(control.dump())
    packages = "\n".join(stanzas).encode()
    (index / "Packages").write_bytes(packages)
    (repo / "dists" / codename / "Release").write_text(
        f"Suite: {codename}\nCodename: {codename}\nArchitectures: amd64 all\nComponents: main\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n")
    for path in [repo, *repo.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return repo


def pull_pinned(c: Engine, ref: str) -> str:
    try:
        c.pull(ref)
    except engine.APIError as exc:
        raise UserError(f"manifest key os.image: cannot pull {ref} ({exc.explanation or exc}); "
                        f"this machine may not reach that registry: use os.bootstrap instead, or "
                        f"`docker load` the image first") from None
    return ref


def fetch_keyring(manifest: Manifest, tmp: Path) -> Path:
    """The archive keyring .deb (the .deb cache, checked against the manifest's sha256), unpacked."""
    spec = manifest.os["bootstrap"]["keyring"]
    try:
        deb = aptlock.fetch_checked(spec["url"], spec["sha256"], "the archive keyring", timeout=60,
                                    pinned_by="the manifest")
    except (UserError, BuildFailed) as exc:
        raise UserError(f"manifest keys os.bootstrap.keyring.url/sha256: {exc}; do not build on an "
                        f"unverified keyring") from None
    unpacked = tmp / "keyring"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    keyring = unpacked / spec["path"]
    if not keyring.is_file():
        raise UserError(f"manifest key os.bootstrap.keyring.path: {spec['path']} is not in {spec['url']}")
    return keyring


def image_sources(manifest: Manifest) -> str:
    """/etc/apt/sources.list.d/ubuntu.sources in the image: the release and both pockets, so a
    user's `apt-get install` gets security fixes; the build itself never reads it."""
    boot, codename = manifest.os["bootstrap"], manifest.os["codename"]
    return (f"Types: deb\nURIs: {boot['mirror']}\nSuites: {codename} {codename}-updates {codename}-security\n"
            f"Components: {' '.join(boot['components'])}\n"
            f"Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n")


def mmdebstrap_command(manifest: Manifest, pins: list[aptlock.Pin], repo: Path, out: Path) -> list[str]:
    """Essential packages first, then every other package of the lock by name: the lock alone
    says what is installed (the archive's priority overrides, which minbase reads, are not in
    the .debs)."""
    os_, user = manifest.os, manifest.user
    hook = (f'chroot "$1" useradd --create-home --uid {user["uid"]} --user-group --shell /bin/bash {user["name"]}'
            f' && install -d -o {user["uid"]} -g {user["uid"]} "$1/workspace"')
    sources = (f'rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*'
               f' && printf %s {shlex.quote(image_sources(manifest))} > "$1/etc/apt/sources.list.d/ubuntu.sources"')
    return ["mmdebstrap", "--variant=essential", "--mode=auto", "--format=tar",
            f"--include={','.join(p.name for p in pins)}",
            f"--hook-dir={FILE_MIRROR_HOOKS}",
            f"--customize-hook={hook}",
            f"--customize-hook={sources}",
            os_["codename"], str(out), f"deb [trusted=yes] file://{repo} {os_['codename']} main"]


def bootstrap(manifest: Manifest, pins: list[aptlock.Pin], repo: Path, out: Path, quiet: bool) -> None:
    if shutil.which("mmdebstrap") is None:
        raise UserError("mmdebstrap is not installed: `apt-get install mmdebstrap` (Debian/Ubuntu), "
                        "or name a registry base under os.image in the manifest")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(manifest.source_date_epoch)}
    cmd = mmdebstrap_command(manifest, pins, repo, out)
    if not quiet:
        print(f"bootstrapping {manifest.base_ref} with mmdebstrap ({manifest.os['codename']})", flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BuildFailed(f"mmdebstrap failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    if not quiet:
        sys.stdout.write(proc.stdout[-400:])


def import_rootfs(c: Engine, rootfs: Path, ref: str) -> None:
    repo, _, tag = ref.rpartition(":")
    c.import_image(str(rootfs), repo, tag, changes=['CMD ["/bin/bash"]'])
