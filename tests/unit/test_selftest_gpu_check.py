"""scripts/gpu-check finds what the probe needs without network unless asked, and says what is missing.

The script runs under a stand-in python: the unit venv's interpreter with a fake torch on
PYTHONPATH, pynvml hidden, and `python -m pip` recorded (and failing, as without a route out).
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


@pytest.fixture
def env(tmp_path):
    mods = tmp_path / "mods"
    (mods / "torch").mkdir(parents=True)
    (mods / "torch" / "__init__.py").write_text('__version__ = "0.0+fake"\n\nclass version:\n    cuda = "12.8"\n')
    (mods / "pynvml.py").write_text('raise ImportError("hidden for the test")\n')
    bindir = tmp_path / "bin"
    bindir.mkdir()
    python = bindir / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$*" >> "$PIP_LOG"; exit 1; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k not in ("GPU_CHECK_INSTALL_NVML", "OUT")}
    environ.update(PYTHON=str(python), PYTHONPATH=str(mods), PIP_LOG=str(tmp_path / "pip.log"))
    return environ


def gpu_check(env, *args):
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True)


def test_gpu_check_touches_no_network_by_default_and_says_what_is_missing_fake_python(env, tmp_path):
    result = gpu_check(env, "--check-only", "--wheels", str(tmp_path / "no-wheels"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nvidia-ml-py:  MISSING" in result.stdout
    assert "--wheels DIR" in result.stdout and "--install-nvml" in result.stdout
    assert "missing: nvidia-ml-py" in result.stdout
    assert not (tmp_path / "pip.log").exists()  # pip was never asked for anything


def test_gpu_check_fetches_nvidia_ml_py_only_when_asked_fake_python(env, tmp_path):
    result = gpu_check(
        env, "--install-nvml", "--runs", "0", "--no-quick", "--no-profile", "--wheels", str(tmp_path / "none"),
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "pip.log").read_text()
    assert "install" in calls and "nvidia-ml-py" in calls
    assert "could not be installed" in result.stdout


def test_gpu_check_takes_nvidia_ml_py_from_a_wheel_without_pip_fake_python(env, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "nvidia_ml_py-99.1-py3-none-any.whl", "w") as whl:
        whl.writestr("pynvml.py", "def nvmlInit():\n    pass\n")
    result = gpu_check(env, "--check-only", "--wheels", str(wheels), str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nvidia-ml-py:  nvidia_ml_py-99.1-py3-none-any.whl" in result.stdout
    assert "missing: nothing" in result.stdout or "missing: jsonschema" in result.stdout
    assert not (tmp_path / "pip.log").exists()


def test_gpu_check_without_torch_fails_and_says_so_fake_python(env, tmp_path):
    env["PYTHONPATH"] = str(tmp_path)  # no fake torch
    result = gpu_check(env, "--check-only", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "torch:         MISSING" in result.stdout


def test_gpu_check_usage_errors(env, tmp_path):
    assert gpu_check(env, "--runs", "x", str(tmp_path / "out")).returncode == 2
    assert gpu_check(env).returncode == 2  # no OUTDIR and no $OUT


def test_gpu_check_text_speaks_of_the_project_not_of_a_machine_or_an_issue():
    text = SCRIPT.read_text()
    assert "this machine" not in text and "issue 3" not in text.lower()
