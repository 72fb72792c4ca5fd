"""What a build's log says about its steps, in either builder's spelling: which venv groups a
rebuild installed again rather than took from the cache (the lock-bump test and bench stand on it)."""
from __future__ import annotations

import re

from packaging.utils import canonicalize_name


def reinstalled(build_log: str, backend: str, group: str) -> bool:
    """Whether the build ran a venv group's install step rather than taking it from the cache
    (a log without that step counts as reinstalled: nothing shows it was cached)."""
    needle = f"install-layer venv-{group} "
    if backend == "classic":
        # "Step 14/40 : RUN … install-layer venv-torch …" then " ---> Using cache"
        steps = [s for s in build_log.split("Step ")[1:] if needle in s.split("\n", 1)[0]]
        return not steps or any("Using cache" not in s for s in steps)
    # BuildKit's plain progress: "#12 [venv-torch 2/3] RUN … install-layer venv-torch …", then
    # "#12 CACHED" for a step taken from the cache
    steps = re.findall(rf"^(#\d+) \[[^\]]*\] RUN .*{re.escape(needle)}", build_log, flags=re.M)
    return not steps or any(f"\n{step} CACHED" not in build_log for step in steps)


def downloaded(build_log: str) -> list[str]:
    """The distributions pip downloaded rather than took from its cache, by name (pip prints
    "Downloading numpy-2.3.2-cp312-….whl (16.6 MB)", or the file's URL; "Using cached …" otherwise)."""
    names = []
    for file in re.findall(r"Downloading (\S+\.(?:whl|tar\.gz|zip))\b", build_log):
        name = file.rsplit("/", 1)[-1].split("-", 1)[0]
        names.append(canonicalize_name(name))
    return sorted(set(names))
