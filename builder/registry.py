"""Push an image to a registry, pull it back by digest, and ask the registry what it holds.

The engine does the transfer (it already has the layers and the credential plumbing); this module
names the remote references, shows progress a person can follow on a multi-GB push, retries what
is worth retrying, and checks the result through the registry's HTTP API rather than trusting
the push stream. A registry writes a tag only when the manifest is uploaded, and it refuses a
manifest whose blobs it lacks, so an interrupted push leaves no tag; `remote_problems` checks that.

Credentials: an explicit auth_config ({"username": ..., "password": ...}) comes from the command
line's --username and a password read from stdin; otherwise release.push resolves them as the
Docker CLI does (builder.engine.credentials: the Docker config and its credential helpers) and
passes them to the engine and to every registry API request alike. Neither is printed or logged.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TextIO

import requests

from builder import engine
from builder.engine import Engine
from builder.errors import BuildFailed, UserError

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
HTTP_TIMEOUT = 30

# What the engine or the registry says when the failure is worth another try: the network or
# the registry hiccupped. Anything else (denied, unknown name, bad manifest) fails at once.
TRANSIENT = re.compile(
    r"connection refused|connection reset|broken pipe|unexpected EOF|\bEOF\b|i/o timeout"
    r"|timeout exceeded|TLS handshake timeout|server misbehaving|no route to host"
    r"|network is unreachable|too many requests|\b(500|502|503|504)\b"
    r"|internal server error|bad gateway|service unavailable|gateway timeout",
    re.IGNORECASE)
HOST = re.compile(r"^(localhost|\[[0-9a-fA-F:]+\]|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)(:\d{1,5})?$")
PATH_COMPONENT = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")


def is_transient(message: str) -> bool:
    """Whether a push/pull error message describes a failure that a later try may not meet."""
    return bool(TRANSIENT.search(message))


def parse_registry(text: str) -> tuple[str, str]:
    """`HOST[:PORT]/NAMESPACE` → (host[:port], namespace); the namespace may be empty or nested.

    The host must look like one (a dot, a port, or localhost), as the engine requires: a bare
    `team/project` would silently mean Docker Hub.
    """
    host, _, namespace = text.strip().strip("/").partition("/")
    bare = host.split(":")[0]
    if not HOST.match(host) or not ("." in bare or ":" in host or bare == "localhost" or bare.startswith("[")):
        raise UserError(f"--registry {text!r}: expected HOST[:PORT]/NAMESPACE with a host name that has a dot "
                        f"or a port (e.g. registry.example.com/ml or 127.0.0.1:5000/team)")
    for part in filter(None, namespace.split("/")):
        if not PATH_COMPONENT.match(part):
            raise UserError(f"--registry {text!r}: namespace part {part!r} must be lowercase letters, digits "
                            f"and single separators (. _ -)")
    return host, namespace.strip("/")


def remote_ref(ref: str, registry: str, namespace: str) -> str:
    """`pytorch-cuda:TAG` → `HOST[:PORT]/NAMESPACE/pytorch-cuda:TAG` (the local repository's last part)."""
    repo, tag = split_ref(ref)
    name = repo.rsplit("/", 1)[-1]
    return f"{registry}/{namespace}/{name}:{tag}" if namespace else f"{registry}/{name}:{tag}"


def split_ref(ref: str) -> tuple[str, str]:
    """`repo:tag` or `repo@sha256:…` → (repo, tag-or-digest); a port in the host is not a tag."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        raise UserError(f"{ref!r} has no tag")
    return repo, tag


def registry_url(registry: str) -> str:
    """Loopback registries speak plain HTTP (the engine treats 127.0.0.0/8 as insecure); others HTTPS."""
    host = registry.split("/")[0]
    bare = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    plain = bare in ("localhost", "[::1]") or bare.startswith("127.")
    return f"{'http' if plain else 'https'}://{host}"


# --- progress -------------------------------------------------------------------------------


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass
class Progress:
    """Per-layer progress from the engine's push stream, as lines a CI log can hold.

    The engine sends an update every few hundred KB; this prints a layer's line when its state
    changes, at every 10 % step, or every `interval` seconds, so a 6 GB layer gives ~10 lines.
    """

    out: TextIO
    quiet: bool
    interval: float = 10.0
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self, event: dict[str, Any]) -> None:
        status, layer = event.get("status", ""), event.get("id")
        if not layer:
            if status and not status.startswith(("Preparing", "Waiting")):
                self.say(status)
            return
        state = self.layers.setdefault(layer, {"status": None, "step": -1, "shown": 0.0,
                                               "current": 0, "total": 0})
        detail = event.get("progressDetail") or {}
        if status == "Pushing" and detail.get("total"):
            state["current"], state["total"] = detail.get("current", 0), detail["total"]
            step = int(10 * state["current"] / state["total"])
            now = time.monotonic()
            if step != state["step"] or now - state["shown"] >= self.interval:
                state["step"], state["shown"] = step, now
                pct = min(100, 100 * state["current"] // state["total"])
                self.say(f"  {layer}: pushing {human(min(state['current'], state['total']))} / {human(state['total'])} ({pct}%)")
        elif status.startswith("Retrying in"):
            # The engine retries a failed layer upload itself and counts down every second;
            # show the first line of each wait.
            wait = int(re.sub(r"\D", "", status) or 0)
            if wait > state.get("wait", 0):
                self.say(f"  {layer}: upload failed, the engine retries it in {wait} s")
            state["wait"] = wait
        elif status != state["status"] and status not in ("Preparing", "Waiting", "Pushing"):
            self.say(f"  {layer}: {status}")
        state["status"] = status

    def summary(self) -> str:
        pushed = sum(1 for s in self.layers.values() if s["status"] == "Pushed")
        there = sum(1 for s in self.layers.values() if (s["status"] or "").startswith(("Layer already exists", "Mounted")))
        size = sum(s["total"] for s in self.layers.values() if s["status"] == "Pushed")
        return f"{pushed} layer(s) uploaded ({human(size)}), {there} already in the registry"

    def say(self, line: str) -> None:
        if not self.quiet:
            self.out.write(line.rstrip("\n") + "\n")
            self.out.flush()


# --- push and pull --------------------------------------------------------------------------


class TransferError(Exception):
    """One failed try of a push or pull, with whether another try may succeed."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


DIGEST_LINE = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def _consume(stream: Iterator[dict[str, Any]], on_event: Callable[[dict[str, Any]], None]) -> str | None:
    """Read an engine stream to its end; return the manifest digest it reports, raise on its error."""
    digest = None
    for event in stream:
        on_event(event)
        if "error" in event or "errorDetail" in event:
            message = (event.get("errorDetail") or {}).get("message") or event.get("error") or "unknown error"
            raise TransferError(message.strip(), is_transient(message))
        aux = event.get("aux") or {}
        if aux.get("Digest"):
            digest = aux["Digest"]
        found = DIGEST_LINE.search(event.get("status", ""))
        if found:
            digest = digest or found.group(1)
    return digest


def _attempt(what: str, action: Callable[[], str | None], *, retries: int, backoff: float,
             err: TextIO, giving_up: str = "") -> str | None:
    """Run one transfer up to `retries` times, waiting backoff, 2×backoff, … between transient failures."""
    for attempt in range(1, retries + 1):
        try:
            return action()
        except engine.APIError as exc:
            message = str(exc.explanation or exc)
            failure = TransferError(message, is_transient(message) or (exc.status_code or 0) >= 500)
        except requests.exceptions.ConnectionError as exc:  # the engine itself went away
            raise BuildFailed(f"{what}: lost the connection to the Docker engine ({exc})") from None
        except TransferError as exc:
            failure = exc
        if not failure.transient:
            raise BuildFailed(f"{what} failed: {failure}{hint(str(failure))}")
        if attempt == retries:
            raise BuildFailed(f"{what} failed after {retries} attempt(s): {failure}{giving_up}")
        delay = backoff * 2 ** (attempt - 1)
        err.write(f"{what}: attempt {attempt}/{retries} failed ({failure}); retrying in {delay:g} s\n")
        err.flush()
        time.sleep(delay)
    return None  # not reached: retries >= 1


def hint(message: str) -> str:
    low = message.lower()
    if any(w in low for w in ("unauthorized", "authentication required", "denied", "no basic auth")):
        return (" (log in with `docker login HOST`, configure a credential helper, or pass --username "
                "with the password on stdin)")
    if "does not exist locally" in low or "no such image" in low:
        return " (build the image first)"
    return ""


def push(c: Engine, image_id: str, refs: Iterable[str], registry: str, namespace: str, *,
         quiet: bool = False, auth_config: dict[str, str] | None = None, retries: int = 5,
         backoff: float = 2.0, out: TextIO | None = None, err: TextIO | None = None,
         on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, str]:
    """Push `image_id` under every tag of `refs` to REGISTRY/NAMESPACE; return remote ref → manifest digest.

    The registry-prefixed local tags exist only for the push and are removed afterwards, even on
    failure. on_event sees every raw stream event (tests use it to stop the registry mid-push).
    """
    if retries < 1:
        raise UserError("retries must be at least 1")
    out, err = out or sys.stdout, err or sys.stderr
    try:
        image_id = c.image_id(image_id)
    except engine.ImageNotFound:
        raise UserError(f"no image {image_id} in the engine: build it first") from None
    targets = [remote_ref(ref, registry, namespace) for ref in refs]
    if not targets:
        raise UserError(f"image {image_id} has no tags to push")
    previous = {t: _image_of(c, t) for t in targets}  # a remote-named local tag that was there before
    made = [t for t in targets if previous[t] != image_id]
    digests: dict[str, str] = {}
    try:
        c.tag(image_id, made)
        for target in targets:
            repo, tag = split_ref(target)
            progress = Progress(out, quiet)

            def one_try(repo: str = repo, tag: str = tag, progress: Progress = progress) -> str | None:
                def seen(event: dict[str, Any]) -> None:
                    progress.update(event)
                    if on_event:
                        on_event(event)
                stream = c.push(repo, tag, auth_config=auth_config)
                return _consume(stream, seen)

            digest = _attempt(f"push {target}", one_try, retries=retries, backoff=backoff, err=err,
                              giving_up=". The registry writes a tag only once every layer is uploaded, so no tag "
                                        "points to a partial image; run it again when the registry answers "
                                        "(layers already uploaded are skipped)")
            if not digest:
                raise BuildFailed(f"push {target}: the engine reported success but no manifest digest")
            digests[target] = digest
            progress.say(f"pushed {target}@{digest}: {progress.summary()}")
    finally:
        c.untag(made)
        for target in made:
            if previous[target]:
                c.tag(previous[target], [target])
    return digests


def _image_of(c: Engine, ref: str) -> str | None:
    try:
        return c.image_id(ref)
    except engine.ImageNotFound:
        return None


def pull_back(c: Engine, ref_with_digest: str, *, expected_image_id: str | None = None,
              auth_config: dict[str, str] | None = None, retries: int = 5, backoff: float = 2.0,
              err: TextIO | None = None) -> str:
    """Pull `HOST/NS/NAME@sha256:…` and return the image ID the engine has for it.

    With expected_image_id, a different ID is a BuildFailed: the registry does not hold the
    image that was verified. The image ID is the config digest, which a schema2 push keeps, so
    it survives the round trip. If the engine still has the image, the engine skips the layer
    downloads and this proves only the config; remove the local copy first (or pull on a second
    engine) to prove the layers come back too.
    """
    repo, digest = split_ref(ref_with_digest)
    if not digest.startswith("sha256:"):
        raise UserError(f"{ref_with_digest}: pull back by digest (REPO@sha256:…), not by tag")

    def one_try() -> str | None:
        _consume(c.pull_stream(repo, digest, auth_config=auth_config), lambda e: None)
        return c.image_id(ref_with_digest)

    pulled = _attempt(f"pull {ref_with_digest}", one_try, retries=retries, backoff=backoff, err=err or sys.stderr,
                      giving_up="; check that the registry answers and holds this digest")
    if expected_image_id and pulled != _full_id(expected_image_id):
        raise BuildFailed(f"pulled {ref_with_digest}: image ID {pulled}, but the build record says "
                          f"{_full_id(expected_image_id)}; the registry does not hold the verified image")
    return pulled or ""


def _full_id(image_id: str) -> str:
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


# --- the registry's HTTP API ----------------------------------------------------------------


def bearer_token(challenge: str, auth: tuple[str, str] | None, scope: str | list[str] | None = None) -> str | None:
    """A token from the registry's token service for its Bearer challenge (realm, service, scope;
    ``scope`` asks for others, e.g. push, or pull from a repository to mount from), or None when
    there is no realm or the service refuses."""
    params: dict[str, str | list[str]] = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", None)
    if not realm:
        return None
    if scope:
        params["scope"] = scope
    response = requests.get(realm, params=params, auth=auth, timeout=HTTP_TIMEOUT)
    if response.status_code != 200:
        return None
    body = response.json()
    return body.get("token") or body.get("access_token")


def _request(method: str, url: str, *, headers: dict[str, str] | None = None,
             auth: tuple[str, str] | None = None) -> requests.Response:
    """One registry API request; follows a Bearer token challenge (Docker Hub, GHCR, Harbor …)."""
    response = requests.request(method, url, headers=headers, timeout=HTTP_TIMEOUT)
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code != 401 or not challenge:
        return response
    if challenge.lower().startswith("basic"):
        return requests.request(method, url, headers=headers, auth=auth, timeout=HTTP_TIMEOUT)
    token = bearer_token(challenge, auth)
    if not token:
        return response
    return requests.request(method, url, headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                            timeout=HTTP_TIMEOUT)


def fetch_manifest(registry: str, repo: str, reference: str, *,
                   auth: tuple[str, str] | None = None) -> tuple[dict[str, Any], str] | None:
    """The manifest at a tag or digest and its digest, or None when the registry has no such manifest."""
    url = f"{registry_url(registry)}/v2/{repo}/manifests/{reference}"
    try:
        response = _request("GET", url, headers={"Accept": ", ".join(MANIFEST_TYPES)}, auth=auth)
    except requests.RequestException as exc:
        raise BuildFailed(f"registry {registry} does not answer ({exc.__class__.__name__}: {exc})") from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise BuildFailed(f"GET {url}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json(), response.headers.get("Docker-Content-Digest", "")


def registry_has_tag(registry: str, repo: str, tag: str, *, auth: tuple[str, str] | None = None) -> bool:
    """Whether the registry serves a manifest at REPO:TAG (repo without the host, e.g. `team/pytorch-cuda`)."""
    return fetch_manifest(registry, repo, tag, auth=auth) is not None


def remote_problems(registry: str, repo: str, reference: str, *, expected_image_id: str | None = None,
                    auth: tuple[str, str] | None = None) -> list[str]:
    """What is wrong with REPO:REFERENCE in the registry (empty when the manifest, its config and
    every layer blob are there, and the config digest is the expected image ID)."""
    found = fetch_manifest(registry, repo, reference, auth=auth)
    if found is None:
        return [f"{registry}/{repo}:{reference}: no such manifest"]
    manifest, _ = found
    if "manifests" in manifest:
        return [f"{registry}/{repo}:{reference}: is a manifest list, expected one image"]
    problems = []
    config = manifest.get("config", {}).get("digest", "")
    if expected_image_id and config != _full_id(expected_image_id):
        problems.append(f"config digest {config} is not the image ID {_full_id(expected_image_id)}")
    for blob in [config, *(layer["digest"] for layer in manifest.get("layers", []))]:
        url = f"{registry_url(registry)}/v2/{repo}/blobs/{blob}"
        status = _request("HEAD", url, auth=auth).status_code
        if status != 200:
            problems.append(f"blob {blob}: HTTP {status}")
    return problems
