#!/usr/bin/env python3
"""Side by side on one engine, in one run: the runtime image cold-built by each backend this
engine has (classic, BuildKit), its warm rebuild and a rebuild after a one-package lock bump,
next to a naive single-stage Dockerfile with the same packages; push of runtime by the project's
own upload (its manifest digest, compressed size) and by the engine's `docker push`, and of the
naive image, each to a fresh local registry; pull into an engine that holds none of their layers;
the builder's peak memory.
Adds one row per engine and backend to bench/results/build.json (`rows`, replacing that engine
and backend's earlier row).

Targets (on 2 cores): BuildKit cold build (base + build + normalize) ≤ 1.3× the naive build; lock
bump rebuild ≤ 60 s reinstalling no torch or NVIDIA group; push ≤ 0.6× the naive push and ≤ 0.6×
the engine's push of the same image, pull ≤
the naive pull; image not larger than the naive one; builder peak RSS < 512 MB; both backends
one image ID. Run with `make bench` (about 40 min on 2 cores, ~45 GB of disk at its peak).

    python bench/backends.py [--backends classic,buildkit]
    python bench/backends.py --cold BACKEND   (one cold build in this process; prints JSON)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from build import RESULTS, naive_context, timed  # noqa: E402  (bench/build.py)

from builder import blobs, context, engine, lock, manifest, pipeline, registry, upload  # noqa: E402
from builder.engine.buildlog import downloaded, reinstalled  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

REPOSITORY = "pytorch-cuda-bench"
NAIVE = "pytorch-cuda-bench-naive"


def peak_rss_mb() -> float:
    """This process's peak RSS and its children's (the docker CLI for BuildKit), the larger, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def cold(backend: str) -> dict:
    """One cold build as a user's first `build` runs it: the base bootstrapped, no layer cache, no
    BuildKit cache, an empty project cache (main gives each backend its own XDG_CACHE_HOME). Run
    in a child process (--cold) so its peak RSS is its own."""
    c = engine.connect()
    variant = manifest.load().variant("runtime")
    c.untag([variant.manifest.base_ref])
    built, seconds = timed(lambda: pipeline.build_and_tag(c, variant, repository=REPOSITORY, nocache=True,
                                                          quiet=True, backend=backend))
    return {"image_id": built.image_id, "raw_id": built.raw_id, "cold_build_s": seconds,
            "cold_build_phases_s": built.seconds, "peak_rss_mb": peak_rss_mb()}


def lock_bump(c: engine.Engine, m: manifest.Manifest, backend: str) -> dict:
    """The last venv group's lock loses its last entry, as a bump of one small package changes it;
    engine build plus normalization (which rewrites only the layers that changed)."""
    variant = m.variant("runtime")
    group = list(m.venv_layers)[-1]
    ca = context.find_ca_bundle(None)
    edit = {f"venv-{group}.lock": lambda text: text.replace(lock.blocks(text)[-1][1], "")}
    log = io.StringIO()
    started = time.perf_counter()
    raw_id = pipeline.engine_build(c, variant, backend, ca=ca, edit=edit, out=log)
    image_id = pipeline.normalize(c, raw_id, m.source_date_epoch, quiet=True)[0]
    seconds = round(time.perf_counter() - started, 1)
    again = [g for g in m.venv_layers if reinstalled(log.getvalue(), backend, g)]
    # what pip downloaded again, and which of it belongs to the other groups (torch, NVIDIA, triton)
    fetched = downloaded(log.getvalue())
    parts = lock.split(variant.lock_path("runtime").read_text(), m.venv_layers)
    big = {canonicalize_name(name) for g, text in parts.items() if g != group for name, _ in lock.blocks(text)}
    for image in (image_id, raw_id):
        c.remove_image(image, force=True)
    return {"lock_bump_rebuild_s": seconds, "lock_bump_group": group, "lock_bump_reinstalled": again,
            "lock_bump_downloaded": fetched,
            "lock_bump_downloaded_big_wheels": sorted(set(fetched) & big)}


def start_registry(port: int, folder: str) -> str:
    env = {**os.environ, "REGISTRY_PORT": str(port), "REGISTRY_DIR": folder}
    subprocess.run([str(ROOT / "scripts" / "start-registry")], env=env, check=True, stdout=subprocess.DEVNULL)
    return f"127.0.0.1:{port}"


def stop_registry(port: int, folder: str) -> None:
    env = {**os.environ, "REGISTRY_PORT": str(port), "REGISTRY_DIR": folder}
    subprocess.run([str(ROOT / "scripts" / "stop-registry")], env=env, check=False, stdout=subprocess.DEVNULL)


def own_push(c: engine.Engine, image_id: str, address: str) -> tuple[str, int]:
    """The project's push (builder/upload.py) with no blob compressed before: (manifest digest,
    compressed bytes)."""
    previous = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory(prefix="pytorch-cuda-bench-blobs-") as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        try:
            with blobs.compressors() as pool:
                pushed = upload.push(c, image_id, address, "bench/runtime", ["bench"], pool=pool,
                                     say=lambda line: None)
        finally:  # not left pointing at a removed folder
            if previous is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = previous
        return pushed.digest, pushed.bytes_sent


def push_and_pull(c: engine.Engine, runtime_id: str, naive_id: str, before: set[str]) -> dict:
    """Each push to its own fresh registry: runtime by the project's push and by the engine's
    (`docker push`), the naive image by the engine's. Then every image this run made is removed
    (so the engine holds none of their layers: nothing from before shares them, main checks), and
    runtime (the project's push) and the naive image are pulled back by digest, timed."""
    out: dict = {}
    pushes = ["runtime", "runtime_engine", "naive"]
    with tempfile.TemporaryDirectory(prefix="pytorch-cuda-bench-registry-") as folder:
        ports = {name: 5100 + i for i, name in enumerate(pushes)}
        try:
            addresses = {name: start_registry(ports[name], os.path.join(folder, name)) for name in pushes}
            (digest, out["compressed_bytes"]), out["push_s"] = timed(lambda: own_push(c, runtime_id, addresses["runtime"]))
            out["manifest_digest"] = digest
            refs = {"runtime": f"{addresses['runtime']}/bench/runtime@{digest}"}
            for name, image_id in [("runtime_engine", runtime_id), ("naive", naive_id)]:
                digests, out[f"{name}_push_s"] = timed(lambda: registry.push(
                    c, image_id, [f"{name}:bench"], addresses[name], "bench", quiet=True))
                (remote, pushed), = digests.items()
                refs[name] = f"{remote.rpartition(':')[0]}@{pushed}"
            remove_created(c, before)
            for name in ("runtime", "naive"):
                _, out[f"{name}_pull_s"] = timed(lambda: c.pull(refs[name]))
                c.remove_image(refs[name], force=True)
        finally:
            for name in pushes:
                stop_registry(ports[name], os.path.join(folder, name))
    return out


def remove_created(c: engine.Engine, before: set[str]) -> None:
    for image in c.client.images.list(all=True):
        c.untag([t for t in image.tags if t.startswith((REPOSITORY + ":", NAIVE + ":"))])
    for image in c.client.images.list(all=True):
        if image.id not in before:
            try:
                c.client.images.remove(image.id, force=True)
            except engine.APIError:
                pass


def sharing_layers(c: engine.Engine, before: set[str], diff_ids: set[str]) -> list[str]:
    """Images that were here before the run and hold some of these layers: a pull would skip them."""
    return [i for i in before if diff_ids & set(c.diff_ids(i))]


def write(rows: list[dict]) -> int:
    """Merge into build.json: these rows replace earlier ones of the same engine and backend."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    mine = {(r["engine"], r["backend"]) for r in rows}
    results["rows"] = [r for r in results.get("rows", []) if (r["engine"], r["backend"]) not in mine] + rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return 0


def targets(row: dict) -> dict:
    return {
        "cold_build_at_most_1.3x_naive": row["cold_build_s"] <= 1.3 * row["naive_cold_build_s"],
        "lock_bump_under_60s_without_big_wheels": row["lock_bump_rebuild_s"] <= 60
        and not row["lock_bump_downloaded_big_wheels"] and row["lock_bump_reinstalled"] == [row["lock_bump_group"]],
        "push_at_most_0.6x_naive": row["push_s"] <= 0.6 * row["naive_push_s"],
        "push_at_most_0.6x_engine_push": row["push_s"] <= 0.6 * row["engine_push_s"],
        "pull_at_most_naive": row["pull_s"] <= row["naive_pull_s"],
        "not_larger_than_naive": row["image_bytes"] <= row["naive_image_bytes"],
        "peak_rss_under_512MB": row["peak_rss_mb"] < 512,
        "identical_ids": row["identical_ids"],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="", help="comma-separated; default: classic, and buildkit where the engine has it")
    parser.add_argument("--cold", choices=pipeline.BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        print(json.dumps(cold(args.cold)))
        return 0
    c = engine.connect()
    m = manifest.load()
    variant = m.variant("runtime")
    backends = args.backends.split(",") if args.backends else ["classic"] + (["buildkit"] if c.info.buildkit else [])
    name = f"Docker {c.info.server_version}, {c.info.image_store} store"
    before = set(c.image_ids(all=True))
    rows = []
    try:
        for backend in backends:
            if backend == "buildkit":
                c.client.api.prune_builds(all=True)  # pip's cache mount included: a cold build downloads
            with tempfile.TemporaryDirectory(prefix="pytorch-cuda-bench-cache-") as cache:
                os.environ["XDG_CACHE_HOME"] = cache  # the child's, then this backend's rebuilds'
                child = subprocess.run([sys.executable, __file__, "--cold", backend], check=True,
                                       stdout=subprocess.PIPE, text=True)
                row = {"engine": name, "backend": backend, **json.loads(child.stdout.splitlines()[-1])}
                _, row["warm_rebuild_s"] = timed(lambda: pipeline.build(c, variant, quiet=True, backend=backend))
                row |= lock_bump(c, m, backend)
            row["image_bytes"] = c.size(row["image_id"])
            rows.append(row)
        shared = sharing_layers(c, before, set(c.diff_ids(rows[0]["image_id"])) - set(c.diff_ids(m.base_ref)))
        if shared:
            print(f"bench: images from before the run hold runtime's layers ({', '.join(shared)}): remove them "
                  f"for a pull that moves every layer", file=sys.stderr)
            return 2
        ca = context.find_ca_bundle(None)
        naive_id, naive_s = timed(lambda: c.build(naive_context(m.base_ref, " ".join(variant.requirements("runtime")), ca),
                                                  target="", nocache=True, quiet=True))
        naive_bytes = c.size(naive_id)
        moved = push_and_pull(c, rows[0]["image_id"], naive_id, before)
        for row in rows:
            row |= {"naive_cold_build_s": naive_s, "naive_image_bytes": naive_bytes,
                    "push_s": moved["push_s"], "engine_push_s": moved["runtime_engine_push_s"],
                    "naive_push_s": moved["naive_push_s"], "manifest_digest": moved["manifest_digest"],
                    "compression": blobs.scheme(), "compressed_bytes": moved["compressed_bytes"],
                    "pull_s": moved["runtime_pull_s"], "naive_pull_s": moved["naive_pull_s"],
                    "identical_ids": len({r["image_id"] for r in rows}) == 1}
            row["targets"] = targets(row)
    finally:
        remove_created(c, before)
        c.client.api.prune_builds(all=True)
    return write(rows)


if __name__ == "__main__":
    sys.exit(main())
