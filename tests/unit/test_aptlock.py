"""The apt lock: its file format, what a build checks against it, and fetching pinned .debs."""
from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from datetime import datetime, timezone

import pytest

from builder import aptlock, debserver, manifest, pipeline
from builder.aptlock import Lock, Pin
from builder.errors import BuildFailed, UserError

SHA = "ab" * 32


@pytest.fixture
def the_manifest(tmp_path):
    """The real manifest, moved so that its locks/ directory is a temporary one."""
    m = manifest.load()
    return manifest.Manifest(path=tmp_path / "images.yaml", data=m.data)


def pin(name: str, version: str) -> Pin:
    return Pin(name, version, SHA, f"pool/main/x/{name}/{name}_{version.split(':')[-1]}_amd64.deb")


def write_lock(m, sections, resolved=datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)) -> Lock:
    lock = Lock(aptlock.lock_path(m), {s: {p.name: p for p in pins} for s, pins in sections.items()}, resolved)
    aptlock.write(lock, m)
    return lock


OS = [pin("apt", "2.8.4ubuntu0.1"), pin("libc6", "2.39-0ubuntu8.12"), pin("tini", "0.19.0-1")]
SSH = [pin("openssh-server", "1:9.6p1-3ubuntu13.20"), pin("libwrap0", "7.6.q-33")]


def test_the_lock_round_trips_with_hashes_pool_paths_and_its_date(the_manifest):
    written = write_lock(the_manifest, {"os": OS, "ssh": SSH})
    text = written.path.read_text()
    assert "# resolved: 2026-12-01T08:00:00Z" in text and text.index("[os]") < text.index("[ssh]")
    assert f"openssh-server=1:9.6p1-3ubuntu13.20 sha256:{SHA} pool/main/x/openssh-server/" in text
    read = aptlock.read(written.path)
    assert read.sections == written.sections and read.resolved == written.resolved
    assert read.age_days(datetime(2026, 12, 15, 8, 0, tzinfo=timezone.utc)) == 14
    assert OS[0].deb == "apt_2.8.4ubuntu0.1_amd64.deb"


def test_a_build_expects_the_base_then_each_flavors_additions(the_manifest):
    lock = write_lock(the_manifest, {"os": OS, "ssh": SSH})
    assert aptlock.apt_flavors(the_manifest.variant("runtime")) == []
    assert aptlock.apt_flavors(the_manifest.variant("workstation")) == ["workstation", "ssh"]
    assert aptlock.expected(lock, the_manifest.variant("runtime")) == lock.versions("os")
    assert aptlock.expected(lock, the_manifest.variant("ssh"))["openssh-server"] == "1:9.6p1-3ubuntu13.20"


def test_an_image_whose_packages_differ_is_left_untagged_with_what_moved(the_manifest, monkeypatch):
    write_lock(the_manifest, {"os": OS, "ssh": SSH})
    image = {**{p.name: p.version for p in OS + SSH}, "libc6": "2.39-0ubuntu8", "curl": "8.5.0-2ubuntu10"}
    monkeypatch.setattr(aptlock, "installed", lambda c, ref: image)
    with pytest.raises(BuildFailed) as failure:
        aptlock.check(None, the_manifest.variant("ssh"), "sha256:img")
    message = str(failure.value)
    assert "libc6: 2.39-0ubuntu8.12 -> 2.39-0ubuntu8" in message and "curl: new (8.5.0-2ubuntu10)" in message
    assert "left untagged" in message and "lock --apt" in message
    monkeypatch.setattr(aptlock, "installed", lambda c, ref: {p.name: p.version for p in OS + SSH})
    aptlock.check(None, the_manifest.variant("ssh"), "sha256:img")  # exactly the lock: passes


def test_a_lock_without_hashes_or_a_section_is_refused_before_anything_is_built(the_manifest):
    path = aptlock.lock_path(the_manifest)
    path.parent.mkdir(parents=True)
    path.write_text("[os]\napt=2.7.14build2\n")  # the form from before hashes
    lock = aptlock.read(path)
    with pytest.raises(UserError, match=r"\[os\]: apt have no sha256; run `python build.py lock --apt`"):
        aptlock.pins(lock, "os")
    with pytest.raises(UserError, match=r"has no \[ssh\] section; run `python build.py lock --apt`"):
        aptlock.pins(lock, "ssh")


@pytest.mark.parametrize("line, why", [
    ("nonsense", "expected name=version"),
    ("apt=1 sha256:abc pool/a.deb", "expected name=version sha256:<64 hex>"),
    ("apt=1 md5:" + "a" * 64 + " pool/a.deb", "expected name=version sha256:<64 hex>"),
])
def test_a_garbled_lock_names_file_line_and_the_fix(the_manifest, line, why):
    path = aptlock.lock_path(the_manifest)
    path.parent.mkdir(parents=True)
    path.write_text(f"[os]\napt=1 sha256:{SHA} pool/a.deb\n{line}\n")
    with pytest.raises(UserError, match=rf"apt-ubuntu24.04.txt:3: {why}.*lock --apt"):
        aptlock.read(path)


# --- fetching .debs: a real HTTP server on localhost plays the archive ---------------------------

@pytest.fixture
def archive(tmp_path):
    """A directory served over HTTP: files put under it are what the 'archive' serves."""
    root = tmp_path / "archive"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def served(root, name: str, data: bytes) -> Pin:
    path = root / "pool" / f"{name}.deb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Pin(name, "1.0", hashlib.sha256(data).hexdigest(), f"pool/{name}.deb")


def test_a_pinned_deb_is_fetched_once_checked_and_then_served_from_the_cache(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, url = archive
    p = served(root, "hello", b"the bytes of hello 1.0")
    path = aptlock.fetch_deb(p, url)
    assert path.read_bytes() == b"the bytes of hello 1.0" and path.parent == tmp_path / "cache" / "pytorch-cuda" / "debs"
    (root / p.filename).unlink()  # the pocket dropped the version: the cache still has it
    assert aptlock.fetch_deb(p, url) == path


def test_a_deb_whose_bytes_differ_from_the_lock_is_refused_and_not_cached(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, url = archive
    p = served(root, "hello", b"the real bytes")
    (root / p.filename).write_bytes(b"other bytes, same name")
    with pytest.raises(BuildFailed, match=f"has sha256 .* the lock says {p.sha256} for hello=1.0"):
        aptlock.fetch_deb(p, url)
    assert not aptlock.cached_deb(p.sha256).exists()


def test_a_dropped_uncached_deb_names_the_package_and_the_command(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, url = archive
    gone = Pin("openssh-server", "1:9.6p1-3ubuntu13.3", SHA, "pool/main/o/openssh/openssh-server_9.6p1-3ubuntu13.3_amd64.deb")
    with pytest.raises(UserError, match=r"no longer serves openssh-server=1:9.6p1-3ubuntu13.3 .*HTTP 404.*"
                                        r"does not hold it; run `python build.py lock --apt`"):
        aptlock.fetch_deb(gone, url)


def test_a_flavor_build_stops_before_building_when_a_pinned_deb_is_nowhere(archive, tmp_path, monkeypatch):
    """The ssh step's .debs are fetched into the cache before anything is built: one the archive
    no longer serves (and the cache lacks) is named, with the command, and nothing is built."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, url = archive
    m = manifest.load()
    data = {**m.data, "os": {**m.os, "bootstrap": {**m.os["bootstrap"], "mirror": url}}}
    moved = manifest.Manifest(path=tmp_path / "images.yaml", data=data)
    served_pin = served(root, "libwrap0", b"libwrap0 bytes")
    gone = Pin("openssh-server", "1:9.6p1-3ubuntu13.3", SHA, "pool/main/o/openssh/openssh-server_9.6p1-3ubuntu13.3_amd64.deb")
    write_lock(moved, {"os": OS, "ssh": [served_pin, gone]})
    with pytest.raises(UserError, match=r"no longer serves openssh-server=1:9.6p1-3ubuntu13.3"):
        pipeline.flavor_debs(moved.variant("ssh"))
    assert pipeline.flavor_debs(moved.variant("runtime")) == []
    tmux = served(root, "tmux", b"tmux bytes")
    write_lock(moved, {"os": OS, "ssh": [served_pin], "workstation": [tmux, served_pin]})
    assert [(p.name, path.read_bytes()) for p, path in pipeline.flavor_debs(moved.variant("workstation"))] == [
        ("libwrap0", b"libwrap0 bytes"), ("tmux", b"tmux bytes")]


def test_the_debs_reach_the_server_container_as_one_readable_directory(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, url = archive
    p = served(root, "hello", b"hello bytes")
    with tarfile.open(fileobj=io.BytesIO(debserver.debs_tar([(p, aptlock.fetch_deb(p, url))]))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["srv/pytorch-cuda-debs"].isdir() and members["srv/pytorch-cuda-debs"].mode == 0o755
        deb = members["srv/pytorch-cuda-debs/hello.deb"]
        assert deb.mode == 0o644 and tar.extractfile(deb).read() == b"hello bytes"
    assert debserver.url() == "http://debs.pytorch-cuda.internal:8000"


def test_an_unreachable_archive_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="cannot fetch apt=1 from http://127.0.0.1:9/pool/a.deb"):
        aptlock.fetch_deb(Pin("apt", "1", SHA, "pool/a.deb"), "http://127.0.0.1:9", timeout=5)


def test_a_snapshot_replaces_the_mirror():
    m = manifest.load()
    assert "snapshot" not in m.os["bootstrap"] and aptlock.mirror(m) == m.os["bootstrap"]["mirror"]
    data = {**m.data, "os": {**m.os, "bootstrap": {**m.os["bootstrap"], "snapshot": "20261128T000000Z"}}}
    snap = manifest.Manifest(path=m.path, data=data)
    assert aptlock.mirror(snap) == "http://snapshot.ubuntu.com/ubuntu/20261128T000000Z"
    assert snap.base_ref != m.base_ref


def test_the_committed_lock_pins_every_package_with_a_hash():
    m = manifest.load()
    lock = aptlock.read(aptlock.lock_path(m))
    assert lock.resolved is not None
    assert set(lock.sections) == {"os", *(f for f, s in m.data["flavors"].items() if s.get("apt_packages"))}
    for section in lock.sections:
        assert aptlock.pins(lock, section)  # every pin has a sha256
    assert lock.sections["ssh"]["openssh-server"].filename.startswith("pool/main/o/openssh/")
