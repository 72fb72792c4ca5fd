"""The Docker engine, through the docker SDK: connect, build with streamed output, run, tag.

Every other module goes through these few functions, so there is one place that knows how the
classic builder reports progress and errors.
"""
from __future__ import annotations

import collections
import io
import os
import sys
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import docker
import docker.errors

from builder.errors import BuildFailed, UserError

LABEL_TEST = "pytorch-cuda.test"  # containers the tests start carry this label


def client() -> docker.DockerClient:
    """A client for DOCKER_HOST or the default socket, or a UserError saying how to start one."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        c = docker.from_env(timeout=3600)
        c.ping()
    except docker.errors.DockerException as exc:
        raise UserError(f"no Docker engine answers at {where} ({exc.__class__.__name__}); "
                        f"start one with `scripts/start-engine` (or `make engine`), or point DOCKER_HOST at one") from None
    return c


def image_exists(c: docker.DockerClient, ref: str) -> bool:
    try:
        c.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(c: docker.DockerClient, context: IO[bytes], *, target: str, nocache: bool = False,
          quiet: bool = False, out: IO[str] = sys.stdout) -> str:
    """Build from a tar context without tagging; returns the image ID.

    Output streams as the engine sends it (a torch install takes minutes and must show life);
    with quiet, the last lines are kept and shown only if a step fails.
    """
    tail: collections.deque[str] = collections.deque(maxlen=60)
    image_id = None
    stream = c.api.build(fileobj=context, custom_context=True, target=target, nocache=nocache,
                         rm=True, forcerm=True, pull=False, decode=True)
    for chunk in stream:
        text = chunk.get("stream", "")
        if text:
            tail.append(text)
            if not quiet:
                out.write(text)
                out.flush()
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        if "error" in chunk:
            shown = "" if not quiet else "".join(tail)
            raise BuildFailed(f"{shown}docker build failed: {chunk['error'].strip()}")
    if image_id is None:
        raise BuildFailed("docker build ended without an image ID:\n" + "".join(tail))
    return image_id


@dataclass
class RunResult:
    exit_code: int
    output: str


def run(c: docker.DockerClient, image: str, command: list[str], *, entrypoint: list[str] | None = None,
        user: str | None = None, volumes: dict | None = None, environment: dict | None = None,
        network_disabled: bool = False) -> RunResult:
    """Run a command to completion and return its exit code and output; the container is always removed."""
    container = c.containers.create(image, command=command, entrypoint=entrypoint, user=user,
                                    volumes=volumes, environment=environment,
                                    network_disabled=network_disabled, labels={LABEL_TEST: "run"})
    try:
        container.start()
        status = container.wait()
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return RunResult(exit_code=status["StatusCode"], output=output)
    finally:
        container.remove(force=True, v=True)


def tag(c: docker.DockerClient, image_id: str, refs: Iterable[str]) -> None:
    for ref in refs:
        repo, _, tag_ = ref.rpartition(":")
        c.api.tag(image_id, repo, tag_)


def untag(c: docker.DockerClient, refs: Iterable[str]) -> None:
    """Remove tags (not the image's layers, which stay as build cache)."""
    for ref in refs:
        try:
            c.api.remove_image(ref, noprune=True)
        except docker.errors.ImageNotFound:
            pass


def tags_of(c: docker.DockerClient, image_id: str) -> list[str]:
    return list(c.images.get(image_id).tags)


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n


def saved_stream(c: docker.DockerClient, image: str) -> IO[bytes]:
    """`docker save` of one image as a readable stream (never the whole image in memory)."""
    return io.BufferedReader(_ChunkReader(c.api.get_image(image)), buffer_size=1 << 20)
