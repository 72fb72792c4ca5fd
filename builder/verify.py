"""`verify`: run a built image and check it against the manifest, one pass/fail line per check.

Each check is a small function of what the image reported (builder/inside/facts.py), its
config, and the layer scan; the list CHECKS is the whole policy, in one place.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from packaging.version import Version

from builder import engine
from builder import facts, hygiene, services, tags
from builder.engine import Engine
from builder.manifest import Manifest, Variant
from builder.render import common_labels


@dataclass
class CheckResult:
    id: str
    ok: bool
    detail: str


@dataclass
class Evidence:
    """Everything the checks look at, gathered once."""

    variant: Variant
    facts: dict[str, Any]
    config: dict[str, Any]  # the image's config (Env, User, Labels, ...)
    findings: list[str]  # hygiene findings from the layer scan
    layers: list[str] = field(default_factory=list)  # the image's diff IDs
    runtime_layers: list[str] | None = None  # diff IDs of runtime on the same CUDA build, if built here
    live: list[CheckResult] = field(default_factory=list)  # checks run against live containers


def _same(what: str, expected: str, found: Any) -> tuple[bool, str]:
    return expected == found, f"{what} {found} (manifest: {expected})"


def check_python(e: Evidence) -> tuple[bool, str]:
    v = Version(e.facts["python"])
    return _same("Python", e.variant.manifest.python, f"{v.major}.{v.minor}")


def check_torch(e: Evidence) -> tuple[bool, str]:
    if "torch_error" in e.facts:
        return False, f"import torch failed: {e.facts['torch_error']}"
    return _same("torch", e.variant.cuda.torch, Version(e.facts["torch"]).public)


def check_cuda(e: Evidence) -> tuple[bool, str]:
    return _same("torch.version.cuda", e.variant.cuda.cuda, e.facts.get("cuda"))


def check_cudnn(e: Evidence) -> tuple[bool, str]:
    found = tags.cudnn_version(e.facts.get("cudnn") or 0)
    expected = ".".join(e.variant.cuda.cudnn.split(".")[:3])
    return _same("cuDNN", expected, found)


def check_nccl(e: Evidence) -> tuple[bool, str]:
    return _same("NCCL", e.variant.cuda.nccl, e.facts.get("nccl"))


def check_triton(e: Evidence) -> tuple[bool, str]:
    return _same("Triton", e.variant.cuda.triton, e.facts.get("triton"))


def check_packages(e: Evidence) -> tuple[bool, str]:
    pins = e.variant.manifest.data["python_packages"]
    wrong = [f"{n} {e.facts['packages'].get(n.lower())} (manifest: {v})" for n, v in pins.items()
             if e.facts["packages"].get(n.lower()) != v]
    return not wrong, "; ".join(wrong) or ", ".join(f"{n} {v}" for n, v in sorted(pins.items()))


def check_pip(e: Evidence) -> tuple[bool, str]:
    result = e.facts["pip_check"]
    return result["exit_code"] == 0, result["output"] or "pip check: no broken requirements"


def check_compile(e: Evidence) -> tuple[bool, str]:
    result = e.facts["compile"]
    return result["ok"], "torch.compile ran a function on the CPU" if result["ok"] else result["error"]


def check_user(e: Evidence) -> tuple[bool, str]:
    user = e.variant.manifest.user
    ok = e.facts["uid"] == user["uid"] and e.facts["user"] == user["name"] and e.facts["uid"] != 0
    return ok, f"runs as {e.facts['user']} (uid {e.facts['uid']}; manifest: {user['name']}, uid {user['uid']})"


def check_init(e: Evidence) -> tuple[bool, str]:
    return e.facts["pid1"] == "tini", f"PID 1 is {e.facts['pid1']}"


def check_nvidia_env(e: Evidence) -> tuple[bool, str]:
    env = e.facts["env"]
    ok = env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    return ok, (f"NVIDIA_VISIBLE_DEVICES={env['NVIDIA_VISIBLE_DEVICES']} "
                f"NVIDIA_DRIVER_CAPABILITIES={env['NVIDIA_DRIVER_CAPABILITIES']}")


def check_labels(e: Evidence) -> tuple[bool, str]:
    labels = e.config.get("Labels") or {}
    wrong = [f"{k}={labels.get(k)!r} (manifest: {v!r})" for k, v in common_labels(e.variant).items()
             if labels.get(k) != v]
    return not wrong, "; ".join(wrong) or f"{len(common_labels(e.variant))} version labels match"


def check_shared_layers(e: Evidence) -> tuple[bool, str]:
    """A flavor carries runtime's layers unchanged, so pulling it next to runtime fetches only its own."""
    if e.variant.flavor == "runtime":
        return True, f"{len(e.layers)} layers (the base every flavor shares)"
    if e.runtime_layers is None:
        return False, "no runtime image of this CUDA build here to compare with: build it (`build.py build runtime`)"
    shared = e.layers[:len(e.runtime_layers)] == e.runtime_layers
    return shared, (f"starts with runtime's {len(e.runtime_layers)} layers, adds {len(e.layers) - len(e.runtime_layers)}"
                    if shared else "does not start with runtime's layers: the flavor re-created them")


def check_hygiene(e: Evidence) -> tuple[bool, str]:
    shown = e.findings[:10] + ([f"... and {len(e.findings) - 10} more"] if len(e.findings) > 10 else [])
    return not e.findings, "; ".join(shown) or "no build CA, caches, apt lists, keys or build-stage __pycache__ in any layer or history entry"


CHECKS: list[tuple[str, Callable[[Evidence], tuple[bool, str]]]] = [
    ("python-version", check_python),
    ("torch-version", check_torch),
    ("cuda-version", check_cuda),
    ("cudnn-version", check_cudnn),
    ("nccl-version", check_nccl),
    ("triton-version", check_triton),
    ("python-packages", check_packages),
    ("pip-check", check_pip),
    ("torch-compile", check_compile),
    ("non-root-user", check_user),
    ("tini-pid1", check_init),
    ("nvidia-env", check_nvidia_env),
    ("labels", check_labels),
    ("shared-layers", check_shared_layers),
    ("hygiene", check_hygiene),
]


def run_checks(e: Evidence) -> list[CheckResult]:
    results = []
    for check_id, check in CHECKS:
        try:
            ok, detail = check(e)
        except (KeyError, TypeError, ValueError) as exc:  # missing or malformed facts
            ok, detail = False, f"could not check: {type(exc).__name__}: {exc}"
        results.append(CheckResult(check_id, ok, detail))
    return results + e.live


def variant_of(manifest: Manifest, config: dict[str, Any], fallback: str | None) -> Variant:
    """The variant an image was built as, from its label (so `verify IMAGE` needs no variant)."""
    name = (config.get("Labels") or {}).get("pytorch-cuda.variant") or fallback
    return manifest.variant(name or "")


def diff_ids(c: Engine, image: str) -> list[str] | None:
    try:
        return c.diff_ids(image)
    except engine.ImageNotFound:
        return None


def gather(c: Engine, image: str, variant: Variant, ca_bundle: Path | None,
           runtime_ref: str | None = None) -> Evidence:
    """Run the image and scan its layers at the same time: one waits on the CPU, the other on disk."""
    config = c.run_config(image)
    with ThreadPoolExecutor(max_workers=2) as pool:
        scan = pool.submit(hygiene.scan_image, c, image, ca_bundle)
        found = facts.collect(c, image, full=True)
        live = [CheckResult(*r) for r in services.flavor_checks(c, image, variant)]
        return Evidence(variant=variant, facts=found, config=config, findings=scan.result(),
                        layers=diff_ids(c, image) or [], live=live,
                        runtime_layers=diff_ids(c, runtime_ref) if runtime_ref else None)


def report(results: list[CheckResult], out: TextIO = sys.stdout) -> bool:
    width = max(len(r.id) for r in results)
    for r in results:
        out.write(f"{'PASS' if r.ok else 'FAIL'}  {r.id:<{width}}  {r.detail}\n")
    passed = sum(r.ok for r in results)
    out.write(f"{passed} passed, {len(results) - passed} failed\n")
    return passed == len(results)
