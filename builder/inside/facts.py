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
        **vision_audio_facts(),
    }


def vision_audio_facts():
    """torchvision and torchaudio with one compiled op each on the CPU: a pair built for another
    torch imports fine and fails only when its C++ ops load."""
    found = {}
    for name, op in (("torchvision", vision_op), ("torchaudio", audio_op)):
        try:
            module = __import__(name)
            found[name] = module.__version__
            found[name + "_op"] = op(module)
        except Exception as exc:  # the report must arrive whatever breaks
            found[name + "_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return found


def vision_op(torchvision):
    """Non-maximum suppression (a C++ op of torchvision's): keeps boxes 0 and 2."""
    import torch

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
    return {"ok": keep == [0, 2], "detail": "nms kept boxes %s (expected [0, 2])" % keep}


def audio_op(torchaudio):
    """An IIR filter through torchaudio's compiled lfilter: a one-pole smoother of a step."""
    import torch

    step = torch.ones(1, 64)
    out = torchaudio.functional.lfilter(step, torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.0]))
    last = float(out[0, -1])
    return {"ok": abs(last - 1.0) < 1e-4, "detail": "lfilter settled at %.4f (expected 1.0)" % last}


def installs():
    """Can the user install into the image's Python, and which packages will an install keep?"""
    import sysconfig

    constraints = os.environ.get("PIP_CONSTRAINT") or ""
    try:
        with open(constraints) as f:
            pinned = [line.split("==")[0] for line in f if "==" in line and not line.startswith("#")]
    except OSError:
        pinned = []
    return {"site_packages_writable": os.access(sysconfig.get_paths()["purelib"], os.W_OK),
            "bin_writable": os.access(os.path.dirname(sys.executable), os.W_OK), "pinned": pinned}


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
                                                "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_REQUIRE_CUDA",
                                                "LD_LIBRARY_PATH", "PIP_CONSTRAINT", "UV_CONSTRAINT")},
        "installs": installs(),
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
