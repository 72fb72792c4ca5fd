"""What a new user meets first on the command line: --manifest wherever it is typed, another
manifest rendered beside itself, `list` naming the real reason a variant cannot be built, an
unreachable index in one line, hints that name real variants, `matrix --locked-only`, and text
that speaks of the project. None of it needs an engine: DOCKER_HOST points at a closed port, or
the engine is a stand-in."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder import cli, engine, lock, manifest
from tests.support import ROOT

# every command and the arguments it needs besides --manifest; a new command must be added here
COMMAND_ARGS = {
    "list": [], "render": ["runtime"], "lock": ["runtime"], "doctor": [], "build": ["runtime"],
    "verify": ["runtime"], "tags": ["runtime"], "push": ["runtime", "--registry", "localhost:5000/x"],
    "matrix": [], "diff": ["a", "b"], "audit": ["runtime"], "digest": ["runtime"],
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_engine_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, DOCKER_HOST=f"tcp://127.0.0.1:{closed_port()}", HOME=str(tmp_path), UV_HTTP_RETRIES="0")


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=no_engine_env(tmp_path), timeout=120)


def manifest_copy(tmp_path: Path, change=None, locks: tuple[str, ...] = ("cu128",)) -> Path:
    """The repository's manifest in tmp_path/m/, with the locks of the named CUDA builds and the apt lock."""
    where = tmp_path / "m"
    (where / "locks").mkdir(parents=True)
    data = yaml.safe_load(manifest.MANIFEST.read_text())
    if change:
        change(data)
    (where / "images.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for path in (manifest.MANIFEST.parent / "locks").iterdir():
        if path.name.startswith("apt-") or any(path.name.endswith(f"-{key}.txt") for key in locks):
            shutil.copy2(path, where / "locks" / path.name)
    return where / "images.yaml"


# 1. --manifest after the command

def test_every_command_takes_manifest_after_it_too(tmp_path):
    p = cli.parser()
    commands = next(a for a in p._actions if isinstance(a, cli.argparse._SubParsersAction)).choices
    assert set(commands) == set(COMMAND_ARGS), "add the new command to COMMAND_ARGS"
    other = tmp_path / "other.yaml"
    for command, rest in COMMAND_ARGS.items():
        assert p.parse_args([command, *rest, "--manifest", str(other)]).manifest == other, command
        assert p.parse_args(["--manifest", str(other), command, *rest]).manifest == other, command
        assert p.parse_args([command, *rest]).manifest == manifest.MANIFEST, command  # the default survives


def test_list_reads_the_manifest_given_after_the_command(tmp_path):
    path = manifest_copy(tmp_path, lambda d: d.update(name="other-images"))
    proc = run_cli(tmp_path, "list", "--manifest", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "other-images:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime" in proc.stdout


# 2. render with another manifest writes beside it

def test_render_of_another_manifest_writes_beside_it_and_leaves_images_alone(tmp_path):
    path = manifest_copy(tmp_path, lambda d: d.update(name="other-images"))
    ours = ROOT / "images" / "runtime" / "Dockerfile"
    before, mtime = ours.read_bytes(), ours.stat().st_mtime_ns
    try:
        proc = run_cli(tmp_path, "render", "runtime", "--manifest", str(path))
        assert proc.returncode == 0, proc.stderr
        written = path.parent / "images" / "runtime" / "Dockerfile"
        assert f"wrote {written}" in proc.stdout
        assert "other-images:" in written.read_text()
        assert ours.read_bytes() == before and ours.stat().st_mtime_ns == mtime
        check = run_cli(tmp_path, "render", "--check", "--manifest", str(path))
        assert check.returncode == 1 and str(path.parent / "images" / "devel") in check.stdout
        assert f"render --all --manifest {path}" in check.stderr
    finally:
        if ours.read_bytes() != before:  # the old behaviour wrote over the repository's images/
            ours.write_bytes(before)


# 3. list names the real reason and keeps its columns

def test_list_says_which_lock_is_missing_and_how_to_make_it_in_aligned_columns(tmp_path):
    path = manifest_copy(tmp_path)  # the cu128 locks only
    proc = run_cli(tmp_path, "list", "--manifest", str(path))
    assert proc.returncode == 0, proc.stderr
    table, _, notes = proc.stdout.partition("\n\n")
    lines = table.splitlines()
    column = lines[0].index("tag")
    assert all(line.index("pytorch-cuda:") == column for line in lines[1:]), table
    assert re.search(r"^runtime-cu126\s+no lock\s+pytorch-cuda:", table, re.M), table
    assert "unreachable" not in proc.stdout
    runtime_lock = path.parent / "locks" / "runtime-cu126.txt"
    assert f"{runtime_lock} does not exist" in notes
    assert f"`python build.py lock runtime-cu126 --manifest {path}`" in notes
    assert f"`python build.py lock devel-cu129 --manifest {path}`" in notes


def test_list_names_a_stale_lock_once_with_the_command_that_resolves_it(tmp_path):
    path = manifest_copy(tmp_path, lambda d: d["python_packages"].update(numpy="1.0.0"))
    proc = run_cli(tmp_path, "list", "--manifest", str(path))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^runtime\s+stale lock\s+pytorch-cuda:", proc.stdout, re.M), proc.stdout
    notes = [line for line in proc.stdout.splitlines() if line.startswith("stale lock:")]
    assert len(notes) == 1 and "numpy is" in notes[0] and "manifest says 1.0.0" in notes[0], notes
    assert f"`python build.py lock runtime --manifest {path}`" in notes[0]


# 4. an unreachable index: one line, exit 2, the lock untouched

def test_lock_against_an_unreachable_index_is_one_line_and_keeps_the_lock(tmp_path, monkeypatch, capsys):
    path = manifest_copy(tmp_path, lambda d: d["cuda"]["cu128"].update(index="http://127.0.0.1:9/simple"))
    monkeypatch.setattr(lock, "PYPI", "http://127.0.0.1:9/pypi/simple")  # the extra index: no network either
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    kept = path.parent / "locks" / "runtime-cu128.txt"
    before, mtime = kept.read_bytes(), kept.stat().st_mtime_ns
    assert cli.main(["lock", "runtime", "--manifest", str(path)]) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert "http://127.0.0.1:9/" in err and "unreachable" in err and "existing lock is kept" in err
    assert f"python build.py lock runtime --manifest {path}" in err and "cuda.cu128.index" in err
    assert "cause:" not in err and not out
    assert kept.read_bytes() == before and kept.stat().st_mtime_ns == mtime


def test_uvs_connection_failures_are_told_from_resolution_failures():
    dns = ("error: Request failed after 3 retries in 9.1s\n"
           "  cause: Failed to fetch: https://download.pytorch.org/whl/cu126/torch/\n"
           "  cause: error sending request for url (https://download.pytorch.org/whl/cu126/torch/)\n"
           "  cause: client error (Connect)\n  cause: dns error\n"
           "  cause: failed to lookup address information: Name or service not known\n")
    indexes = ["https://download.pytorch.org/whl/cu126", "https://pypi.org/simple"]
    assert lock.unreachable_index(dns, indexes) == (
        "https://download.pytorch.org/whl/cu126", "failed to lookup address information: Name or service not known")
    unsolvable = "  x No solution found when resolving dependencies:\n  `-> Because torch==9.9 was not found ...\n"
    assert lock.unreachable_index(unsolvable, indexes) is None


# 5. hints name real variants

class NoImages:
    """An engine stand-in that has no image at all."""

    def image_exists(self, image: str) -> bool:
        return False


class OneImage:
    """An engine stand-in holding one image labelled as a variant, with no build record."""

    def __init__(self, variant: str) -> None:
        self.variant = variant

    def image_exists(self, image: str) -> bool:
        return True

    def image_id(self, image: str) -> str:
        return "sha256:" + "ab" * 32

    def run_config(self, image: str) -> dict:
        return {"Labels": {"pytorch-cuda.variant": self.variant}}


@pytest.mark.parametrize("argv, suggested", [
    (["verify", "workstaton"], "python build.py build workstation"),
    (["verify", "pytorch-cuda:2.8-cu128-workstation"], "python build.py build workstation"),
    (["verify", "ghcr.io/me/pytorch-cuda:2.8.0-cu126-cudnn9-py3.12-ubuntu24.04-devel"],
     "python build.py build devel-cu126"),
    (["verify", "runtime-cu126"], "python build.py build runtime-cu126"),
    (["push", "jupyter", "--registry", "localhost:5000/x"], "python build.py build jupyter"),
    (["push", "pytorch-cuda:2.8-cu128-ssh", "--registry", "localhost:5000/x"], "python build.py build ssh"),
    (["audit", "devle"], "python build.py build devel"),
    (["tags", "runtime-cu129"], "python build.py build runtime-cu129"),
])
def test_a_missing_image_hint_names_a_real_variant(monkeypatch, capsys, argv, suggested):
    monkeypatch.setattr(engine, "connect", lambda *a, **k: NoImages())
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"`{suggested}`" in err, err
    assert "VARIANT" not in err
    built = re.findall(r"python build\.py build (\S+?)`", err)
    assert built and all(name in manifest.load().variants() for name in built), err


def test_a_target_like_no_variant_lists_the_variants_instead_of_building_it(monkeypatch, capsys):
    monkeypatch.setattr(engine, "connect", lambda *a, **k: NoImages())
    assert cli.main(["verify", "registry.example.com/team/thing:latest"]) == 2
    err = capsys.readouterr().err
    assert "build thing" not in err and "build registry" not in err and "python build.py build" not in err
    assert "runtime, devel, jupyter, ssh, workstation" in err and "`python build.py list`" in err


def test_a_push_refusal_names_the_images_variant(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(engine, "connect", lambda *a, **k: OneImage("devel"))
    code = cli.main(["push", "pytorch-cuda:2.8-cu128-devel", "--registry", "localhost:5000/x",
                     "--records", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to push" in err and "no build record" in err
    assert "`python build.py build devel`" in err and "`python build.py build`" not in err


def test_a_zstd_push_from_an_engine_that_cannot_pull_zstd_is_refused_before_anything(monkeypatch, capsys, tmp_path):
    """The push is checked by pulling it back: Docker 20.10 cannot, so nothing is uploaded."""
    old_engine = OneImage("runtime")
    old_engine.info = engine.EngineInfo(  # type: ignore[attr-defined]
        docker_host="unix:///var/run/docker.sock", server_version="20.10.24", api_version="1.41",
        storage_driver="overlay2", image_store="graphdriver", data_root="/var/lib/docker", local=True, rootless=False,
        buildkit=True, store_readable=True, layer_source="store", layer_source_reason="")
    monkeypatch.setattr(engine, "connect", lambda *a, **k: old_engine)
    code = cli.main(["push", "runtime", "--registry", "localhost:5000/x", "--records", str(tmp_path),
                     "--compression", "zstd"])
    err = capsys.readouterr().err
    assert code == 2 and "Docker 20.10.24 cannot pull zstd layers" in err and "Nothing was pushed" in err


def test_the_password_hint_is_the_users_own_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", type("Empty", (), {"readline": staticmethod(lambda: "")})())
    assert cli.main(["push", "runtime", "--registry", "localhost:5000/x", "--username", "me"]) == 2
    err = capsys.readouterr().err
    assert "python build.py push runtime --registry localhost:5000/x --username me" in err and "..." not in err


# 6. matrix --locked-only

def test_matrix_locked_only_lists_what_can_be_built(tmp_path):
    path = manifest_copy(tmp_path)  # the cu128 locks only
    every = json.loads(run_cli(tmp_path, "matrix", "--manifest", str(path)).stdout)
    proc = run_cli(tmp_path, "matrix", "--locked-only", "--manifest", str(path))
    assert proc.returncode == 0, proc.stderr
    locked = json.loads(proc.stdout)
    assert [r["variant"] for r in locked] == ["runtime", "devel", "jupyter", "ssh", "workstation"]
    assert all(r["locked"] for r in locked) and len(every) > len(locked)
    github = run_cli(tmp_path, "matrix", "--locked-only", "--format", "github", "--manifest", str(path)).stdout
    assert "cu126" not in github and github.startswith("matrix={\"include\":[")


# 7. the text speaks of the project

FORBIDDEN = re.compile(r"\bhere\b|this machine|\bissue\b|#\s?\d\b|\bsession\b|\breviewed?\b|\bsandbox\b", re.I)


def test_cli_and_gpu_check_text_speaks_of_the_project():
    tree = ast.parse((ROOT / "builder" / "cli.py").read_text())
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    strings += [v.value for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)
                for v in n.values if isinstance(v, ast.Constant)]
    offending = [s for s in strings if FORBIDDEN.search(s)]
    assert not offending, offending
    script = [line for line in (ROOT / "scripts" / "gpu-check").read_text().splitlines()
              if not line.lstrip().startswith("#!")]
    offending = [line for line in script if FORBIDDEN.search(line)]
    assert not offending, offending
