"""examples/devcontainer with the Dev Containers CLI (`devcontainer`, npm's @devcontainers/cli; .ci/run
installs the pinned version) against the local engine: `devcontainer up` on a copy of the example
whose image is the session's workstation, then `devcontainer exec` as the image's user in the mounted
workspace. No GPU: the example asks for one as optional, so the CLI adds `--gpus all` only where
Docker has the NVIDIA runtime.

The container the CLI made (labelled devcontainer.local_folder=<the copy>) is removed, with its
volumes, even when a test fails, and so is any image the CLI built (it names them vsc-…); the CLI's
own temp files go to a temp dir of the test. In CI (CI=true) a missing CLI fails; elsewhere it skips.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.version import Version

from builder import pipeline
from tests.support import ROOT

pytestmark = pytest.mark.engine

EXAMPLE = ROOT / "examples" / "devcontainer"
CONFIG = Path(".devcontainer") / "devcontainer.json"
IMAGE_LINE = re.compile(r'^(\s*"image"\s*:\s*")([^"]+)(")', re.MULTILINE)
TOKEN = "devcontainer-test-token"  # the host's JUPYTER_TOKEN, passed by the example's containerEnv


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(scope="module")
def cli() -> str:
    path = shutil.which("devcontainer")
    if path is None:
        message = ("the Dev Containers CLI (`devcontainer`) is not on PATH: "
                   "npm install -g @devcontainers/cli (.ci/run installs the pinned version)")
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@dataclass
class DevContainer:
    cli: str
    folder: Path  # the example's copy on the host: the workspace
    env: dict
    up: dict  # what `devcontainer up` printed: outcome, containerId, remoteUser, remoteWorkspaceFolder
    container: object  # the SDK's Container
    new_images: list[str]  # images that appeared while the CLI ran (a derived image would be one)
    image: pipeline.Built

    def run(self, subcommand: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        """`devcontainer SUBCOMMAND --workspace-folder FOLDER ARGS…` (exec's command comes after its options)."""
        return subprocess.run([self.cli, subcommand, "--workspace-folder", str(self.folder), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def exec(self, *command: str) -> str:
        """`devcontainer exec` as the remote user in the workspace folder: the command's stdout."""
        proc = self.run("exec", *command, timeout=180)
        assert proc.returncode == 0, f"devcontainer exec {command} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc.stdout


def remove_vsc_images(docker_client, before: set[str]) -> list[str]:
    """Images that appeared since `before` and carry only the CLI's tags (vsc-…): removed; their IDs."""
    removed = []
    for image_id, tags in docker_client.tags_by_image().items():
        if image_id not in before and tags and all(t.startswith("vsc-") for t in tags):
            docker_client.remove_image(image_id, force=True)
            removed.append(image_id)
    return removed


@pytest.fixture(scope="module")
def devcontainer(cli, build_flavor, docker_client, tmp_path_factory):
    image = build_flavor("workstation")
    work = tmp_path_factory.mktemp("devcontainer")
    folder = (work / "project").resolve()
    shutil.copytree(EXAMPLE, folder)
    config = folder / CONFIG
    text, count = IMAGE_LINE.subn(lambda m: m.group(1) + image.refs[0] + m.group(3), config.read_text())
    assert count == 1, f"{CONFIG} should name one image"
    config.write_text(text)
    if os.geteuid() == 0:
        # the image's user is uid 1000 and the example keeps it (updateRemoteUserUID: false): the
        # folder belongs to uid 1000, as a desktop user's project would
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, 1000, 1000, follow_symlinks=False)
    elif os.getuid() != 1000:
        folder.chmod(0o777)
    (work / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "JUPYTER_TOKEN": TOKEN}
    label = f"devcontainer.local_folder={folder}"
    before = set(docker_client.image_ids(all=True))
    try:
        proc = subprocess.run([cli, "up", "--workspace-folder", str(folder)], env=env, capture_output=True,
                              text=True, timeout=600)
        print(proc.stderr[-4000:])
        assert proc.returncode == 0, f"devcontainer up exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
        up = json.loads(proc.stdout.strip().splitlines()[-1])
        assert up["outcome"] == "success", up
        found = docker_client.client.containers.list(all=True, filters={"label": label})
        assert [c.id for c in found] == [up["containerId"]], f"the container labelled {label}"
        new_images = sorted(set(docker_client.image_ids(all=True)) - before)
        yield DevContainer(cli, folder, env, up, found[0], new_images, image)
    finally:
        for container in docker_client.client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True, v=True)
        remove_vsc_images(docker_client, before)
        shutil.rmtree(work, ignore_errors=True)


def test_example_names_a_tag_the_builder_gives(devcontainer):
    """The example's image is the workstation under a tag `make build-image` writes."""
    named = IMAGE_LINE.search((EXAMPLE / CONFIG).read_text()).group(2)
    repository, _, tag = named.rpartition(":")
    assert repository == "pytorch-cuda"
    assert tag in [ref.rpartition(":")[2] for ref in devcontainer.image.refs]


def test_configuration_as_the_cli_reads_it(devcontainer):
    proc = devcontainer.run("read-configuration")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads(proc.stdout.strip().splitlines()[-1])["configuration"]
    assert config["image"] == devcontainer.image.refs[0]
    assert config["remoteUser"] == "user"
    assert config["updateRemoteUserUID"] is False
    assert config["overrideCommand"] is False
    assert config["forwardPorts"] == [8888]
    assert config["hostRequirements"]["gpu"] == "optional"  # --gpus all only where Docker has the NVIDIA runtime
    assert "--gpus" not in " ".join(config.get("runArgs", []))


def test_runs_the_image_itself(devcontainer, docker_client):
    """No derived image: with updateRemoteUserUID false and no features the CLI runs the image as it is."""
    image_id = devcontainer.image.image_id
    assert devcontainer.container.attrs["Image"] in (image_id, docker_client.ref(image_id))
    assert devcontainer.new_images == []
    assert devcontainer.up["remoteUser"] == "user"
    assert devcontainer.up["remoteWorkspaceFolder"] == "/workspace"


def test_exec_imports_torch(devcontainer):
    printed = devcontainer.exec("python", "-c", "import torch; print(torch.__version__)").strip().splitlines()[-1]
    assert Version(printed).public == devcontainer.image.variant.cuda.torch == "2.8.0"


def test_user_writes_the_mounted_workspace(devcontainer):
    out = devcontainer.exec("sh", "-c", "id -u; pwd; command -v python; echo written-in-the-container > from-container.txt")
    uid, cwd, python = out.strip().splitlines()[-3:]
    assert (uid, cwd, python) == ("1000", "/workspace", "/opt/venv/bin/python")
    written = devcontainer.folder / "from-container.txt"
    assert written.read_text() == "written-in-the-container\n"
    assert written.stat().st_uid == 1000
    # and the other way: what the host wrote is there
    (devcontainer.folder / "from-host.txt").write_text("written-on-the-host\n")
    assert devcontainer.exec("cat", "/workspace/from-host.txt") == "written-on-the-host\n"


def test_entrypoint_and_services_run(devcontainer):
    """overrideCommand false: tini is PID 1 and the entrypoint started JupyterLab, with the host's token."""
    assert devcontainer.exec("cat", "/proc/1/comm").strip() == "tini"
    script = ("for i in $(seq 120); do"
              f" code=$(curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: token {TOKEN}'"
              " http://127.0.0.1:8888/api/status); [ \"$code\" = 200 ] && break; sleep 1; done; echo $code;"
              " curl -s -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:8888/api/status")
    with_token, without = devcontainer.exec("sh", "-c", script).strip().splitlines()[-2:]
    assert (with_token, without) == ("200", "403")
