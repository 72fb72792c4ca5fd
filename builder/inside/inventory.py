"""Runs INSIDE an image (python -c): lists every Python distribution and every dpkg package, as one JSON line.

The SBOM is made from this report, so it lists what is really in the image, not what the lock
meant to put there. Standard library only; it also runs on a host (the unit tests do that).
Usage: python -c "$(cat inventory.py)"
"""
import importlib.metadata
import json
import subprocess


def python_packages():
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[(name, dist.version)] = {"name": name, "version": dist.version}
    return sorted(found.values(), key=lambda p: (p["name"].lower(), p["version"]))


def deb_packages():
    """Installed packages only (status "ii"), and an error text; None when there is no dpkg."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"],
                              capture_output=True, text=True)
    except FileNotFoundError:
        return None, None
    if proc.returncode != 0:
        return None, f"dpkg-query exited {proc.returncode}: {proc.stderr.strip()[:500]}"
    packages = []
    for line in proc.stdout.splitlines():
        status, name, version, arch = line.split("\t")
        if status.strip() == "ii":
            packages.append({"name": name, "version": version, "arch": arch})
    return sorted(packages, key=lambda p: (p["name"], p["arch"])), None


def os_release():
    fields = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("=")
                fields[key] = value.strip('"')
    except OSError:
        pass
    return {"id": fields.get("ID"), "version": fields.get("VERSION_ID")}


deb, deb_error = deb_packages()
print("INVENTORY " + json.dumps({"python": python_packages(), "deb": deb, "deb_error": deb_error,
                                 "os": os_release()}, sort_keys=True))
