"""The Docker engine, the one place that talks to it (through the docker SDK).

The engine is probed once per run (`connect`): version, storage driver, image store, whether
its layer store can be read here, BuildKit, rootless (builder/engine/probe.py). Every other
module asks this one to build, run, tag, inspect, save or load, and to hand over an image's
layers, from the local store (builder/engine/store.py) or from the image archive (`docker
save`), whichever the probe chose. Images are named by their image ID, the sha256 of their
config, whatever the engine keys them by (the containerd image store keys them by manifest).
"""
from __future__ import annotations

import collections
import hashlib
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import docker
import docker.auth
import docker.errors

from builder import cache
from builder.engine import buildkit, store
from builder.engine.probe import LAYER_SOURCES, EngineInfo, probe
from builder.errors import BuildFailed, UserError
from builder.normalize import Archive, config_digest, open_archive

__all__ = ["BACKENDS", "LABEL_TEST", "LAYER_SOURCES", "Engine", "EngineInfo", "RunResult", "connect", "connection_lost"]

BACKENDS = ("auto", "classic", "buildkit")
LABEL_TEST = "pytorch-cuda.test"  # containers the tests and verify start carry this label
TAGGED: list[str] = []  # every tag this process wrote: an interrupt or a lost engine says so
# The SDK's errors, for callers that must tell them apart (they import no docker module).
NotFound = docker.errors.NotFound
ImageNotFound = docker.errors.ImageNotFound
APIError = docker.errors.APIError
EngineError = docker.errors.DockerException


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def one_line(exc: BaseException) -> str:
    """The innermost cause of an exception, on one line."""
    seen = set()
    while (exc.__cause__ or exc.__context__) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


_CONNECTION_ERRORS = ("ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ProtocolError",
                      "ChunkedEncodingError", "RemoteDisconnected", "BrokenPipeError", "IncompleteRead",
                      "ReadTimeout", "NewConnectionError", "MaxRetryError", "FileNotFoundError", "SSHException",
                      "NoValidConnectionsError")


def connection_lost(exc: BaseException) -> str | None:
    """One line saying what broke, when ``exc`` (or what caused it) is the engine going away."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if type(node).__name__ in _CONNECTION_ERRORS:
            return one_line(node)
        node = node.__cause__ or node.__context__
    return None


def connect(layer_source: str = "auto") -> "Engine":
    """The engine at DOCKER_HOST (or the default socket), probed; a one-line UserError when none answers."""
    where = docker_host()
    try:
        client = docker.from_env(timeout=3600)
        client.ping()
        info, version = client.info(), client.version()
    except Exception as exc:  # the SDK, requests, urllib3 or paramiko, depending on the scheme
        raise UserError(f"no Docker engine answers at {where} ({one_line(exc)}); start one with "
                        f"`scripts/start-engine` (or `make engine`), or point DOCKER_HOST at one") from None
    found = probe(info, version, where, layer_source)
    if layer_source == "store" and not found.store_readable:
        raise UserError(found.layer_source_reason + "; use --layer-source auto or archive")
    return Engine(client, found)


@dataclass
class RunResult:
    exit_code: int
    output: str


@dataclass
class Engine:
    client: docker.DockerClient
    info: EngineInfo
    _keys: dict[str, str] | None = None  # image ID → what the engine calls it (containerd store)

    # -- images ---------------------------------------------------------------------------
    # The containerd image store keys an image by its manifest digest and cannot look it up by
    # its config digest, our image ID. A manifest names exactly one config, so the pairs learnt
    # (from what `docker load` reports, or from an archive) hold on every engine: kept on disk.

    def _known_keys(self) -> dict[str, str]:
        if self._keys is None:
            try:
                self._keys = json.loads(cache.path("engine-image-keys.json").read_text())
            except (OSError, ValueError):
                self._keys = {}
        return self._keys

    def ref(self, image: str) -> str:
        """What to hand the engine for an image ID or reference."""
        if self.info.image_store != "containerd":
            return image
        return self._known_keys().get(image, image)

    def remember(self, image_id: str, engine_key: str) -> None:
        if not engine_key.startswith("sha256:") or engine_key == image_id:
            return
        keys = self._known_keys()
        if keys.get(image_id) != engine_key:
            keys[image_id] = engine_key
            path = cache.path("engine-image-keys.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(keys, indent=0, sort_keys=True))
            tmp.replace(path)

    def inspect(self, image: str) -> dict[str, Any]:
        return self.client.api.inspect_image(self.ref(image))

    def image_exists(self, image: str) -> bool:
        try:
            self.inspect(image)
            return True
        except docker.errors.ImageNotFound:
            return False

    def image_id(self, image: str) -> str:
        """The image ID (config digest) of an image in the engine; ImageNotFound when absent."""
        attrs = self.inspect(image)
        if self.info.image_store != "containerd":
            return attrs["Id"]
        for image_id, key in self._known_keys().items():
            if key == attrs["Id"]:
                return image_id
        return self._config_digest(image)

    def _config_digest(self, image: str) -> str:
        """On the containerd store the engine keys images by manifest: the archive names the config.
        The archive is streamed, nothing written to disk, and left as soon as the manifest went by
        (Docker 28 writes the blobs in digest order, so about half of it is read on average);
        only an archive that ends first is saved whole."""
        key = self.inspect(image)["Id"]
        with contextlib.closing(self.save_stream(image)) as stream:
            image_id = config_digest(stream, key)
        if image_id is None:
            with self.saved(image) as archive:
                image_id = "sha256:" + hashlib.sha256(archive.config).hexdigest()
        self.remember(image_id, key)
        return image_id

    def diff_ids(self, image: str) -> list[str]:
        return list(self.inspect(image)["RootFS"].get("Layers") or [])

    def run_config(self, image: str) -> dict[str, Any]:
        """The image's run configuration (Labels, Env, Entrypoint, ...)."""
        return self.inspect(image).get("Config") or {}

    def size(self, image: str) -> int:
        return int(self.inspect(image).get("Size") or 0)

    def history(self, image: str) -> list[str]:
        return [h.get("CreatedBy", "") for h in self.client.api.history(self.ref(image))]

    def image_ids(self, *, all: bool = False, dangling: bool = False) -> list[str]:
        filters = {"dangling": True} if dangling else None
        return [i["Id"] for i in self.client.api.images(all=all, filters=filters)]

    def tags_by_image(self) -> dict[str, list[str]]:
        return {i["Id"]: [t for t in (i.get("RepoTags") or []) if t != "<none>:<none>"]
                for i in self.client.api.images()}

    def remove_image(self, image: str, *, force: bool = False) -> None:
        self.client.api.remove_image(self.ref(image), force=force)

    # -- tags -----------------------------------------------------------------------------

    def tag(self, image: str, refs: Iterable[str]) -> None:
        """Write tags with SIGINT and SIGTERM held back, so an interrupt never leaves half of them."""
        refs = list(refs)
        held = {signal.SIGINT, signal.SIGTERM}
        masked = hasattr(signal, "pthread_sigmask")
        if masked:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            for r in refs:
                repo, _, tag_ = r.rpartition(":")
                self.client.api.tag(self.ref(image), repo, tag_)
                TAGGED.append(r)
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def untag(self, refs: Iterable[str]) -> None:
        """Remove tags (not the image's layers, which stay as build cache)."""
        for r in refs:
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.api.remove_image(r, noprune=True)

    def tags_of(self, image: str) -> list[str]:
        return [t for t in (self.inspect(image).get("RepoTags") or []) if t != "<none>:<none>"]

    # -- build and run --------------------------------------------------------------------

    def build(self, context: IO[bytes], *, target: str, nocache: bool = False, quiet: bool = False,
              out: IO[str] = sys.stdout, extra_hosts: dict[str, str] | None = None,
              buildargs: dict[str, str] | None = None, dockerfile: str = "Dockerfile",
              backend: str = "classic", secrets: dict[str, Path] | None = None) -> str:
        """Build from a tar context without tagging; returns the image ID.

        extra_hosts: name → address in the build containers' /etc/hosts (not in the image).
        buildargs: the Dockerfile's ARG values.
        dockerfile: its name in the context.
        backend: "classic" (the engine's API) or "buildkit" (the docker CLI, with ``secrets``:
        id → file; the classic builder has no secrets).

        Output streams as the engine sends it (a torch install takes minutes and must show life);
        with quiet, the last lines are kept and shown only if a step fails.
        """
        if backend == "buildkit":
            return buildkit.build(context, docker_host=self.info.docker_host, dockerfile=dockerfile,
                                  target=target, nocache=nocache, quiet=quiet, out=out, extra_hosts=extra_hosts,
                                  buildargs=buildargs, secrets=secrets)
        tail: collections.deque[str] = collections.deque(maxlen=60)
        image_id = None
        stream = self.client.api.build(fileobj=context, custom_context=True, dockerfile=dockerfile,
                                       target=target, nocache=nocache,
                                       rm=True, forcerm=True, pull=False, decode=True, extra_hosts=extra_hosts,
                                       buildargs=buildargs)
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

    def run(self, image: str, command: list[str], *, entrypoint: list[str] | None = None, user: str | None = None,
            volumes: dict | None = None, environment: dict | None = None, network_disabled: bool = False) -> RunResult:
        """Run a command to completion: exit code and output; the container is always removed."""
        container = self.client.containers.create(self.ref(image), command=command, entrypoint=entrypoint, user=user,
                                                  volumes=volumes, environment=environment,
                                                  network_disabled=network_disabled, labels={LABEL_TEST: "run"})
        try:
            container.start()
            status = container.wait()
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
            return RunResult(exit_code=status["StatusCode"], output=output)
        finally:
            container.remove(force=True, v=True)

    def start(self, image: str, **kwargs: Any) -> Any:
        """A detached container (the SDK's Container); the caller removes it."""
        kwargs.setdefault("labels", {LABEL_TEST: "tracked"})
        return self.client.containers.run(self.ref(image), detach=True, **kwargs)

    def remove_container(self, container: Any) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)

    def import_image(self, path: str, repository: str, tag: str, changes: list[str]) -> None:
        self.client.api.import_image_from_file(path, repository=repository, tag=tag, changes=changes)

    def pull(self, ref: str) -> None:
        self.client.images.pull(ref)

    # -- layers in and out ----------------------------------------------------------------

    def save_stream(self, image: str) -> IO[bytes]:
        """`docker save` of one image as a readable stream (never the whole image in memory)."""
        return io.BufferedReader(_ChunkReader(self.client.api.get_image(self.ref(image))), buffer_size=1 << 20)

    @contextlib.contextmanager
    def saved(self, image: str, tmp_dir: str | None = None) -> Iterator[Archive]:
        """The image archive (`docker save`) in a temp file, read as config + plain layer tars."""
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(tempfile.NamedTemporaryFile(prefix="pytorch-cuda-save-", suffix=".tar", dir=tmp_dir))
            for chunk in self.client.api.get_image(self.ref(image)):
                f.write(chunk)
            f.flush()
            yield open_archive(f, stack, tmp_dir)

    @contextlib.contextmanager
    def layers(self, image: str, tmp_dir: str | None = None) -> Iterator[tuple[Archive, str]]:
        """The image's config and layers from where the probe said to read them; (archive, source).

        The local store is read in place; when this image's files there are not what the engine
        says (pruned meanwhile, unreadable), auto falls back to the archive and a forced store fails.
        """
        if self.info.layer_source == "store":
            local = None
            with contextlib.suppress(OSError):
                local = store.local_image(self.client.api, self.ref(image), self.info.data_root)
            if local is not None:
                with contextlib.ExitStack() as stack:
                    files = [stack.enter_context(local.open_layer(i)) for i in range(len(local.layers))]
                    yield Archive(config=local.config, layers=[(f, 0, f.size) for f in files]), "store"
                return
            if self.info.layer_source_requested == "store":
                raise BuildFailed(f"--layer-source store: the engine's store at {self.info.data_root} does not hold "
                                  f"{image} as the engine describes it (pruned meanwhile?); build again, or use "
                                  f"--layer-source auto to read it through docker save")
        with self.saved(image, tmp_dir) as archive:
            yield archive, "archive"

    def load(self, upload: Iterable[bytes] | bytes) -> list[dict]:
        """`docker load`; the engine's messages. Remembers what the engine calls each image it loaded."""
        # quiet=False: the engine then reports progress while it registers layers, which keeps the
        # client's read timeout from firing on big images.
        try:
            messages = list(self.client.api.load_image(upload, quiet=False))
        except docker.errors.APIError as e:
            raise BuildFailed(f"docker load rejected the image: {e}") from e
        for m in messages:
            if isinstance(m, dict) and m.get("error"):
                raise BuildFailed(f"docker load failed: {m['error']}")
        return messages

    def loaded(self, image_id: str, messages: list[dict]) -> str:
        """Find the image a load made, by its ID or by what the load said; ``image_id`` on success."""
        for m in messages:
            text = str(m.get("stream", "")) if isinstance(m, dict) else ""
            if "Loaded image ID:" in text:
                self.remember(image_id, text.split("Loaded image ID:", 1)[1].strip())
            elif "Loaded image:" in text:
                self.remember(image_id, text.split("Loaded image:", 1)[1].strip())
        if not self.image_exists(image_id):
            raise BuildFailed(f"docker load did not produce {image_id}: {messages}")
        return image_id

    # -- registries -----------------------------------------------------------------------

    def push(self, repo: str, tag: str, auth_config: dict | None = None) -> Iterator[dict]:
        return self.client.api.push(repo, tag, stream=True, decode=True, auth_config=auth_config)

    def pull_stream(self, repo: str, tag: str, auth_config: dict | None = None) -> Iterator[dict]:
        return self.client.api.pull(repo, tag=tag, stream=True, decode=True, auth_config=auth_config)


def free_bytes(info: EngineInfo) -> int | None:
    """Free space where the engine keeps images, when that is on this host and visible."""
    if not info.local or not info.data_root:
        return None
    try:
        st = os.statvfs(info.data_root)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def credentials(registry: str) -> dict[str, str] | None:
    """Credentials for a registry as the Docker CLI finds them: ~/.docker/config.json (or
    $DOCKER_CONFIG), its `auths`, `credsStore` and `credHelpers`. None when there are none."""
    config = docker.auth.load_config()
    found = docker.auth.resolve_authconfig(config, registry)
    if not found:
        return None
    username = found.get("username") or found.get("Username")
    password = found.get("password") or found.get("Password") or found.get("Secret")
    token = found.get("IdentityToken") or found.get("identitytoken")
    if token and not password:
        return {"username": username or "<token>", "password": token}
    return {"username": username, "password": password} if username and password else None


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n

    def close(self) -> None:
        """Stop the stream: closing the chunk generator lets the engine's response go."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def stream_of(chunks: Iterable[bytes]) -> BinaryIO:
    return io.BufferedReader(_ChunkReader(chunks), buffer_size=1 << 20)  # type: ignore[return-value]
