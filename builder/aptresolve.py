"""`lock --apt`: pin the newest Ubuntu packages of the release, -updates and -security pockets.

apt itself does the resolving, so the lock holds what a build would install: mmdebstrap
bootstraps the base from the three pockets (nothing kept, `--format=null`), and inside that
chroot apt simulates each flavor's install. Versions come from dpkg's status and apt's
simulation; the sha256 and pool path of each .deb from the indexes apt read, which apt
trusted only after checking the archive's signature with the manifest's pinned keyring.
"""
from __future__ import annotations

import gzip
import lzma
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from debian import deb822

from builder import aptlock, base
from builder.aptlock import Lock, Pin
from builder.errors import BuildFailed, UserError
from builder.manifest import Manifest

SIMULATED = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) ")


def suites(manifest: Manifest) -> list[str]:
    codename = manifest.os["codename"]
    return [codename, f"{codename}-updates", f"{codename}-security"]


def sources(manifest: Manifest, mirror: str) -> list[str]:
    components = " ".join(manifest.os["bootstrap"]["components"])
    return [f"deb {mirror} {suite} {components}" for suite in suites(manifest)]


def flavor_packages(manifest: Manifest) -> dict[str, list[str]]:
    return {f: list(spec["apt_packages"]) for f, spec in manifest.data["flavors"].items()
            if spec.get("apt_packages")}


def read_index(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".xz"):
        data = lzma.decompress(data)
    return data.decode()


def published(lists: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(package, version) → (sha256, pool path), over every index apt fetched."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for path in sorted(lists.iterdir()):
        if "_Packages" not in path.name:
            continue
        for p in deb822.Packages.iter_paragraphs(read_index(path).splitlines(), use_apt_pkg=False):
            found.setdefault((p["Package"], p["Version"]), (p.get("SHA256", ""), p["Filename"]))
    return found


def installed_status(path: Path) -> dict[str, str]:
    return {p["Package"]: p["Version"] for p in deb822.Deb822.iter_paragraphs(path.read_text().splitlines())
            if p.get("Status", "").endswith(" installed")}


def simulated(path: Path) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in path.read_text().splitlines() if (m := SIMULATED.match(line))}


def resolve(manifest: Manifest, quiet: bool = False) -> Lock:
    """A new lock: what the pockets publish now, as apt would install it."""
    if "bootstrap" not in manifest.os:
        raise UserError("manifest key os: `lock --apt` pins a bootstrapped base (os.bootstrap); "
                        "a registry base (os.image) carries its own packages")
    if shutil.which("mmdebstrap") is None:
        raise UserError("mmdebstrap is not installed: `apt-get install mmdebstrap` (Debian/Ubuntu)")
    flavors = flavor_packages(manifest)
    with tempfile.TemporaryDirectory(prefix="pytorch-cuda-aptlock-") as tmp:
        os.chmod(tmp, 0o755)  # apt reads the keyring as the unprivileged _apt user
        keyring = base.fetch_keyring(manifest, Path(tmp))
        out = Path(tmp) / "out"
        (out / "lists").mkdir(parents=True)
        q = shlex.quote
        hooks = [f'cp "$1/var/lib/dpkg/status" {q(str(out / "status"))}',
                 f'cp "$1"/var/lib/apt/lists/*Packages* {q(str(out / "lists"))}/']
        hooks += [f'chroot "$1" apt-get --simulate --no-install-recommends install {" ".join(map(q, packages))}'
                  f' > {q(str(out / (flavor + ".sim")))}' for flavor, packages in flavors.items()]
        cmd = ["mmdebstrap", "--variant=minbase", "--mode=auto", "--format=null",
               f"--include={','.join(manifest.os['bootstrap']['packages'])}", f"--keyring={keyring}",
               *[f"--customize-hook={h}" for h in hooks],
               manifest.os["codename"], "/dev/null", *sources(manifest, aptlock.mirror(manifest))]
        if not quiet:
            print(f"resolving the Ubuntu packages of {', '.join(suites(manifest))} with mmdebstrap and apt", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise BuildFailed(f"mmdebstrap failed (exit {proc.returncode}) resolving the apt lock:\n{proc.stdout[-4000:]}")
        index = published(out / "lists")
        stages = {"os": installed_status(out / "status")}
        stages.update({flavor: simulated(out / f"{flavor}.sim") for flavor in flavors})
    lock = Lock(aptlock.lock_path(manifest), {}, datetime.now(timezone.utc).replace(microsecond=0))
    for section, versions in stages.items():
        if not versions:
            raise BuildFailed(f"resolving [{section}] found no packages; mmdebstrap's output:\n{proc.stdout[-2000:]}")
        lock.sections[section] = {}
        for name, version in versions.items():
            if (name, version) not in index:
                raise BuildFailed(f"{name}={version} is installed but no index apt read lists it")
            sha256, filename = index[(name, version)]
            lock.sections[section][name] = Pin(name, version, sha256, filename)
    return lock


def lock_apt(manifest: Manifest, quiet: bool = False) -> list[str]:
    """Resolve, write the lock, and return what changed, one line per package and section."""
    path = aptlock.lock_path(manifest)
    old = aptlock.read(path)
    new = resolve(manifest, quiet)
    aptlock.write(new, manifest)
    changed = []
    for section in sorted(set(old.sections) | set(new.sections), key=lambda s: (s != "os", s)):
        changed += [f"[{section}] {line}" for line in aptlock.changes(old.versions(section), new.versions(section))]
    return changed
