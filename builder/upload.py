"""The project's own push: layers read through the engine adapter (its store or `docker save`),
compressed by builder/blobs.py, uploaded through the registry's HTTP API, several at once; then
the config (its digest is the image ID) and the manifest, and the tags last. The same image gives
the same manifest digest from every engine and machine, and `digest` prints it without a push.

Blobs the registry has are skipped (HEAD, by the digest this machine compressed before, each
remembered as soon as it is uploaded, so a push run again after a failure skips what got there);
a failed upload of one blob is retried from its start. A tag is written only after the manifest
it names is in the registry, so an interrupted push leaves no tag.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import requests

from builder import blobs
from builder.engine import Engine, one_line
from builder.errors import BuildFailed
from builder.normalize.archive import Archive, Span, own_reader
from builder.registry import HTTP_TIMEOUT, bearer_token, registry_url

PARALLEL_UPLOADS = 3


@dataclass(frozen=True)
class Image:
    config: bytes
    blobs: list[blobs.Blob]
    compression: blobs.Compression = blobs.GZIP

    @property
    def manifest(self) -> bytes:
        return blobs.manifest(self.config, self.blobs, self.compression)

    @property
    def digest(self) -> str:
        return blobs.digest_of(self.manifest)

    @property
    def image_id(self) -> str:
        return blobs.digest_of(self.config)


@contextlib.contextmanager
def _opened(layer: tuple[BinaryIO, int, int]) -> Iterator[BinaryIO]:
    """The layer's bytes through a file handle of its own (layers are read by several threads)."""
    f, offset, size = layer
    with own_reader(f) as own:
        own.seek(offset)
        yield Span(own, offset, size)  # type: ignore[misc]


def describe(c: Engine, image: str, *, pool: concurrent.futures.Executor | None = None,
             compression: blobs.Compression = blobs.GZIP) -> Image:
    """The config and blobs a push of ``image`` uploads: blobs compressed before on this machine
    come from the index, the others are compressed (and remembered) without being kept."""
    with c.layers(image) as (archive, _source):
        return _describe(archive, pool, compression)


def _describe(archive: Archive, pool: concurrent.futures.Executor | None, compression: blobs.Compression) -> Image:
    diff_ids = _diff_ids(archive.config)
    seen = blobs.known(compression)
    out = []
    for diff_id, layer in zip(diff_ids, archive.layers):
        blob = seen.get(diff_id)
        if blob is None:
            with _opened(layer) as reader:
                blob = blobs.compress(reader, pool=pool, compression=compression)
        out.append(_checked(blob, diff_id))
    blobs.remember(out, compression)
    return Image(config=archive.config, blobs=out, compression=compression)


def _checked(blob: blobs.Blob, diff_id: str) -> blobs.Blob:
    if blob.diff_id != diff_id:
        raise BuildFailed(f"layer {diff_id} read back as {blob.diff_id}: the engine's copy changed")
    return blob


def _diff_ids(config: bytes) -> list[str]:
    return list((json.loads(config).get("rootfs") or {}).get("diff_ids") or [])


# --- the registry's upload API ---------------------------------------------------------------


class Registry:
    """One repository of one registry, with the credentials a push needs (Basic, or a Bearer
    token for pull and push fetched once from the registry's token service)."""

    def __init__(self, host: str, repo: str, auth: tuple[str, str] | None = None, mount_from: str = "") -> None:
        self.base = f"{registry_url(host)}/v2/{repo}"
        self.mount_from = mount_from
        self.host = host
        self.http = requests.Session()
        for attempt in range(1, 6):  # a registry that is starting answers within seconds
            try:
                challenge = self.http.get(f"{registry_url(host)}/v2/", timeout=HTTP_TIMEOUT)
                break
            except requests.ConnectionError as exc:
                if attempt == 5:
                    raise BuildFailed(f"registry {host} does not answer ({exc.__class__.__name__}); nothing was "
                                      f"pushed: check the address and that the registry runs") from None
                time.sleep(2 * attempt)
        scheme = challenge.headers.get("WWW-Authenticate", "")
        if challenge.status_code == 401 and scheme.lower().startswith("bearer"):
            scopes = [f"repository:{repo}:pull,push"] + ([f"repository:{mount_from}:pull"] if mount_from else [])
            token = bearer_token(scheme, auth, scopes)
            if not token:
                raise BuildFailed(f"registry {host}: its token service gave no push token for {repo} "
                                  f"(check the credentials: `docker login` or --username)")
            self.http.headers["Authorization"] = f"Bearer {token}"
        elif challenge.status_code == 401:
            self.http.auth = auth
        elif challenge.status_code >= 400:
            raise BuildFailed(f"registry {host} answered HTTP {challenge.status_code} at /v2/")

    def _check(self, response: requests.Response, what: str, *expected: int) -> requests.Response:
        if response.status_code not in expected:
            hint = " (check the credentials: `docker login` or --username)" if response.status_code in (401, 403) else ""
            raise BuildFailed(f"{what}: HTTP {response.status_code}{hint}: {response.text[:300]}")
        return response

    def has_blob(self, digest: str) -> bool:
        return self.http.head(f"{self.base}/blobs/{digest}", timeout=HTTP_TIMEOUT).status_code == 200

    def mount_blob(self, digest: str) -> bool:
        """Link a blob of the repository named by mount_from into this one, without uploading it
        (a push of one image to several repositories of one registry); False where the registry
        did not (it may then have opened an upload, which is cancelled)."""
        if not self.mount_from:
            return False
        response = self.http.post(f"{self.base}/blobs/uploads/", params={"mount": digest, "from": self.mount_from},
                                  timeout=HTTP_TIMEOUT)
        if response.status_code == 202 and "Location" in response.headers:
            self.http.delete(self._location(response), timeout=HTTP_TIMEOUT)
        return response.status_code == 201

    def _location(self, response: requests.Response) -> str:
        location = response.headers["Location"]
        return location if location.startswith("http") else f"{registry_url(self.host)}{location}"

    def put_blob(self, chunks: Iterator[bytes], digest_after: Callable[[], str], what: str) -> None:
        """Upload a blob streamed in chunks (one chunked PATCH), then close it with its digest."""
        start = self._check(self.http.post(f"{self.base}/blobs/uploads/", timeout=HTTP_TIMEOUT),
                            f"start upload of {what}", 202)
        patched = self._check(self.http.patch(self._location(start), data=chunks,
                                              headers={"Content-Type": "application/octet-stream"},
                                              timeout=HTTP_TIMEOUT), f"upload {what}", 202, 204)
        digest = digest_after()
        location = self._location(patched)
        self._check(self.http.put(location, params={"digest": digest}, timeout=HTTP_TIMEOUT),
                    f"finish upload of {what}", 201)

    def put_manifest(self, reference: str, manifest: bytes, media_type: str) -> str:
        response = self._check(self.http.put(f"{self.base}/manifests/{reference}", data=manifest,
                                             headers={"Content-Type": media_type}, timeout=HTTP_TIMEOUT),
                               f"put manifest {reference}", 201)
        return response.headers.get("Docker-Content-Digest", "")


def _streamed(layer: tuple[BinaryIO, int, int], pool: concurrent.futures.Executor | None,
              result: list[blobs.Blob], compression: blobs.Compression) -> Iterator[bytes]:
    """The layer's blob as it is compressed (in a thread; the upload reads as it comes)."""
    members: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)

    def work() -> None:
        try:
            with _opened(layer) as reader:
                result.append(blobs.compress(reader, members.put, pool=pool, compression=compression))
            members.put(None)
        except BaseException as exc:  # handed to the reader, which raises it
            members.put(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while True:
        item = members.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


@dataclass
class Pushed:
    digest: str
    uploaded: int = 0  # blobs sent
    skipped: int = 0   # blobs the registry had (in this repository, or mounted from mount_from)
    bytes_sent: int = 0
    seconds: float = 0.0


def push(c: Engine, image: str, host: str, repo: str, tags: list[str], *,
         auth: tuple[str, str] | None = None, retries: int = 3, mount_from: str = "",
         pool: concurrent.futures.Executor | None = None, compression: blobs.Compression = blobs.GZIP,
         say: Callable[[str], None] = print) -> Pushed:
    """Upload ``image`` to HOST/REPO and put its tags; the manifest digest and what moved.
    mount_from: a repository of the same registry that holds the image's blobs already (an
    earlier push of it), mounted from there instead of uploaded again."""
    try:
        return _push(c, image, Registry(host, repo, auth, mount_from), tags, retries=retries, pool=pool,
                     compression=compression, say=say)
    except requests.RequestException as exc:
        raise BuildFailed(f"registry {host} went away during the push ({exc.__class__.__name__}); no tag was "
                          f"written unless its manifest was complete: run the push again") from None


def _push(c: Engine, image: str, reg: Registry, tags: list[str], *, retries: int,
          pool: concurrent.futures.Executor | None, compression: blobs.Compression,
          say: Callable[[str], None]) -> Pushed:
    started = time.monotonic()
    seen = blobs.known(compression)
    with c.layers(image) as (archive, _source):
        diff_ids = _diff_ids(archive.config)
        result: dict[int, blobs.Blob] = {}
        pushed = Pushed(digest="")
        lock = threading.Lock()

        def one(i: int) -> None:
            diff_id, layer = diff_ids[i], archive.layers[i]
            known = seen.get(diff_id)
            if known and (reg.has_blob(known.digest) or reg.mount_blob(known.digest)):
                with lock:
                    result[i], pushed.skipped = known, pushed.skipped + 1
                return
            for attempt in range(1, retries + 1):
                made: list[blobs.Blob] = []
                try:
                    reg.put_blob(_streamed(layer, pool, made, compression), lambda: made[0].digest,
                                 f"layer {diff_id[:19]}")
                    break
                except (requests.RequestException, BuildFailed) as exc:
                    if attempt == retries:
                        raise BuildFailed(f"upload of layer {diff_id[:19]} to {reg.host} failed {retries} times "
                                          f"({one_line(exc)}); no tag was written: run the push again (layers "
                                          f"already there are skipped)") from None
                    say(f"upload of layer {diff_id[:19]} failed ({exc}); again from its start")
                    time.sleep(2 * attempt)
            with lock:
                result[i] = _checked(made[0], diff_id)
                pushed.uploaded += 1
                pushed.bytes_sent += made[0].size
                blobs.remember([made[0]], compression)  # now: a push that fails later skips it next time
            say(f"uploaded layer {i + 1}/{len(diff_ids)} {made[0].digest[:19]} ({made[0].size / 1e6:.0f} MB)")

        # the biggest layers first, several at once: the push takes as long as the biggest one
        order = sorted(range(len(diff_ids)), key=lambda i: -archive.layers[i][2])
        with concurrent.futures.ThreadPoolExecutor(PARALLEL_UPLOADS) as uploads:
            for done in concurrent.futures.as_completed([uploads.submit(one, i) for i in order]):
                done.result()
        image_blobs = [result[i] for i in range(len(diff_ids))]
        built = Image(config=archive.config, blobs=image_blobs, compression=compression)
    if not (reg.has_blob(built.image_id) or reg.mount_blob(built.image_id)):
        reg.put_blob(iter([built.config]), lambda: built.image_id, "config")
    got = reg.put_manifest(built.digest, built.manifest, compression.manifest_type)
    if got and got != built.digest:
        raise BuildFailed(f"registry {reg.host} stored the manifest as {got}, expected {built.digest}")
    for tag in tags:  # last: a tag names a manifest that is there
        reg.put_manifest(tag, built.manifest, compression.manifest_type)
    pushed.digest = built.digest
    pushed.seconds = round(time.monotonic() - started, 1)
    return pushed
