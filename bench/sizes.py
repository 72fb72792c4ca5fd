#!/usr/bin/env python3
"""Size benchmark: what each flavor adds on top of runtime, and what the workstation additions
(tools a person expects, torchvision/torchaudio/uv, the user-owned venv) cost against the
baseline measured before them. Updates the `sizes` entry of bench/results/build.json.

Target: workstation tools and the writable-install choice together add under 400 MB.
Run with `make bench-sizes` (builds from the layer cache; minutes when runtime is cached).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import engine, manifest, pipeline  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "build.json"
# measured by bench/build.py before the workstation additions (runtime image and flavors)
BASELINE = {"runtime": 7307861259, "flavor_added": {"devel": 110422674, "jupyter": 178074913,
                                                    "ssh": 12317373, "workstation": 300814960}}
NEW_PACKAGES = ("torchvision", "torchaudio", "pillow", "uv")
# bytes on disk of a distribution's files and their byte-compiled twins (not all are in RECORD)
DIST_BYTES = """
import importlib.metadata as m, os, sys
for name in sys.argv[1:]:
    d = m.distribution(name)
    tops = {str(f).split("/")[0] for f in d.files if not str(f).startswith("..")}
    total = 0
    for top in tops:
        path = os.path.join(str(d.locate_file("")), top)
        if os.path.isfile(path):
            total += os.path.getsize(path)
        for base, dirs, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(base, f)) for f in files
                         if not os.path.islink(os.path.join(base, f)))
    bin_files = [f for f in d.files if str(f).startswith("../../../bin/")]
    total += sum(os.path.getsize(d.locate_file(f)) for f in bin_files)
    print(name, total)
"""


def main() -> int:
    c = engine.connect()
    m = manifest.load()
    sizes: dict[str, int] = {}
    for flavor in ("runtime", "devel", "jupyter", "ssh", "workstation"):
        built = pipeline.build_and_tag(c, m.variant(flavor), repository="pytorch-cuda-bench", quiet=True)
        sizes[flavor] = c.size(built.image_id)
        if flavor == "runtime":
            runtime_id = built.image_id
    out = c.run(runtime_id, ["python", "-c", DIST_BYTES, *NEW_PACKAGES]).output.split()
    by_package = {out[i]: int(out[i + 1]) for i in range(0, len(out) - 1, 2)}
    added = {f: sizes[f] - sizes["runtime"] for f in sizes if f != "runtime"}
    runtime_added = sizes["runtime"] - BASELINE["runtime"]
    tools = added["workstation"] - (added["devel"] + added["jupyter"] + added["ssh"])
    # what runtime grew by that the new packages do not explain: the user-owned venv and lock bumps
    ownership = runtime_added - sum(by_package.values())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    report = {
        "commit": commit,
        "runtime_bytes": sizes["runtime"],
        "runtime_baseline_bytes": BASELINE["runtime"],
        "runtime_added_bytes": runtime_added,
        "runtime_added_by_package_bytes": by_package,
        "writable_install_bytes": ownership,
        "writable_install_note": "runtime's growth minus the new packages: the user-owned venv plus whatever else "
                                 "changed since the baseline (base and lock bumps); at or below 0, owning costs "
                                 "nothing measurable (uid/gid are fields of each tar header)",
        "flavor_added_bytes": added,
        "flavor_added_baseline_bytes": BASELINE["flavor_added"],
        "workstation_tools_bytes": tools,
        "workstation_added_over_baseline_bytes": sizes["workstation"] - BASELINE["runtime"]
        - BASELINE["flavor_added"]["workstation"] - sum(by_package.values()),
        "targets": {"tools_and_writable_install_under_400MB": tools + max(ownership, 0) < 400e6},
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["sizes"] = report
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
