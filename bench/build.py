#!/usr/bin/env python3
"""Build benchmark: cold, warm and late-change rebuilds of the runtime image, next to a naive
single-stage Dockerfile on the same base; what normalization adds; what each flavor adds on top
of runtime. Writes bench/results/build.json.

Targets: image no larger than the naive one; warm rebuild under 10 s; a late-layer change does
not reinstall torch; a change to one small package's lock entry reinstalls only its venv group, in
at most 60 s; normalization adds at most 30% to a cold build; jupyter and ssh each add under
300 MB. Run with `make bench` (about 30 min on 2 cores).
"""
from __future__ import annotations

import io
import json
import os
import platform
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import context, engine, lock, manifest, pipeline  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "build.json"
NAIVE = """FROM {base}
COPY build-ca.pem /tmp/ca.pem
RUN python3.12 -m venv /venv && PIP_CERT=/tmp/ca.pem /venv/bin/pip install --no-cache-dir {packages}
"""


def edited_context(variant, ca, edit_dockerfile=None, edit_image_json=None) -> io.BytesIO:
    """The pipeline's own build context with one file changed, as a user's edit would."""
    edits = {"Dockerfile": edit_dockerfile, "image.json": edit_image_json}
    return context.edited(context.build_context(variant, ca), {k: v for k, v in edits.items() if v})


def naive_context(base_ref: str, packages: str, ca) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", NAIVE.format(base=base_ref, packages=packages).encode()),
                           ("build-ca.pem", ca.read_bytes() if ca else b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def step_used_cache(build_log: str, needle: str) -> bool:
    """Whether the classic builder took the step whose instruction contains needle from cache."""
    steps = [s for s in build_log.split("Step ") if needle in s.split("\n", 1)[0] or needle in s[:400]]
    return bool(steps) and all("Using cache" in s for s in steps)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - start, 1)


def main() -> int:
    c = engine.connect()
    m = manifest.load()
    variant = m.variant("runtime")
    ca = context.find_ca_bundle(None)
    pipeline.ensure_base(c, variant, quiet=True)
    before = {i.id for i in c.client.images.list(all=True)}
    results: dict = {"machine": {"arch": platform.machine(), "nproc": os.cpu_count()},
                     "variant": variant.name}
    try:
        cold, results["cold_build_s"] = timed(lambda: pipeline.build_and_tag(
            c, variant, repository="pytorch-cuda-bench", ca_bundle=None, nocache=True, quiet=True))
        results["cold_build_phases_s"] = cold.seconds
        results["normalization_overhead"] = round(cold.seconds["normalize"] / cold.seconds["build"], 3)
        _, results["warm_rebuild_s"] = timed(lambda: pipeline.build_and_tag(
            c, variant, repository="pytorch-cuda-bench", quiet=True))
        log = io.StringIO()
        label_id, results["label_change_rebuild_s"] = timed(lambda: engine.build(
            c, edited_context(variant, ca, edit_dockerfile=lambda d: d.replace(
                "CMD [", 'LABEL bench.change="label"\nCMD [')), target="runtime", out=log))
        late_log = io.StringIO()
        late_id, results["late_layer_change_rebuild_s"] = timed(lambda: engine.build(
            c, edited_context(variant, ca, edit_image_json=lambda j: j.replace('"H200": 3.5', '"H200": 3.6')),
            target="runtime", out=late_log))
        results["late_layer_change_reinstalled_torch"] = not step_used_cache(late_log.getvalue(), "install-layer venv-torch")
        results["label_change_reinstalled_torch"] = not step_used_cache(log.getvalue(), "install-layer venv-torch")
        # a change to one small package: the last venv group's lock loses its last entry (the
        # engine build only; normalization then rewrites just that group's layer)
        group = list(m.venv_layers)[-1]
        bump_log = io.StringIO()
        bump_id, results["lock_bump_rebuild_s"] = timed(lambda: engine.build(
            c, context.edited(context.build_context(variant, ca), {
                f"venv-{group}.lock": lambda t: t.replace(lock.blocks(t)[-1][1], "")}),
            target="runtime", out=bump_log))
        results["lock_bump_reinstalled"] = [g for g in m.venv_layers
                                            if not step_used_cache(bump_log.getvalue(), f"install-layer venv-{g} ")]
        # the naive image (torch and numpy), and one with the same packages as ours
        naive_id, results["naive_cold_build_s"] = timed(lambda: engine.build(
            c, naive_context(m.base_ref, f"torch=={variant.cuda.torch} numpy", ca), target="", nocache=True, quiet=True))
        same_id, results["naive_same_packages_cold_build_s"] = timed(lambda: engine.build(
            c, naive_context(m.base_ref, " ".join(variant.requirements("runtime")), ca), target="", nocache=True,
            quiet=True))
        results["naive_same_packages_image_size_bytes"] = c.client.images.get(same_id).attrs["Size"]
        results["image_size_bytes"] = c.client.images.get(cold.image_id).attrs["Size"]
        results["flavor_added_bytes"] = {}
        for flavor in ("devel", "jupyter", "ssh", "workstation"):
            built, seconds = timed(lambda: pipeline.build_and_tag(c, m.variant(flavor), repository="pytorch-cuda-bench",
                                                          quiet=True))
            results["flavor_added_bytes"][flavor] = c.client.images.get(built.image_id).attrs["Size"] - results["image_size_bytes"]
            results[f"{flavor}_build_on_warm_runtime_s"] = seconds
        results["naive_image_size_bytes"] = c.client.images.get(naive_id).attrs["Size"]
        results["targets"] = {
            "image_not_larger_than_naive": results["image_size_bytes"] <= results["naive_image_size_bytes"],
            "image_not_larger_than_naive_with_the_same_packages":
                results["image_size_bytes"] <= results["naive_same_packages_image_size_bytes"],
            "warm_rebuild_under_10s": results["warm_rebuild_s"] < 10,
            "late_change_does_not_reinstall_torch": not results["late_layer_change_reinstalled_torch"],
            "lock_bump_rebuilds_only_its_group_under_60s":
                results["lock_bump_reinstalled"] == [group] and results["lock_bump_rebuild_s"] <= 60,
            "normalization_adds_at_most_30_percent": results["normalization_overhead"] <= 0.30,
            "jupyter_and_ssh_add_under_300MB": all(results["flavor_added_bytes"][f] < 300e6 for f in ("jupyter", "ssh")),
        }
    finally:
        for image in c.client.images.list(all=True):
            c.untag([t for t in image.tags if t.startswith("pytorch-cuda-bench:")])
        for image in c.client.images.list(all=True):
            if image.id not in before:
                try:
                    c.client.images.remove(image.id, force=True)
                except Exception:
                    pass
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results |= {k: earlier[k] for k in ("rows", "sizes") if k in earlier}  # bench/backends.py's and sizes.py's
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
