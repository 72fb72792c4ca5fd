"""The base image: an Ubuntu root filesystem bootstrapped with mmdebstrap, or a pinned registry image.

These machines reach the Ubuntu archive but no registry, so the default base is made locally,
from pinned inputs, and imported under a tag that names those inputs (see Manifest.base_ref).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path


from builder import engine, normalize
from builder.engine import Engine
from builder.errors import BuildFailed, UserError
from builder.manifest import Manifest


def ensure_base(c: Engine, manifest: Manifest, quiet: bool = False) -> str:
    """Return the base reference, bootstrapping (or pulling) it only if the engine lacks it."""
    ref = manifest.base_ref
    if c.image_exists(ref):
        return ref
    if "image" in manifest.os:
        return pull_pinned(c, ref)
    with tempfile.TemporaryDirectory(prefix="pytorch-cuda-base-") as tmp:
        os.chmod(tmp, 0o755)  # apt reads the keyring as the unprivileged _apt user
        keyring = fetch_keyring(manifest, Path(tmp))
        rootfs = Path(tmp) / "rootfs.tar"
        bootstrap(manifest, keyring, rootfs, quiet)
        canonical = Path(tmp) / "rootfs-canonical.tar"
        with open(rootfs, "rb") as src, open(canonical, "wb") as dst:
            # imported in the form normalization gives it, the base layer is never rewritten again
            normalize.normalize_layer(src, dst, manifest.source_date_epoch)
        rootfs.unlink()
        import_rootfs(c, canonical, ref)
    return ref


def pull_pinned(c: Engine, ref: str) -> str:
    try:
        c.pull(ref)
    except engine.APIError as exc:
        raise UserError(f"manifest key os.image: cannot pull {ref} ({exc.explanation or exc}); "
                        f"this machine may not reach that registry: use os.bootstrap instead, or "
                        f"`docker load` the image first") from None
    return ref


def fetch_keyring(manifest: Manifest, tmp: Path) -> Path:
    """Download the archive keyring .deb, check its sha256, and unpack the keyring file."""
    spec = manifest.os["bootstrap"]["keyring"]
    deb = tmp / "keyring.deb"
    try:
        with urllib.request.urlopen(spec["url"], timeout=60) as response:
            deb.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"manifest key os.bootstrap.keyring.url: cannot fetch {spec['url']} ({exc})") from None
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != spec["sha256"]:
        raise UserError(f"manifest key os.bootstrap.keyring.sha256: {spec['url']} has sha256 {digest}, "
                        f"expected {spec['sha256']}; do not build on an unverified keyring")
    unpacked = tmp / "keyring"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    keyring = unpacked / spec["path"]
    if not keyring.is_file():
        raise UserError(f"manifest key os.bootstrap.keyring.path: {spec['path']} is not in {spec['url']}")
    return keyring


SNAPSHOTS = "http://snapshot.ubuntu.com/ubuntu"


def mirror(manifest: Manifest) -> str:
    """The archive the base (and every later apt-get in the image) installs from.

    With os.bootstrap.snapshot the archive as it was at that instant (snapshot.ubuntu.com),
    so updates pockets could be pinned too; without, the mirror's release pocket, which does
    not move after release.
    """
    boot = manifest.os["bootstrap"]
    return f"{SNAPSHOTS}/{boot['snapshot']}" if boot.get("snapshot") else boot["mirror"]


def mmdebstrap_command(manifest: Manifest, keyring: Path, out: Path) -> list[str]:
    os_, boot, user = manifest.os, manifest.os["bootstrap"], manifest.user
    hook = (f'chroot "$1" useradd --create-home --uid {user["uid"]} --user-group --shell /bin/bash {user["name"]}'
            f' && install -d -o {user["uid"]} -g {user["uid"]} "$1/workspace"')
    return ["mmdebstrap", "--variant=minbase", "--mode=auto", "--format=tar",
            f"--components={','.join(boot['components'])}",
            f"--include={','.join(boot['packages'])}",
            f"--keyring={keyring}",
            f"--customize-hook={hook}",
            os_["codename"], str(out), mirror(manifest)]


def bootstrap(manifest: Manifest, keyring: Path, out: Path, quiet: bool) -> None:
    if shutil.which("mmdebstrap") is None:
        raise UserError("mmdebstrap is not installed: `apt-get install mmdebstrap` (Debian/Ubuntu), "
                        "or name a registry base under os.image in the manifest")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(manifest.source_date_epoch)}
    cmd = mmdebstrap_command(manifest, keyring, out)
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
