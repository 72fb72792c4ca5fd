#!/usr/bin/env python3
"""Double builds of the runtime image: the issue's "identical IDs in 10 of 10 double builds".

Each run is `build.py build runtime --check-reproducible`: two builds from a cleared layer cache
with a freshly bootstrapped base, here also with an empty normalization cache, so nothing of
one build helps the other. Every run is appended to bench/results/reproducible.json as it ends
(image IDs, seconds), so an interrupted series keeps what it measured. What a run creates is
removed before the next (one run needs about 40 GB of disk at its peak).

    python bench/reproducible.py --runs 10      # about 10 minutes a run on 2 cores
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder import engine, manifest, pipeline  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reproducible.json"
REPOSITORY = "pytorch-cuda-bench"


def remove_created(c, before: set[str], base_ref: str) -> None:
    """Remove every image this run made (tags under REPOSITORY, raw builds, the base)."""
    for image in c.client.images.list():
        c.untag([t for t in image.tags if t.startswith(REPOSITORY + ":")])
    leftovers = [i.id for i in c.client.images.list(filters={"dangling": True}) if i.id not in before]
    leftovers += [i.id for i in c.client.images.list() if i.id not in before and not i.tags]
    if c.image_exists(base_ref) and c.image_id(base_ref) not in before:
        leftovers.append(c.image_id(base_ref))
    for image_id in dict.fromkeys(leftovers):
        try:
            c.client.images.remove(image_id, force=True)
        except Exception as exc:  # noqa: BLE001 - report and go on: the next run must still start
            print(f"cleanup: could not remove {image_id}: {exc}", flush=True)


def median(values: list[float], digits: int = 1) -> float | None:
    return round(statistics.median(values), digits) if values else None


def where_normalization_goes(runs: list[dict]) -> dict:
    """Medians per part, by where the layers were read (the engine's store, or `docker save`)
    and by build. The first build of a run loads layers the engine has never held (it registers
    them: the truly cold case); the second loads identical layers, which the engine recognises
    by digest and skips, so the difference is the engine's registration alone."""
    summary = {}
    for source, part in (("engine_store", "normalize_open_store"), ("docker_save", "normalize_save")):
        for attempt, case in ((0, "first_build_new_layers"), (1, "second_build_layers_known")):
            builds = [r["seconds"][attempt] for r in runs
                      if len(r["seconds"]) > attempt and part in r["seconds"][attempt]]
            if not builds:
                continue
            parts = ("base", "build", "normalize", part, "normalize_rewrite_load")
            summary[f"{source}_{case}"] = {p: median([b[p] for b in builds]) for p in parts} | {
                "overhead_vs_base_and_build": median([b["normalize"] / (b["base"] + b["build"]) for b in builds], 3),
                "builds": len(builds)}
    return summary


def record(run: dict | None) -> dict:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = data.get("double_build_runs", [])
    if run:
        runs.append(run)
    ids = {i for r in runs for i in r["ids"]}
    data.update({
        "what": "bench/reproducible.py: `build runtime --check-reproducible` (two builds from a cleared layer "
                "cache, a freshly bootstrapped base and an empty normalization cache), repeated",
        "machine": {"arch": platform.machine(), "nproc": os.cpu_count()},
        "double_build_runs": runs,
        "double_builds": len(runs),
        "identical": sum(1 for r in runs if r["identical"]),
        "distinct_image_ids": sorted(ids),
        # what normalization adds to a cold build (base bootstrap + docker build), per build
        "normalization_overhead": [round(b["normalize"] / (b["base"] + b["build"]), 3)
                                   for r in runs for b in r["seconds"] if "base" in b],
        "normalization_medians_s": where_normalization_goes(runs),
    })
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--variant", default="runtime")
    parser.add_argument("--summarize", action="store_true", help="only recompute the summary of the recorded runs")
    args = parser.parse_args()
    if args.summarize:
        print(json.dumps(record(None)["normalization_medians_s"], indent=1))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop between steps, cleaning up
    c = engine.connect()
    m = manifest.load()
    variant = m.variant(args.variant)
    for n in range(1, args.runs + 1):
        before = {i.id for i in c.client.images.list(all=True)}
        seconds = []
        ids = []
        with tempfile.TemporaryDirectory(prefix="pytorch-cuda-bench-cache-") as cache:
            os.environ["XDG_CACHE_HOME"] = cache  # builder.cache reads it at each use
            try:
                for attempt in (1, 2):
                    c.untag([m.base_ref])  # the build bootstraps the base anew
                    started = time.monotonic()
                    built = pipeline.build_and_tag(c, variant, repository=REPOSITORY, nocache=True, quiet=True)
                    seconds.append({"total": round(time.monotonic() - started, 1), **built.seconds})
                    ids.append(built.image_id)
                    print(f"run {n} build {attempt}: {built.image_id} {seconds[-1]}", flush=True)
            finally:
                remove_created(c, before, m.base_ref)
        data = record({"date": datetime.date.today().isoformat(), "variant": variant.name, "ids": ids,
                       "identical": len(set(ids)) == 1, "seconds": seconds})
        print(f"run {n}: {'identical' if len(set(ids)) == 1 else 'DIFFERENT'} "
              f"({data['identical']} of {data['double_builds']} so far)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
