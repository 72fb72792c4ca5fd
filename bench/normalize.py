"""Throughput and peak memory of builder.normalize.

Default: a synthetic `docker save` tar with one ~1 GB layer (many small files plus a few large
ones, hard links, long names, build-varying files), made in a temp dir and removed afterwards.
``--image REF`` measures a real engine image instead (saved by ID to a temp file).

Each measurement runs in a fresh interpreter, so peak RSS (getrusage ru_maxrss) is the
normalizer's own.  Results go to bench/results/normalize.json.

    python3 bench/normalize.py [--size-mb 1024] [--small-files 40000] [--image REF]
                               [--sinks read,hash,file] [--load]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "normalize.json"
EPOCH = 1_700_000_000
MB = 1 << 20


class _Noise(io.RawIOBase):
    """``size`` bytes of incompressible data without holding them (a 1 MiB block, salted)."""

    _block = os.urandom(MB)

    def __init__(self, size: int, salt: int) -> None:
        self.left, self.salt = size, salt.to_bytes(8, "little")

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        out = bytearray(self.salt)
        while len(out) < n:
            out += self._block[: n - len(out)]
        return bytes(out[:n])


def make_saved_image(dst: Path, size_mb: int, small_files: int) -> dict[str, int]:
    """Write a one-image docker-save tar with one big layer; return its shape."""
    layer = dst.with_suffix(".layer.tar")
    small_total = min(size_mb * MB // 5, small_files * 8192)
    big_total = size_mb * MB - small_total
    big_size = 64 * MB
    entries = 0
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            nonlocal entries
            ti = tarfile.TarInfo(name)
            # whole seconds, like Docker's own layer tars (it truncates times, no atime/ctime)
            ti.type, ti.linkname, ti.mtime = kind, link, int(time.time())
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            ti.uname = ti.gname = "root"
            ti.size = size if kind == tarfile.REGTYPE else 0
            tf.addfile(ti, _Noise(size, entries) if ti.size else None)
            entries += 1

        per_dir = 500
        each = max(1, small_total // max(small_files, 1))
        for i in range(small_files):
            if i % per_dir == 0:
                add(f"usr/lib/python3/site-packages/pkg{i // per_dir:04d}", kind=tarfile.DIRTYPE)
            d = f"usr/lib/python3/site-packages/pkg{i // per_dir:04d}"
            add(f"{d}/module_{i:06d}_{'x' * (i % 90)}.py", each + (i * 37) % 4096)
            if i % 50 == 0:
                add(f"{d}/__pycache__/module_{i:06d}.cpython-312.pyc", 900)
            if i % 200 == 0:
                add(f"{d}/link_{i:06d}.py", kind=tarfile.LNKTYPE, link=f"{d}/module_{i:06d}_{'x' * (i % 90)}.py")
        add("var/log/apt/term.log", 4000)
        add("etc/machine-id", 33)
        for j in range(max(1, big_total // big_size)):
            add(f"usr/local/cuda/lib64/libbig{j:03d}.so", big_size)
    layer_size = layer.stat().st_size
    diff_id = "sha256:" + _sha_file(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2030-01-01T00:00:00Z",
            "config": {"Hostname": "abc", "Env": ["PATH=/usr/bin"]},
            "history": [{"created": "2030-01-01T00:00:00Z", "created_by": "RUN make"}],
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": None, "Layers": ["l/layer.tar"]}]).encode()
    with tarfile.open(dst, "w") as tf:
        tf.add(layer, "l/layer.tar")
        for name, data in ((cfg_name, config), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    layer.unlink()
    return {"layer_bytes": layer_size, "entries": entries}


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MB):
            h.update(chunk)
    return h.hexdigest()


def measure(src: str, sink: str) -> dict[str, object]:
    """Runs in the child: normalize ``src`` into ``sink`` (hash | file:PATH | load)."""
    sys.path.insert(0, str(ROOT))
    from builder import normalize as N

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    if sink == "hash":
        h = hashlib.sha256()
        report = N.normalize_to_file(src, _HashSink(h), EPOCH)
    elif sink.startswith("file:"):
        report = N.normalize_to_file(src, sink[5:], EPOCH)
    elif sink == "load":
        from builder import engine, rewrite

        report = rewrite.load_stream(engine.connect(), N.normalize_saved_image(src, EPOCH))
    elif sink == "read":  # baseline: sequential read + sha256 of the source
        _sha_file(Path(src))
        report = None
    elif sink == "store":  # src is an image ID: its layers read from the engine's store, output hashed
        from builder import engine

        eng = engine.connect("store")
        with eng.layers(str(src)) as (archive, _):
            report = N.drain(N.normalize_image(archive.config, archive.layers, EPOCH), hashlib.sha256().update)
    else:
        raise SystemExit(f"unknown sink {sink}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    size = report.bytes_in if sink == "store" else os.path.getsize(src)
    out: dict[str, object] = {
        "sink": sink.split(":")[0],
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "mb_per_s": round(size / MB / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss0 / 1024, 1),
    }
    if report is not None:
        out |= {
            "image_id": report.image_id,
            "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out,
            "entries_in": sum(r.entries_in for r in report.layers),
            "removed": sum(r.removed for r in report.layers),
        }
    return out


class _HashSink:
    def __init__(self, h: "hashlib._Hash") -> None:
        self.h = h

    def write(self, b: bytes) -> int:
        self.h.update(b)
        return len(b)


def run_child(src: Path, sink: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", str(src), "--sink", sink],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=40000)
    ap.add_argument("--image", help="measure this engine image instead of a synthetic one")
    ap.add_argument("--saved", help="an existing `docker save` tar of --image (skips the save)")
    ap.add_argument("--sinks", default="read,hash,file",
                    help="comma list of read,hash,file; with --image also store (layers read from the engine's store)")
    ap.add_argument("--load", action="store_true", help="also stream into docker load")
    ap.add_argument("--tmp", default=None, help="where temp files go (default: system temp)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--sink", default="hash", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.sink)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-normalize-", dir=args.tmp) as tmp:
        src = Path(args.saved) if args.saved else Path(tmp) / "saved.tar"
        t0 = time.perf_counter()
        sinks = [x for x in args.sinks.split(",") if x]
        if args.saved:
            shape: dict[str, object] = {"image": args.image or src.name}
        elif args.image:
            from builder import engine

            eng = engine.connect()
            image_id = eng.image_id(args.image)
            if sinks != ["store"]:  # the store sink needs no saved copy
                with open(src, "wb") as f:
                    for chunk in eng.save_stream(image_id):
                        f.write(chunk)
            shape = {"image": args.image, "image_id": image_id}
        else:
            shape = dict(make_saved_image(src, args.size_mb, args.small_files))
            shape["synthetic"] = True
        if src.exists():
            shape["saved_bytes"] = src.stat().st_size
        shape["prepare_seconds"] = round(time.perf_counter() - t0, 1)
        runs = [
            run_child(Path(shape["image_id"]) if sink == "store" else src,  # type: ignore[arg-type]
                      f"file:{Path(tmp) / 'normalized.tar'}" if sink == "file" else sink)
            for sink in sinks
        ]
        if args.load:
            load = run_child(src, "load")
            runs.append(load)
            from builder import engine

            try:
                engine.connect().remove_image(str(load["image_id"]), force=True)
            except engine.APIError as e:
                print(f"could not remove {load['image_id']}: {e}", file=sys.stderr)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "input": shape,
        "runs": runs,
        "note": "read = sequential sha256 of the saved tar (I/O+hash floor); hash = normalize, "
        "output hashed and discarded; file = normalize to a file; load = normalize streamed "
        "into docker load (engine time included); store = normalize from the engine's store "
        "(builder/engine/store.py), output hashed. Page cache warm after 'read'.",
    }
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = "image:" + str(shape["image"]) if "image" in shape else f"synthetic-{args.size_mb}mb"
    key += " (store)" if sinks == ["store"] else ""
    previous[key] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
