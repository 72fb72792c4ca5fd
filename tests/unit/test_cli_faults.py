"""Faults are inputs too: an engine that does not answer, one that goes away mid-run, an
interrupt; and the order of `build`: verify the image by its ID, record it, tag it last."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import types

import pytest
import requests

from builder import cli, engine
from builder.errors import BuildFailed
from tests.support import ROOT


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize("host", [
    "tcp://127.0.0.1:{port}",
    "unix:///nonexistent/docker.sock",
    "ssh://nobody@127.0.0.1:{port}",
])
def test_an_engine_that_does_not_answer_is_one_line_and_exit_2(host, tmp_path):
    env = dict(os.environ, DOCKER_HOST=host.format(port=closed_port()), HOME=str(tmp_path))
    for args in (["doctor"], ["build", "runtime", "--skip-verify"], ["verify", "runtime"]):
        proc = subprocess.run([sys.executable, str(ROOT / "build.py"), *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)
        output = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 2, (args, output)
        assert "Traceback" not in output, output
        assert "no Docker engine answers at" in output and host.split("://")[0] in output, output
        assert "Error" in output or "error" in output  # the underlying cause is named
        assert len(proc.stderr.strip().splitlines()) <= 1, output


def fake_engine() -> engine.Engine:
    info = engine.EngineInfo(docker_host="unix:///var/run/docker.sock", server_version="28.5.2", api_version="1.51",
                             storage_driver="overlay2", image_store="graphdriver", data_root="/var/lib/docker",
                             local=True, rootless=False, buildkit=False, store_readable=True, layer_source="store",
                             layer_source_reason="")
    return engine.Engine(client=None, info=info)  # type: ignore[arg-type]


def lost_connection() -> Exception:
    """What the SDK raises when dockerd goes away mid-stream: a chain ending in a reset."""
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as reset:
            raise requests.exceptions.ConnectionError(reset) from reset
    except requests.exceptions.ConnectionError as err:
        try:
            raise BuildFailed("docker load rejected the image") from err
        except BuildFailed as outer:
            return outer


def test_a_lost_engine_is_one_line_saying_nothing_was_tagged(monkeypatch, capsys):
    def build(args):
        raise lost_connection()
    monkeypatch.setattr(cli, "cmd_build", build)  # parser() binds the command when main() builds it
    monkeypatch.setattr(engine, "TAGGED", [])
    assert cli.main(["build", "runtime"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "lost the connection to the Docker engine" in err and "ConnectionResetError" in err
    assert "nothing was tagged" in err and "run the same command again" in err


@pytest.mark.parametrize("interrupt, code, word", [(KeyboardInterrupt, 130, "interrupted"),
                                                   (cli.Terminated, 143, "terminated")])
def test_an_interrupt_says_nothing_was_tagged(monkeypatch, capsys, interrupt, code, word):
    def build(args):
        raise interrupt()
    monkeypatch.setattr(cli, "cmd_build", build)
    monkeypatch.setattr(engine, "TAGGED", [])
    assert cli.main(["build", "runtime"]) == code
    assert capsys.readouterr().err.strip() == f"{word}: nothing was tagged"


class Recorder:
    """Stands in for the pipeline's stages and the engine, writing down the order of calls."""

    def __init__(self, verify_ok: bool):
        self.calls: list[str] = []
        self.verify_ok = verify_ok
        self.audit_sources = None

    def build(self, c, variant, **options):
        self.calls.append("build")
        return types.SimpleNamespace(image_id="sha256:built", refs=["r:1", "r:2"], runtime_id="sha256:rt")

    def check_reproducible(self, c, variant, **options):
        self.calls.append("build")
        self.calls.append("build")
        built = types.SimpleNamespace(image_id="sha256:built", refs=["r:1", "r:2"], runtime_id="")
        return [built, built]

    def verify(self, c, image, variant, ca_bundle, runtime_image=None):
        self.calls.append(f"verify {image} against {runtime_image}")
        return [types.SimpleNamespace(ok=self.verify_ok)]

    def record(self, c, built, results, records, quiet=False, audit_sources=()):
        self.calls.append("record")
        self.audit_sources = audit_sources
        return "sha256:labelled", None

    def tag(self, image, refs):
        self.calls.append(f"tag {image} {' '.join(refs)}")


def run_build(monkeypatch, recorder: Recorder, *extra: str) -> int:
    eng = fake_engine()
    monkeypatch.setattr(eng, "tag", recorder.tag)
    monkeypatch.setattr(engine, "connect", lambda layer_source="auto": eng)
    monkeypatch.setattr(cli.pipeline, "check_buildable", lambda variant: None)
    monkeypatch.setattr(cli.pipeline, "build", recorder.build)
    monkeypatch.setattr(cli.pipeline, "check_reproducible", recorder.check_reproducible)
    monkeypatch.setattr(cli, "run_verify", recorder.verify)
    monkeypatch.setattr(cli.release, "record_build", recorder.record)
    return cli.main(["build", "ssh", "--quiet", *extra])


def test_build_verifies_by_id_records_then_tags_last(monkeypatch):
    recorder = Recorder(verify_ok=True)
    assert run_build(monkeypatch, recorder) == 0
    assert recorder.calls == ["build", "verify sha256:built against sha256:rt", "record",
                              "tag sha256:labelled r:1 r:2"]


def test_a_failed_verify_leaves_nothing_tagged(monkeypatch):
    recorder = Recorder(verify_ok=False)
    assert run_build(monkeypatch, recorder) == 1
    assert not any(call.startswith("tag") for call in recorder.calls)


@pytest.mark.parametrize("extra, sources", [
    ((), ("ubuntu", "python")),
    (("--skip-audit",), ()),
    (("--skip-verify",), ()),
])
def test_the_record_is_audited_unless_audit_or_verify_is_skipped(monkeypatch, extra, sources):
    recorder = Recorder(verify_ok=True)
    assert run_build(monkeypatch, recorder, *extra) == 0
    assert recorder.audit_sources == sources
    assert recorder.calls[-1] == "tag sha256:labelled r:1 r:2"


def test_check_reproducible_tags_the_verified_recorded_image(monkeypatch):
    recorder = Recorder(verify_ok=True)
    assert run_build(monkeypatch, recorder, "--check-reproducible") == 0
    assert recorder.calls[-2:] == ["record", "tag sha256:labelled r:1 r:2"]
