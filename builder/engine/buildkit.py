"""A build through BuildKit, which the docker SDK cannot drive: the docker CLI runs it.

`docker buildx build --load` where the buildx plugin is installed, else a docker CLI older than
23 whose `docker build` has BuildKit built in (DOCKER_BUILDKIT=1): see probe.buildkit_command.
The context is the same tar the classic builder gets; the Dockerfile is the variant's
Dockerfile.buildkit in it. Secrets (the build CA) are files handed to the CLI, never in the
context's layers or the cache keys. The CLI is stopped with the build when this process is.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

from builder.engine.probe import buildkit_command
from builder.errors import BuildFailed, UserError


def build_argv(cli: list[str], *, dockerfile: str, target: str, iidfile: str, nocache: bool,
               extra_hosts: dict[str, str], buildargs: dict[str, str], secrets: dict[str, Path]) -> list[str]:
    """The CLI's argument list; the context comes on standard input ("-")."""
    argv = [*cli, "--progress=plain", "-f", dockerfile, "--target", target, "--iidfile", iidfile]
    argv += ["--no-cache"] if nocache else []
    for name, address in sorted(extra_hosts.items()):
        argv += ["--add-host", f"{name}:{address}"]
    for key, value in sorted(buildargs.items()):
        argv += ["--build-arg", f"{key}={value}"]
    for key, path in sorted(secrets.items()):
        argv += ["--secret", f"id={key},src={path}"]
    return [*argv, "-"]


def build(context: IO[bytes], *, docker_host: str, dockerfile: str, target: str, nocache: bool = False,
          quiet: bool = False, out: IO[str] = sys.stdout, extra_hosts: dict[str, str] | None = None,
          buildargs: dict[str, str] | None = None, secrets: dict[str, Path] | None = None) -> str:
    """Build without tagging; returns what the engine calls the image (as the classic build does).

    Output streams as BuildKit prints it (plain progress); with quiet, the last lines are kept
    and shown only if the build fails.
    """
    found = buildkit_command()
    if found is None:
        raise UserError("the BuildKit backend needs the docker CLI's buildx plugin (or a docker CLI "
                        "older than 23, which has BuildKit built in); install docker-buildx, or "
                        "use --backend classic")
    cli, extra_env = found
    env = {**os.environ, **extra_env, "DOCKER_HOST": docker_host}
    tail: collections.deque[str] = collections.deque(maxlen=60)
    work = tempfile.mkdtemp(prefix="pytorch-cuda-buildkit-")
    try:
        context_path = Path(work, "context.tar")
        with open(context_path, "wb") as f:
            shutil.copyfileobj(context, f)
        iidfile = str(Path(work, "iid"))
        argv = build_argv(cli, dockerfile=dockerfile, target=target, iidfile=iidfile, nocache=nocache,
                          extra_hosts=extra_hosts or {}, buildargs=buildargs or {}, secrets=secrets or {})
        with open(context_path, "rb") as stdin:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, text=True, errors="replace")
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line)
                if not quiet:
                    out.write(line)
                    out.flush()
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: the build goes with us
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        image_id = Path(iidfile).read_text().strip() if Path(iidfile).exists() else ""
        if code != 0 or not image_id:
            shown = "".join(tail) if quiet else ""
            raise BuildFailed(f"{shown}BuildKit build failed ({' '.join(cli)} exited with {code})")
        return image_id
    finally:
        shutil.rmtree(work, ignore_errors=True)
