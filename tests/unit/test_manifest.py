"""The manifest is validated before anything happens; each kind of bad input gets one clear message."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder import manifest
from builder.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def write_manifest(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(manifest.MANIFEST.read_text())
    edit(data)
    path = tmp_path / "images.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_for(tmp_path: Path, edit) -> str:
    with pytest.raises(UserError) as info:
        manifest.load(write_manifest(tmp_path, edit))
    return str(info.value)


def test_the_committed_manifest_is_valid():
    m = manifest.load()
    assert {"runtime", "devel", "jupyter", "ssh", "workstation",
            "runtime-cu126", "workstation-cu129"} <= set(m.variants())


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path):
    message = error_for(tmp_path, lambda d: d["cuda"]["cu128"].update(tourch="2.8.0"))
    assert "key cuda.cu128" in message and "tourch" in message
    assert "allowed keys here" in message and "torch" in message


def test_wrong_type_says_what_was_expected(tmp_path):
    message = error_for(tmp_path, lambda d: d["cuda"]["cu128"].update(cuda=12.8))
    assert "key cuda.cu128.cuda: expected string, got float 12.8" in message
    assert "quote version numbers" in message


def test_version_that_does_not_parse(tmp_path):
    message = error_for(tmp_path, lambda d: d["cuda"]["cu128"].update(torch="2.8.x"))
    assert "key cuda.cu128.torch: '2.8.x' is not a version" in message


def test_missing_key(tmp_path):
    message = error_for(tmp_path, lambda d: d.pop("python"))
    assert "'python' is a required property" in message


def test_unknown_flavor_name(tmp_path):
    message = error_for(tmp_path, lambda d: d["flavors"].update(notebook={"built": False, "ports": []}))
    assert "key flavors" in message and "notebook" in message


def test_base_needs_bootstrap_or_a_digest_pinned_image(tmp_path):
    def unpinned(d):
        d["os"].pop("bootstrap")
        d["os"]["image"] = "ubuntu:24.04"
        d["os"]["packages"] = ["python3.12"]
    message = error_for(tmp_path, unpinned)
    assert "key os.image" in message and "sha256" in message


def test_registry_base_pinned_by_digest_validates_and_renders(tmp_path):
    from builder import render
    digest = "ubuntu:24.04@sha256:" + "ab" * 32

    def pinned(d):
        d["os"].pop("bootstrap")
        d["os"]["image"] = digest
        d["os"]["packages"] = ["python3.12", "python3.12-venv", "tini"]
    m = manifest.load(write_manifest(tmp_path, pinned))
    assert m.base_ref == digest
    dockerfile = render.render_variant(m.variant("runtime"))["Dockerfile"]
    assert f"FROM {digest} AS os" in dockerfile
    assert "apt-get install -y --no-install-recommends python3.12 python3.12-venv tini" in dockerfile


def test_cuda_default_must_name_a_cuda_build(tmp_path):
    message = error_for(tmp_path, lambda d: d.update(cuda_default="cu999"))
    assert "key cuda_default" in message and "cu999" in message


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "images.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match=str(path)):
        manifest.load(path)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(UserError) as info:
        manifest.load().variant("runtim")
    assert "unknown variant 'runtim'" in str(info.value) and "runtime-cu126" in str(info.value)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_cli_bad_manifest_exits_2_with_the_message(tmp_path):
    path = write_manifest(tmp_path, lambda d: d["cuda"]["cu128"].update(torch="2.8.x"))
    proc = run_cli("--manifest", str(path), "render", "runtime")
    assert proc.returncode == 2
    assert "is not a version" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_unknown_variant_exits_2():
    proc = run_cli("build", "runtim")
    assert proc.returncode == 2 and "unknown variant 'runtim'" in proc.stderr


def test_cli_unreachable_engine_exits_2(monkeypatch):
    import os
    env = {**os.environ, "DOCKER_HOST": "tcp://127.0.0.1:9"}
    proc = run_cli("build", "runtime", env=env)
    assert proc.returncode == 2
    assert "no Docker engine answers at tcp://127.0.0.1:9" in proc.stderr
    assert "scripts/start-engine" in proc.stderr


def test_cli_variant_whose_index_is_unreachable_fails_clearly():
    proc = run_cli("build", "runtime-cu126")
    assert proc.returncode == 2
    assert "download.pytorch.org/whl/cu126" in proc.stderr and "Traceback" not in proc.stderr


def test_flavor_must_build_on_another_flavor(tmp_path):
    message = error_for(tmp_path, lambda d: d["flavors"]["jupyter"].update({"from": "jupyter"}))
    assert "key flavors.jupyter" in message and "'jupyter'" in message


def test_flavor_composition_from_the_manifest():
    m = manifest.load()
    workstation = m.variant("workstation")
    assert workstation.lineage() == ["runtime", "devel", "workstation"]
    assert workstation.contents() == ["runtime", "devel", "workstation", "jupyter", "ssh"]  # its own tools first
    assert workstation.python_layers() == ["runtime", "devel", "jupyter"]
    assert m.variant("ssh-cu126").sibling("runtime").name == "runtime-cu126"
    assert "nvidia-cuda-nvcc-cu12==12.8.93" in m.variant("devel").requirements("devel")


def test_the_last_venv_layer_must_take_every_other_package(tmp_path):
    def edit(data):
        data["venv_layers"][-1]["packages"] = ["numpy"]
    message = error_for(tmp_path, edit)
    assert "key venv_layers" in message and 'must list "*"' in message


def test_venv_layer_names_must_not_repeat(tmp_path):
    def edit(data):
        data["venv_layers"][0]["name"] = data["venv_layers"][1]["name"]
    assert "repeat" in error_for(tmp_path, edit)
