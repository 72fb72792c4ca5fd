"""The flavors on top of runtime, checked with real clients (Jupyter REST + kernel websocket,
paramiko, nvcc). Tests are grouped by image; the workstation class inherits those of the
flavors it contains, the way the image does.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import requests
import websocket

from builder import aptlock, pipeline, services, verify
from tests.support import ROOT, TEST_REPOSITORY

_checked: dict[str, dict[str, tuple[bool, str]]] = {}


@pytest.fixture
def flavor_image(request, build_flavor) -> pipeline.Built:
    """The class's flavor, built once per session (conftest's build_flavor)."""
    return build_flavor(request.cls.flavor)


@pytest.fixture
def checks(request, docker_client, flavor_image) -> dict[str, tuple[bool, str]]:
    """services.flavor_checks on the flavor's image, run once per flavor; id → (ok, detail)."""
    flavor = request.cls.flavor
    if flavor not in _checked:
        results = services.flavor_checks(docker_client, flavor_image.image_id, flavor_image.variant)
        _checked[flavor] = {check_id: (ok, detail) for check_id, ok, detail in results}
        print(_checked[flavor])
    return _checked[flavor]


def openssh_key(tmp_path) -> str:
    """A fresh ed25519 key for the OpenSSH client: the private key's path (public beside it as id.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    return str(tmp_path / "id")


def openssh(tmp_path, tool: str, key: str, *args: str) -> subprocess.CompletedProcess:
    """The OpenSSH client (ssh, scp, sftp) with its own known_hosts: the container is new to it."""
    return subprocess.run([tool, "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                           "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", *args],
                          capture_output=True, text=True, timeout=120)


def sshd_port(container, port: int) -> int:
    """The host port of the container's sshd, once it answers."""
    host = services.host_port(container, port)
    services.wait_until(lambda: services.host_key_fingerprint(host) is not None, 60, "sshd did not answer")
    return host


def passed(checks: dict, check_id: str) -> None:
    assert check_id in checks, f"{check_id} did not run"
    ok, detail = checks[check_id]
    assert ok, f"{check_id}: {detail}"


class FlavorTests:
    flavor = ""

    def test_tags_name_the_flavor(self, flavor_image):
        assert flavor_image.refs[0] == f"{TEST_REPOSITORY}:2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-{self.flavor}"

    def test_carries_runtime_layers_unchanged(self, flavor_image, runtime_image, docker_client):
        assert flavor_image.runtime_id == runtime_image.image_id  # built on the way, from the cache
        runtime = docker_client.diff_ids(runtime_image.image_id)
        mine = docker_client.diff_ids(flavor_image.image_id)
        assert mine[:len(runtime)] == runtime
        assert len(mine) > len(runtime)

    def test_runs_the_probe_alone(self, flavor_image, containers):
        result = containers.run(flavor_image.refs[0], ["selftest", "cost", "--tokens", "800", "--seconds", "1.2",
                                                       "--gpu-hour-usd", "0.8"])
        assert result.exit_code == 0, result.output
        assert "jupyter:" not in result.output and "ssh:" not in result.output


class ServiceTests(FlavorTests):
    def test_no_service_runs_as_root(self, checks):
        passed(checks, "services-not-root")

    def test_listens_only_on_declared_ports(self, checks):
        passed(checks, "declared-ports-only")

    def test_healthcheck_reports_healthy(self, checks):
        passed(checks, "healthcheck")

    def test_docker_stop_ends_everything_by_signal(self, checks):
        passed(checks, "clean-stop")
        passed(checks, "no-zombies")


class JupyterTests(ServiceTests):
    def test_token_is_required(self, checks):
        passed(checks, "jupyter-auth")

    def test_kernel_imports_torch(self, checks):
        passed(checks, "jupyter-kernel")
        assert "2.8.0" in checks["jupyter-kernel"][1]

    def test_random_token_is_logged_when_none_is_given(self, flavor_image, containers):
        container = containers.start(flavor_image.refs[0])
        services.wait_until(lambda: "generated token:" in services.logs(container), 60, "no token logged")
        token = services.logs(container).split("generated token:")[1].split()[0]
        assert len(token) >= 32

    def test_open_mode_needs_the_explicit_flag_and_warns(self, flavor_image, containers):
        container = containers.start(flavor_image.refs[0], environment={"JUPYTER_DISABLE_AUTH": "yes-i-understand"})
        services.wait_until(lambda: "authentication is OFF" in services.logs(container), 60, "no warning logged")

    def test_a_terminal_opens_bash(self, flavor_image, docker_client):
        """JupyterLab's terminal runs $SHELL, which the image sets to bash (unset, it would be sh)."""
        token = "terminal-test-token"
        with services.running(docker_client, flavor_image.image_id, environment={"JUPYTER_TOKEN": token},
                              ports=(8888,)) as container:
            base = f"http://127.0.0.1:{services.host_port(container, 8888)}"
            headers = {"Authorization": f"token {token}"}
            services.wait_until(lambda: requests.get(f"{base}/api", timeout=2).ok, 120, "Jupyter did not answer")
            name = requests.post(f"{base}/api/terminals", headers=headers, timeout=30).json()["name"]
            ws = websocket.create_connection(f"{base.replace('http', 'ws', 1)}/terminals/websocket/{name}",
                                             header=headers, timeout=30)
            try:
                ws.send(json.dumps(["stdin", 'echo "SH""ELL_IS=$0"\r']))
                seen, deadline = "", time.monotonic() + 30
                while not re.search(r"SHELL_IS=\S*bash", seen) and time.monotonic() < deadline:
                    message = json.loads(ws.recv())
                    if message[0] == "stdout":
                        seen += message[1]
            finally:
                ws.close()
            assert re.search(r"SHELL_IS=\S*bash", seen), f"the terminal said: {seen[-300:]!r}"


    def test_behind_a_proxy_it_answers_under_the_base_url_and_stays_healthy(self, flavor_image, docker_client):
        """JUPYTER_BASE_URL moves every route under the prefix; JUPYTER_ALLOW_ORIGIN lets that page's
        origin in (CORS); the healthcheck follows the prefix."""
        token, origin = "proxy-test-token", "https://lab.example.com"
        environment = {"JUPYTER_TOKEN": token, "JUPYTER_BASE_URL": "/user/alice/", "JUPYTER_ALLOW_ORIGIN": origin}
        with services.running(docker_client, flavor_image.image_id, environment=environment,
                              ports=(8888,)) as container:
            base = f"http://127.0.0.1:{services.host_port(container, 8888)}"
            headers = {"Authorization": f"token {token}"}
            services.wait_until(lambda: requests.get(f"{base}/user/alice/api", timeout=2).ok, 120,
                                "Jupyter did not answer under /user/alice/")
            status = requests.get(f"{base}/user/alice/api/status", headers=headers, timeout=10)
            assert status.status_code == 200 and "started" in status.json()
            assert requests.get(f"{base}/api/status", headers=headers, timeout=10).status_code == 404
            cors = requests.get(f"{base}/user/alice/api/status", timeout=10,
                                headers={**headers, "Origin": origin})
            assert cors.headers.get("Access-Control-Allow-Origin") == origin
            health = container.exec_run(["/usr/local/bin/healthcheck"])
            assert health.exit_code == 0, health.output.decode()


class SSHTests(ServiceTests):
    def test_its_ubuntu_packages_are_the_locked_ones(self, flavor_image, docker_client, the_manifest):
        """The base's packages and what the ssh step added, exactly as the apt lock pins them."""
        lock = aptlock.read(aptlock.lock_path(the_manifest))
        installed = aptlock.installed(docker_client, flavor_image.image_id)
        assert installed == aptlock.expected(lock, flavor_image.variant)
        assert installed["openssh-server"] == lock.versions("ssh")["openssh-server"]

    def test_its_sshd_carries_the_fix_for_cve_2024_6387(self, flavor_image, containers):
        """regreSSHion is fixed in 1:9.6p1-3ubuntu13.3; dpkg inside the image compares the versions."""
        result = containers.run(flavor_image.image_id, [
            "sh", "-c", "v=$(dpkg-query -W -f '${Version}' openssh-server) && echo \"$v\" && "
                        "dpkg --compare-versions \"$v\" ge 1:9.6p1-3ubuntu13.3"])
        assert result.exit_code == 0, f"openssh-server {result.output.strip()} is older than 1:9.6p1-3ubuntu13.3"

    def test_key_login_runs_torch(self, checks):
        passed(checks, "ssh-login")

    def test_password_and_root_are_refused(self, checks):
        passed(checks, "ssh-password-refused")
        passed(checks, "ssh-root-refused")

    def test_each_container_has_its_own_host_key(self, checks):
        passed(checks, "ssh-host-keys-per-container")
        passed(checks, "ssh-no-baked-host-keys")

    def test_without_a_key_sshd_stays_off_and_the_container_runs(self, checks):
        passed(checks, "ssh-without-key")

    def test_scp_and_sftp_work_with_the_openssh_client(self, flavor_image, docker_client, the_manifest, tmp_path):
        key = openssh_key(tmp_path)
        env = {"SSH_PUBLIC_KEY": (tmp_path / "id.pub").read_text().strip()}
        with services.running(docker_client, flavor_image.image_id, environment=env, ports=(22,)) as container:
            port = sshd_port(container, 22)
            (tmp_path / "up.txt").write_text("sent with scp\n")
            scp = openssh(tmp_path, "scp", key, "-P", str(port), str(tmp_path / "up.txt"),
                          f"{the_manifest.user['name']}@127.0.0.1:/tmp/up.txt")
            assert scp.returncode == 0, scp.stderr
            (tmp_path / "batch").write_text(f"ls /tmp\nget /tmp/up.txt {tmp_path / 'down.txt'}\n")
            sftp = openssh(tmp_path, "sftp", key, "-P", str(port), "-b", str(tmp_path / "batch"),
                           f"{the_manifest.user['name']}@127.0.0.1")
            assert sftp.returncode == 0, sftp.stderr
            assert "up.txt" in sftp.stdout and (tmp_path / "down.txt").read_text() == "sent with scp\n"

    def test_the_host_key_survives_docker_restart(self, flavor_image, docker_client, tmp_path):
        _, public = services.new_key()
        with services.running(docker_client, flavor_image.image_id, environment={"SSH_PUBLIC_KEY": public},
                              ports=(22,)) as container:
            before = services.host_key_fingerprint(sshd_port(container, 22))
            container.restart(timeout=10)
            after = services.host_key_fingerprint(sshd_port(container, 22))
        assert before == after, "a restarted container must not look like a man in the middle"

    def test_public_key_alias_ssh_port_and_the_users_environment(self, flavor_image, docker_client,
                                                                 the_manifest, tmp_path):
        """The GPU clouds' PUBLIC_KEY, a port of the user's choosing (as --network host needs), and a
        variable given with -e reaches the SSH session."""
        key = openssh_key(tmp_path)
        env = {"PUBLIC_KEY": (tmp_path / "id.pub").read_text().strip(), "SSH_PORT": "2222",
               "MY_SETTING": "from docker run -e"}
        with services.running(docker_client, flavor_image.image_id, environment=env, ports=(2222,)) as container:
            port = sshd_port(container, 2222)
            session = openssh(tmp_path, "ssh", key, "-p", str(port), f"{the_manifest.user['name']}@127.0.0.1",
                              "echo \"$MY_SETTING\"; python -c 'import torch; print(torch.__version__)'")
            assert session.returncode == 0, session.stderr
            assert session.stdout.splitlines()[:1] == ["from docker run -e"]
            assert session.stdout.splitlines()[1].startswith("2.8.0")
            container.reload()
            health = container.exec_run(["/usr/local/bin/healthcheck"])
            assert health.exit_code == 0, health.output.decode()


class DevelTests(FlavorTests):
    def test_cuda_toolchain_assembles_device_code_and_links_cudart(self, checks):
        passed(checks, "devel-cuda-toolchain")

    def test_torch_extension_builds(self, checks):
        passed(checks, "devel-torch-extension")


class TestDevel(DevelTests):
    flavor = "devel"


class TestJupyter(JupyterTests):
    flavor = "jupyter"


class TestSSH(SSHTests):
    flavor = "ssh"


class TestWorkstation(DevelTests, JupyterTests, SSHTests):
    flavor = "workstation"

    def test_the_tools_a_person_expects_are_there_as_the_user(self, flavor_image, containers, docker_client,
                                                              the_manifest):
        """git, curl, less, editors, tmux, rsync, ssh, htop: installed from the apt lock's [workstation]."""
        tools = ["git", "curl", "less", "nano", "vi", "tmux", "rsync", "ssh", "scp", "htop"]
        result = containers.run(flavor_image.image_id, ["bash", "-c", "for t in " + " ".join(tools)
                                                        + '; do command -v "$t" || echo "missing $t"; done; '
                                                          'git --version && tmux -V && echo "shell: $SHELL"'])
        assert result.exit_code == 0 and "missing" not in result.output, result.output
        assert "shell: /bin/bash" in result.output
        installed = aptlock.installed(docker_client, flavor_image.image_id)
        lock = aptlock.read(aptlock.lock_path(the_manifest))
        assert installed["git"] == lock.versions("workstation")["git"]

    def test_verify_passes_every_check(self, flavor_image):
        proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "verify", flavor_image.refs[0]],
                              capture_output=True, text=True, cwd=ROOT)
        print(proc.stdout, proc.stderr)
        assert proc.returncode == 0
        for check_id, _ in verify.CHECKS:
            states = ("PASS", "WARN") if check_id == "security-pocket" else ("PASS",)  # WARN: a stale apt lock
            assert any(line.startswith(states) and f" {check_id} " in line for line in proc.stdout.splitlines())
        for check_id in ("jupyter-kernel", "ssh-login", "devel-cuda-toolchain", "services-not-root", "declared-ports-only"):
            assert any(line.startswith("PASS") and f" {check_id} " in line for line in proc.stdout.splitlines())
