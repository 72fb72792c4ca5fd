"""`build.py build` stopped by Ctrl-C or SIGTERM (what CI sends on cancel) while verify runs: no tag
on the unverified image, no container of verify's left behind, one line that says so."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from builder import engine
from tests.support import ROOT, TEST_REPOSITORY


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a suite started in the background (a shell without job
    control) passes SIGINT on ignored, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def verify_containers(c: engine.Engine) -> list:
    return c.client.containers.list(all=True, filters={"label": engine.LABEL_TEST})


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_verify_leaves_no_tag_and_no_container(runtime_image, docker_client, tmp_path, sig, code, word):
    repository = f"{TEST_REPOSITORY}-signal"
    assert not verify_containers(docker_client), "a container from an earlier test is still there"
    proc = subprocess.Popen([sys.executable, str(ROOT / "build.py"), "build", "runtime", "--quiet",
                             "--repository", repository, "--records", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 600
        while not verify_containers(docker_client):  # verify has started one of its containers
            assert proc.poll() is None, f"the build ended before verify ran: {proc.communicate()[0]}"
            assert time.monotonic() < deadline, "verify started no container"
            time.sleep(0.2)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(output)
    assert proc.returncode == code
    assert output.strip().splitlines()[-1] == f"{word}: nothing was tagged"
    assert "Traceback" not in output
    tagged = [t for tags in docker_client.tags_by_image().values() for t in tags if t.startswith(repository + ":")]
    assert tagged == []
    assert verify_containers(docker_client) == []
