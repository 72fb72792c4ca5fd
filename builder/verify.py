"""`verify`: run a built image and check it against the manifest, one PASS/WARN/FAIL line per check.

Each check is a small function of what the image reported (builder/inside/facts.py), its
config, its dpkg packages and the layer scan; the list CHECKS is the whole policy, in one place.
A check returns (True, detail) to pass, (False, detail) to fail, or (WARN, detail): it passes,
so it neither fails verify nor keeps an image from being tagged or pushed, but the image needs
attention that only time made necessary (a lock gone stale), so it is printed and recorded as such.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

from packaging.version import Version

from builder import aptlock, engine, lock, render
from builder import facts, hygiene, services, tags
from builder.engine import Engine
from builder.errors import BuildFailed
from builder.manifest import ROOT, Manifest, Variant
from builder.render import common_labels


WARN = None  # a check's verdict when it passes with a warning (see the module doc)
POCKET_MAX_AGE_DAYS = 14  # an apt lock older than this has likely missed fixes in the security pocket


@dataclass
class CheckResult:
    id: str
    ok: bool
    detail: str
    warn: bool = False  # passed (ok is True), with a warning: printed WARN, never fails verify

    @property
    def state(self) -> str:
        return "FAIL" if not self.ok else "WARN" if self.warn else "PASS"


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
    apt_installed: dict[str, str] | None = None  # dpkg's packages in the image, name → version
    apt_error: str = ""  # why apt_installed could not be read
    apt_lock: aptlock.Lock | None = None  # manifests/locks/apt-*.txt
    # the clock the apt lock's age is read against (a test sets it)
    checked_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


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


def check_vision_audio(e: Evidence) -> tuple[bool, str]:
    """The pair released with torch, each running one compiled op (a pair built for another torch fails there)."""
    cuda, found, wrong = e.variant.cuda, [], []
    for name, expected in (("torchvision", cuda.torchvision), ("torchaudio", cuda.torchaudio)):
        if name + "_error" in e.facts:
            wrong.append(f"{name}: {e.facts[name + '_error']}")
            continue
        version, op = Version(e.facts[name]).public, e.facts[name + "_op"]
        if version != expected:
            wrong.append(f"{name} {version} (manifest: {expected}, released with torch {cuda.torch})")
        if not op["ok"]:
            wrong.append(f"{name}: {op['detail']}")
        found.append(f"{name} {version}: {op['detail']}")
    return not wrong, "; ".join(wrong or found)


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
    """What the NVIDIA Container Toolkit and Kubernetes' device plugin read."""
    env = e.facts["env"]
    expected = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
                "NVIDIA_REQUIRE_CUDA": f"cuda>={render.driver_cuda(e.variant.cuda.cuda)}"}
    wrong = [f"{k}={env.get(k)} (expected {v})" for k, v in expected.items() if env.get(k) != v]
    if "/usr/local/nvidia/lib64" not in (env.get("LD_LIBRARY_PATH") or "").split(":"):
        wrong.append(f"LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH')} lacks /usr/local/nvidia/lib64")
    return not wrong, "; ".join(wrong) or " ".join(f"{k}={v}" for k, v in expected.items())


def check_user_installs(e: Evidence) -> tuple[bool, str]:
    """The user can pip install into the image's Python, and the image's own pins hold."""
    found = e.facts.get("installs") or {}
    wrong = []
    if not (found.get("site_packages_writable") and found.get("bin_writable")):
        wrong.append("the venv is not writable by the image's user: pip install would fail")
    missing = [n for n in lock.IMAGE_PINNED if n not in found.get("pinned", [])]
    if missing or not any(n.startswith("nvidia-") for n in found.get("pinned", [])):
        wrong.append(f"PIP_CONSTRAINT={e.facts['env'].get('PIP_CONSTRAINT')} does not pin "
                     f"{', '.join(missing) or 'the NVIDIA wheels'}")
    return not wrong, "; ".join(wrong) or (f"the user owns the venv; {len(found['pinned'])} packages kept by "
                                           f"{e.facts['env'].get('PIP_CONSTRAINT')}")


def check_labels(e: Evidence) -> tuple[bool, str]:
    labels = e.config.get("Labels") or {}
    wrong = [f"{k}={labels.get(k)!r} (manifest: {v!r})" for k, v in common_labels(e.variant).items()
             if labels.get(k) != v]
    revision = labels.get("org.opencontainers.image.revision")
    if not revision:
        wrong.append("no org.opencontainers.image.revision label")
    return not wrong, "; ".join(wrong) or f"{len(common_labels(e.variant))} labels match; revision {revision}"


def check_shared_layers(e: Evidence) -> tuple[bool, str]:
    """A flavor carries runtime's layers unchanged, so pulling it next to runtime fetches only its own."""
    if e.variant.flavor == "runtime":
        return True, f"{len(e.layers)} layers (the base every flavor shares)"
    if e.runtime_layers is None:
        runtime = e.variant.sibling("runtime").name
        return False, (f"no {runtime} image in the engine to compare with: build it "
                       f"(`python build.py build {runtime}`)")
    shared = e.layers[:len(e.runtime_layers)] == e.runtime_layers
    return shared, (f"starts with runtime's {len(e.runtime_layers)} layers, adds {len(e.layers) - len(e.runtime_layers)}"
                    if shared else "does not start with runtime's layers: the flavor re-created them")


def check_hygiene(e: Evidence) -> tuple[bool, str]:
    shown = e.findings[:10] + ([f"... and {len(e.findings) - 10} more"] if len(e.findings) > 10 else [])
    return not e.findings, "; ".join(shown) or "no build CA, caches, apt lists, keys or build-stage __pycache__ in any layer or history entry"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check_security_pocket(e: Evidence) -> tuple[bool | None, str]:
    """The image's Ubuntu packages are exactly the apt lock's, so nothing is behind the pockets as
    `lock --apt` saw them. The pockets keep moving after that: a lock older than
    POCKET_MAX_AGE_DAYS, or one without its resolved date, is a warning, not a failure."""
    if e.apt_installed is None or e.apt_lock is None:
        return False, f"could not check: {e.apt_error or 'the Ubuntu packages or the apt lock were not read'}"
    lock, refresh = e.apt_lock, "run `python build.py lock --apt`, then rebuild"
    if not lock.sections:
        return False, f"{_shown(lock.path)} pins no Ubuntu packages: {refresh}"
    moved = aptlock.changes(aptlock.expected(lock, e.variant), e.apt_installed)
    if moved:
        more = f"; ... and {len(moved) - 5} more" if len(moved) > 5 else ""
        return False, (f"the image's Ubuntu packages differ from {_shown(lock.path)} (lock -> image): "
                       + "; ".join(moved[:5]) + more + f"; {refresh}")
    count = len(e.apt_installed)
    if lock.resolved is None:
        return WARN, (f"{count} Ubuntu packages as {_shown(lock.path)} pins them, but it records no resolved date, "
                      f"so how far they are behind the security pocket is unknown: {refresh}")
    age = lock.age_days(e.checked_at) or 0.0
    days = max(0, int(age))
    pinned = (f"{count} Ubuntu packages as `lock --apt` pinned them on {lock.resolved:%Y-%m-%d} "
              f"({days} day{'' if days == 1 else 's'} ago)")
    if age > POCKET_MAX_AGE_DAYS:
        return WARN, (f"{pinned}: older than {POCKET_MAX_AGE_DAYS} days, so the security pocket may have "
                      f"fixes the image lacks: {refresh}")
    return True, pinned


CHECKS: list[tuple[str, Callable[[Evidence], tuple[bool | None, str]]]] = [
    ("python-version", check_python),
    ("torch-version", check_torch),
    ("cuda-version", check_cuda),
    ("cudnn-version", check_cudnn),
    ("nccl-version", check_nccl),
    ("triton-version", check_triton),
    ("vision-audio", check_vision_audio),
    ("python-packages", check_packages),
    ("pip-check", check_pip),
    ("torch-compile", check_compile),
    ("non-root-user", check_user),
    ("tini-pid1", check_init),
    ("nvidia-env", check_nvidia_env),
    ("user-installs", check_user_installs),
    ("labels", check_labels),
    ("shared-layers", check_shared_layers),
    ("hygiene", check_hygiene),
    ("security-pocket", check_security_pocket),
]


def run_checks(e: Evidence) -> list[CheckResult]:
    results = []
    for check_id, check in CHECKS:
        try:
            verdict, detail = check(e)
        except (KeyError, TypeError, ValueError) as exc:  # missing or malformed facts
            verdict, detail = False, f"could not check: {type(exc).__name__}: {exc}"
        results.append(CheckResult(check_id, verdict is WARN or bool(verdict), detail, warn=verdict is WARN))
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


def apt_packages(c: Engine, image: str) -> tuple[dict[str, str] | None, str]:
    """dpkg's packages in the image, or None and why they could not be read."""
    try:
        return aptlock.installed(c, image), ""
    except BuildFailed as exc:
        return None, str(exc)


def gather(c: Engine, image: str, variant: Variant, ca_bundle: Path | None,
           runtime_ref: str | None = None) -> Evidence:
    """Run the image and scan its layers at the same time: one waits on the CPU, the other on disk."""
    config = c.run_config(image)
    apt_lock = aptlock.read(aptlock.lock_path(variant.manifest))
    with ThreadPoolExecutor(max_workers=3) as pool:
        scan = pool.submit(hygiene.scan_image, c, image, ca_bundle)
        dpkg = pool.submit(apt_packages, c, image)
        found = facts.collect(c, image, full=True)
        live = [CheckResult(*r) for r in services.flavor_checks(c, image, variant)]
        apt_installed, apt_error = dpkg.result()
        return Evidence(variant=variant, facts=found, config=config, findings=scan.result(),
                        layers=diff_ids(c, image) or [], live=live,
                        runtime_layers=diff_ids(c, runtime_ref) if runtime_ref else None,
                        apt_installed=apt_installed, apt_error=apt_error, apt_lock=apt_lock)


def report(results: list[CheckResult], out: TextIO = sys.stdout) -> bool:
    """One PASS/WARN/FAIL line per check and a summary; True when nothing failed (a WARN does not fail)."""
    width = max(len(r.id) for r in results)
    for r in results:
        out.write(f"{r.state}  {r.id:<{width}}  {r.detail}\n")
    failed = sum(not r.ok for r in results)
    warned = sum(r.ok and r.warn for r in results)
    out.write(f"{len(results) - failed - warned} passed, {warned} warned, {failed} failed\n")
    return failed == 0
