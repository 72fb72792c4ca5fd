"""Runs INSIDE an image (python -c): reports what the image contains, as one JSON line.

The builder derives tags and verification results from this report, never from the manifest,
so that a tag states what is in the image. Standard library and torch only.
Usage: python -c "$(cat facts.py)" [--full]   (--full adds pip check and a torch.compile run)
"""
import importlib.metadata
import json
import os
import pwd
import subprocess
import sys


def os_release():
    fields = {}
    with open("/etc/os-release") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            fields[key] = value.strip('"')
    return fields


def torch_facts():
    import torch

    nccl = torch.cuda.nccl.version()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
        "triton": importlib.metadata.version("triton"),
    }


def pip_check():
    proc = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
                          capture_output=True, text=True)
    return {"exit_code": proc.returncode, "output": (proc.stdout + proc.stderr).strip()}


def compile_check():
    """torch.compile on the CPU: proves a working C/C++ compiler at run time."""
    try:
        import torch

        def f(x):
            return torch.sin(x) * 2 + torch.cos(x)

        x = torch.linspace(-3, 3, 257)
        compiled = torch.compile(f)
        ok = bool(torch.allclose(compiled(x), f(x), atol=1e-5))
        return {"ok": ok, "error": None if ok else "compiled result differs from eager"}
    except Exception as exc:  # the report must arrive whatever breaks
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def main():
    release = os_release()
    uid = os.getuid()
    facts = {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "os_id": release.get("ID"),
        "os_version": release.get("VERSION_ID"),
        "uid": uid,
        "user": pwd.getpwuid(uid).pw_name,
        "pid1": open("/proc/1/comm").read().strip(),
        "env": {k: os.environ.get(k) for k in ("PATH", "VIRTUAL_ENV", "NVIDIA_VISIBLE_DEVICES",
                                                "NVIDIA_DRIVER_CAPABILITIES")},
        "packages": {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()},
    }
    try:
        facts.update(torch_facts())
    except Exception as exc:
        facts["torch_error"] = f"{type(exc).__name__}: {exc}"
    if "--full" in sys.argv:
        facts["pip_check"] = pip_check()
        facts["compile"] = compile_check()
    print("FACTS " + json.dumps(facts, sort_keys=True))


main()
