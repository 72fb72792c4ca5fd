"""Live checks of what a flavor adds, with real clients: Jupyter's REST API and a kernel over its
websocket, OpenSSH through paramiko, the CUDA toolchain and a torch C++ extension for devel, and the process
table (no service as root, no undeclared listening port) of a container running its services.

Each check returns CheckResult-like tuples (id, ok, detail); verify.py reports them.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import time
import uuid
from typing import Callable, Iterator

import paramiko
import requests
import websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from builder import engine
from builder.engine import Engine
from builder.manifest import Variant

Result = tuple[str, bool, str]
logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # polling a starting sshd is expected to fail

# Runs inside a container: every process (uid, state, command) and every listening TCP socket.
PROCESS_TABLE = r"""
import json, os
procs = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = dict(l.split(":\t", 1) for l in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in l)
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
    except OSError:
        continue
    procs.append({"pid": int(pid), "uid": int(status["Uid"].split()[0]), "state": status["State"][0], "cmd": cmd})
listening = []
for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
    for line in open(table).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            address, port = local.split(":")
            listening.append({"loopback": address in ("0100007F", "00000000000000000000000001000000"), "port": int(port, 16)})
print(json.dumps({"processes": procs, "listening": listening}))
"""


@contextlib.contextmanager
def running(c: Engine, image: str, *, environment: dict | None = None,
            ports: tuple[int, ...] = ()) -> Iterator:
    """A detached container with its ports published on 127.0.0.1; always removed, volumes too."""
    container = c.start(image, environment=environment or {},
                        ports={f"{p}/tcp": ("127.0.0.1", None) for p in ports}, labels={engine.LABEL_TEST: "verify"})
    try:
        yield container
    finally:
        c.remove_container(container)


def host_port(container, port: int) -> int:
    container.reload()
    return int(container.ports[f"{port}/tcp"][0]["HostPort"])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout:.0f} s")


def logs(container) -> str:
    return container.logs().decode(errors="replace")


def exec_python(container, code: str) -> tuple[int, str]:
    result = container.exec_run(["python", "-c", code])
    return result.exit_code, result.output.decode(errors="replace")


# --- Jupyter -----------------------------------------------------------------------------

def jupyter_checks(container, token: str, torch_version: str) -> list[Result]:
    base = f"http://127.0.0.1:{host_port(container, 8888)}"
    try:
        wait_until(lambda: requests.get(f"{base}/api", timeout=2).ok, 120, "Jupyter did not answer")
    except TimeoutError as exc:
        return [("jupyter-auth", False, f"{exc}; log:\n{logs(container)[-1500:]}")]
    anonymous = requests.get(f"{base}/api/status", timeout=10).status_code
    authorized = requests.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=10).status_code
    results = [("jupyter-auth", anonymous in (401, 403) and authorized == 200,
                f"GET /api/status: {anonymous} without the token, {authorized} with it")]
    output = run_in_kernel(base, token, "import torch; print(torch.__version__)")
    results.append(("jupyter-kernel", output.startswith(torch_version),
                    f"a kernel started through the REST API ran `import torch` → {output!r}"))
    return results


def run_in_kernel(base: str, token: str, code: str) -> str:
    """Start a kernel through the REST API, run code over its websocket channel, read stdout back."""
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{base}/api/kernels", headers=headers, json={}, timeout=30).json()
    try:
        ws = websocket.create_connection(
            f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel['id']}/channels", header=headers, timeout=120)
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "verify", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False},
        }))
        output = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                output += msg["content"]["text"]
            elif msg["msg_type"] == "error":
                return f"error: {msg['content']['ename']}: {msg['content']['evalue']}"
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        ws.close()
        return output.strip()
    finally:
        requests.delete(f"{base}/api/kernels/{kernel['id']}", headers=headers, timeout=30)


# --- SSH ---------------------------------------------------------------------------------

def new_key() -> tuple[paramiko.PKey, str]:
    """A fresh ed25519 key pair: paramiko's private key and the authorized_keys line."""
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), f"{public} verify"


def ssh_connect(port: int, user: str, key: paramiko.PKey) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a fresh container: nothing to pin yet
    client.connect("127.0.0.1", port=port, username=user, pkey=key, allow_agent=False, look_for_keys=False,
                   timeout=20, banner_timeout=20, auth_timeout=20)
    return client


def host_key_fingerprint(port: int) -> str:
    with contextlib.closing(paramiko.Transport(("127.0.0.1", port))) as transport:
        transport.start_client(timeout=20)
        return transport.get_remote_server_key().get_fingerprint().hex()


def allowed_auth_methods(port: int, user: str) -> list[str]:
    with contextlib.closing(paramiko.Transport(("127.0.0.1", port))) as transport:
        transport.start_client(timeout=20)
        try:
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
    return ["none"]


def ssh_checks(c: Engine, image: str, container, key: paramiko.PKey, user: str,
               environment: dict, torch_version: str) -> list[Result]:
    port = host_port(container, 22)
    try:
        wait_until(lambda: host_key_fingerprint(port) is not None, 60, "sshd did not answer")
    except TimeoutError as exc:
        return [("ssh-login", False, f"{exc}; log:\n{logs(container)[-1500:]}")]
    with contextlib.closing(ssh_connect(port, user, key)) as client:
        _, stdout, stderr = client.exec_command('python -c "import torch; print(torch.__version__)"', timeout=120)
        out, err = stdout.read().decode().strip(), stderr.read().decode().strip()
    results = [("ssh-login", out.startswith(torch_version), f"key login as {user}, `import torch` → {out or err!r}")]
    methods = allowed_auth_methods(port, user)
    results.append(("ssh-password-refused", "password" not in methods and "keyboard-interactive" not in methods,
                    f"methods offered: {', '.join(methods)}"))
    try:
        ssh_connect(port, "root", key).close()
        results.append(("ssh-root-refused", False, "root logged in with the user's key"))
    except paramiko.AuthenticationException:
        results.append(("ssh-root-refused", True, "root login refused"))
    first = host_key_fingerprint(port)
    with running(c, image, environment=environment, ports=(22,)) as other:
        other_port = host_port(other, 22)
        wait_until(lambda: host_key_fingerprint(other_port) is not None, 60, "second sshd did not answer")
        second = host_key_fingerprint(other_port)
    results.append(("ssh-host-keys-per-container", first != second,
                    f"two containers: {first[:16]}… and {second[:16]}…"))
    baked = container.exec_run(["sh", "-c", "ls /etc/ssh/ssh_host_* 2>/dev/null | wc -l"]).output.decode().strip()
    results.append(("ssh-no-baked-host-keys", baked == "0", f"{baked} host key file(s) in /etc/ssh"))
    with running(c, image, environment={k: v for k, v in environment.items() if not k.startswith("SSH_")}) as keyless:
        try:
            wait_until(lambda: "ssh: not started" in logs(keyless), 60, "no reason logged")
            time.sleep(2)
            keyless.reload()
            ok, detail = keyless.status == "running", f"container {keyless.status}; log says: " + next(
                line for line in logs(keyless).splitlines() if "ssh: not started" in line)[:160]
        except TimeoutError as exc:
            ok, detail = False, f"{exc}; log:\n{logs(keyless)[-800:]}"
    results.append(("ssh-without-key", ok, detail))
    return results


# --- devel -------------------------------------------------------------------------------

# PyPI's nvidia-cuda-nvcc-cu12 wheels carry ptxas, nvvm and the CUDA C++ headers but not the nvcc
# driver, so devel is checked on what it has: device code assembled by ptxas, host code built and
# linked against the CUDA runtime with the image's g++, and a torch C++ extension.
PTX = """.version 8.7
.target sm_90
.address_size 64
.visible .entry scale(.param .u64 x, .param .f32 a)
{
    .reg .b64 %rd<3>;
    .reg .f32 %f<3>;
    ld.param.u64 %rd1, [x];
    ld.param.f32 %f1, [a];
    cvta.to.global.u64 %rd2, %rd1;
    ld.global.f32 %f2, [%rd2];
    mul.f32 %f2, %f2, %f1;
    st.global.f32 [%rd2], %f2;
    ret;
}
"""
HOST_SOURCE = """#include <cstdio>
#include <cuda_runtime.h>
int main() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    std::printf("cudart %d: %s\\n", CUDART_VERSION, cudaGetErrorName(e));
}
"""
DEVEL_SCRIPT = f"""set -e
cat > /tmp/k.ptx <<'END'
{PTX}END
cat > /tmp/host.cpp <<'END'
{HOST_SOURCE}END
ptxas --version | tail -1
ptxas -arch=sm_90 /tmp/k.ptx -o /tmp/k.cubin && echo "cubin $(wc -c < /tmp/k.cubin) bytes"
g++ -I"$CUDA_HOME/include" /tmp/host.cpp -L"$CUDA_HOME/lib64" -lcudart -o /tmp/host
LD_LIBRARY_PATH="$CUDA_HOME/lib64" /tmp/host
"""
TORCH_EXTENSION = """from torch.utils.cpp_extension import load_inline
ext = load_inline(name="verify_ext", cpp_sources="int add(int a, int b) { return a + b; }", functions=["add"])
print("sum", ext.add(2, 3))
"""
NO_SERVICES = {"PYTORCH_CUDA_SERVICES": ""}


def devel_checks(c: Engine, image: str, cuda: str) -> list[Result]:
    toolchain = c.run(image, ["sh", "-c", DEVEL_SCRIPT], environment=NO_SERVICES, network_disabled=True)
    out = toolchain.output.strip()
    major, minor = cuda.split(".")[:2]
    ok = toolchain.exit_code == 0 and "cubin" in out and f"cudart {int(major) * 1000 + int(minor) * 10}:" in out
    results = [("devel-cuda-toolchain", ok, out.replace("\n", " | ")[-400:])]
    ext = c.run(image, ["python", "-c", TORCH_EXTENSION], environment=NO_SERVICES, network_disabled=True)
    results.append(("devel-torch-extension", ext.exit_code == 0 and "sum 5" in ext.output,
                    "built and ran a torch C++ extension" if "sum 5" in ext.output else ext.output[-600:]))
    return results


# --- processes ---------------------------------------------------------------------------

def process_checks(container, variant: Variant) -> list[Result]:
    code, output = exec_python(container, PROCESS_TABLE)
    if code != 0:
        return [("services-not-root", False, f"could not read the process table: {output[-300:]}")]
    table = json.loads(output.strip().splitlines()[-1])
    root = [p["cmd"][:60] for p in table["processes"] if p["uid"] == 0 and p["pid"] != 1]
    zombies = [p["cmd"][:60] or str(p["pid"]) for p in table["processes"] if p["state"] == "Z"]
    exposed = sorted({s["port"] for s in table["listening"] if not s["loopback"]})
    undeclared = sorted(set(exposed) - set(variant.ports))
    running_cmds = "; ".join(sorted({p["cmd"].split()[0].rsplit("/", 1)[-1] for p in table["processes"] if p["cmd"]}))
    return [
        ("services-not-root", not root, f"processes as root: {root}" if root else f"no process but tini as root ({running_cmds})"),
        ("declared-ports-only", not undeclared,
         f"listening on {exposed}; declared {list(variant.ports)}" + (f"; undeclared: {undeclared}" if undeclared else "")),
        ("no-zombies", not zombies, f"zombies: {zombies}" if zombies else "no zombie processes"),
    ]


def stop_checks(container) -> list[Result]:
    """`docker stop` ends every process by signal (tini -g), not by the SIGKILL after the timeout."""
    container.stop(timeout=10)
    container.reload()
    code = container.attrs["State"]["ExitCode"]
    return [("clean-stop", code != 137, f"exit code {code} after docker stop" +
             (" (needed SIGKILL)" if code == 137 else ""))]


def health_checks(container) -> list[Result]:
    try:
        wait_until(lambda: container.reload() or container.attrs["State"]["Health"]["Status"] == "healthy",
                   120, "the health check did not report healthy")
        return [("healthcheck", True, "Docker reports the container healthy")]
    except TimeoutError as exc:
        health = container.attrs["State"].get("Health", {})
        return [("healthcheck", False, f"{exc}: {json.dumps(health)[-400:]}")]


def flavor_checks(c: Engine, image: str, variant: Variant) -> list[Result]:
    """Everything the flavor promises beyond runtime, checked on running containers."""
    results: list[Result] = []
    if "devel" in variant.contents():
        results += devel_checks(c, image, variant.cuda.cuda)
    if not variant.services:
        return results
    token = secrets.token_hex(16)
    key, public = new_key()
    environment = {"JUPYTER_TOKEN": token, "SSH_PUBLIC_KEY": public}
    with running(c, image, environment=environment, ports=variant.ports) as container:
        if "jupyter" in variant.services:
            results += jupyter_checks(container, token, variant.cuda.torch)
        if "ssh" in variant.services:
            results += ssh_checks(c, image, container, key, variant.manifest.user["name"], environment,
                                  variant.cuda.torch)
        results += health_checks(container)
        results += process_checks(container, variant)
        results += stop_checks(container)
    return results
