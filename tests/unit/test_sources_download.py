"""Tarball sources against a real local HTTP server: streaming, resume after a dropped
connection (Range), retry after a 500, checksum mismatch, caching, dry run."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from provision.build import download as dl
from provision.build.sources import SourceSpec, fetch
from provision.errors import ProvisionError


def xen_tarball() -> bytes:
    """A small but real xen-4.19.1.tar.gz: a Xen tree with 640 KB of incompressible data so
    the transfer spans many chunks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes, mode=0o644):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1700000000
            tar.addfile(info, io.BytesIO(data))

        add("xen-4.19.1/xen/Makefile", b"export XEN_VERSION = 4\nexport XEN_SUBVERSION = 19\n"
            b"export XEN_EXTRAVERSION ?= .1$(XEN_VENDORVERSION)\n")
        add("xen-4.19.1/README", b"Xen\n")
        add("xen-4.19.1/tools/blob", b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(20000)))
    return buf.getvalue()


class Server:
    """Serves ``files``; ``plan`` lists per-request behaviours: "ok", "drop" (send half the
    body with the full Content-Length, then close), "500", "norange" (ignore Range)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.plan: list[str] = []
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                behaviour = outer.plan.pop(0) if outer.plan else "ok"
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                if behaviour == "500":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and behaviour != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if behaviour == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tarball():
    data = xen_tarball()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tarball):
    with Server({"/rel/xen-4.19.1.tar.gz": tarball[0]}) as s:
        yield s


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch, tmp_path):
    monkeypatch.setattr(dl, "BACKOFF", 0.01)
    monkeypatch.setattr(dl, "CHUNK", 4096)
    monkeypatch.setenv("XEN_PROVISION_CACHE", str(tmp_path / "cache"))


def test_download_streams_and_verifies(server, tarball, tmp_path):
    data, sha = tarball
    path = dl.download(server.url("/rel/xen-4.19.1.tar.gz"), sha, tmp_path / "dl")
    assert path == tmp_path / "dl" / "xen-4.19.1.tar.gz"
    assert path.read_bytes() == data
    assert list((tmp_path / "dl" / ".partial").iterdir()) == []
    # A verified file is not fetched again.
    dl.download(server.url("/rel/xen-4.19.1.tar.gz"), sha, tmp_path / "dl")
    assert len(server.requests) == 1


def test_dropped_connection_resumes_with_range(server, tarball, tmp_path):
    data, sha = tarball
    server.plan = ["drop", "drop", "ok"]
    path = dl.download(server.url("/rel/xen-4.19.1.tar.gz"), sha, tmp_path / "dl")
    assert path.read_bytes() == data
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None
    # each retry asks only for the bytes still missing
    first = int(ranges[1].split("=")[1].rstrip("-"))
    second = int(ranges[2].split("=")[1].rstrip("-"))
    assert 0 < first < second < len(data)


def test_interrupted_partial_is_resumed_by_the_next_run(server, tarball, tmp_path):
    data, sha = tarball
    # A previous run died after 1000 bytes (as after Ctrl-C): the .part is kept, never visible.
    partial = tmp_path / "dl" / ".partial"
    partial.mkdir(parents=True)
    (partial / f"{sha}.part").write_bytes(data[:1000])
    assert not (tmp_path / "dl" / "xen-4.19.1.tar.gz").exists()
    dl.download(server.url("/rel/xen-4.19.1.tar.gz"), sha, tmp_path / "dl")
    assert server.requests == [("/rel/xen-4.19.1.tar.gz", "bytes=1000-")]
    assert (tmp_path / "dl" / "xen-4.19.1.tar.gz").read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server, tarball, tmp_path):
    data, sha = tarball
    server.plan = ["drop", "norange"]
    path = dl.download(server.url("/rel/xen-4.19.1.tar.gz"), sha, tmp_path / "dl")
    assert path.read_bytes() == data


def test_500_is_retried_with_backoff(server, tarball, tmp_path, capfd):
    data, sha = tarball
    server.plan = ["500", "500"]
    path = dl.download(server.url("/rel/xen-4.19.1.tar.gz"), sha, tmp_path / "dl")
    assert path.read_bytes() == data
    assert len(server.requests) == 3
    assert "HTTP 500" in capfd.readouterr().err


def test_persistent_500_gives_up_with_one_line(server, tarball, tmp_path):
    server.plan = ["500"] * 10
    with pytest.raises(ProvisionError) as e:
        dl.download(server.url("/rel/xen-4.19.1.tar.gz"), tarball[1], tmp_path / "dl", attempts=3)
    assert "failed after 3 attempts: HTTP 500" in str(e.value)
    assert len(server.requests) == 3
    assert not (tmp_path / "dl" / "xen-4.19.1.tar.gz").exists()


def test_404_is_not_retried(server, tarball, tmp_path):
    with pytest.raises(ProvisionError, match="HTTP 404"):
        dl.download(server.url("/rel/missing.tar.gz"), tarball[1], tmp_path / "dl")
    assert len(server.requests) == 1


def test_checksum_mismatch_deletes_partial_and_says_which(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ProvisionError) as e:
        dl.download(server.url("/rel/xen-4.19.1.tar.gz"), wrong, tmp_path / "dl")
    msg = str(e.value)
    assert "checksum mismatch for xen-4.19.1.tar.gz" in msg and wrong in msg
    assert list((tmp_path / "dl" / ".partial").iterdir()) == []
    assert not (tmp_path / "dl" / "xen-4.19.1.tar.gz").exists()


def test_fetch_tarball_unpacks_once_and_caches(server, tarball, tmp_path):
    data, sha = tarball
    spec = SourceSpec.from_dict({"kind": "tarball", "url": server.url("/rel/xen-4.19.1.tar.gz"),
                                 "sha256": sha, "package": "xen"}, "test")
    src = fetch(spec)
    assert src.version == "4.19.1"
    assert src.identity == sha
    assert src.tree.name == "xen-4.19.1" and (src.tree / "xen" / "Makefile").is_file()
    assert (tmp_path / "cache" / "downloads" / sha / "xen-4.19.1.tar.gz").read_bytes() == data
    again = fetch(spec)
    assert again == src
    assert len(server.requests) == 1


def test_fetch_tarball_of_the_wrong_kind(server, tarball):
    spec = SourceSpec("tarball", package="linux", url=server.url("/rel/xen-4.19.1.tar.gz"), sha256=tarball[1])
    with pytest.raises(ProvisionError, match="is a xen tree, not linux"):
        fetch(spec)


def test_fetch_tarball_mismatch_leaves_nothing_in_the_cache(server, tmp_path):
    spec = SourceSpec("tarball", url=server.url("/rel/xen-4.19.1.tar.gz"), sha256="ab" * 32)
    with pytest.raises(ProvisionError, match="checksum mismatch for xen-4.19.1.tar.gz"):
        fetch(spec)
    cache = tmp_path / "cache"
    leftovers = [p for p in cache.rglob("*") if p.is_file() and "locks" not in p.parts]
    assert leftovers == []
    assert list((cache / "sources").iterdir()) == []


def test_dry_run_changes_nothing(server, tarball, tmp_path, capfd):
    spec = SourceSpec("tarball", url=server.url("/rel/xen-4.19.1.tar.gz"), sha256=tarball[1])
    src = fetch(spec, dry_run=True)
    assert not (tmp_path / "cache").exists()
    assert server.requests == []
    assert "would download and verify xen-4.19.1.tar.gz" in capfd.readouterr().err
    assert src.identity == tarball[1]


def test_file_url(tarball, tmp_path):
    data, sha = tarball
    local = tmp_path / "mirror" / "xen-4.19.1.tar.gz"
    local.parent.mkdir()
    local.write_bytes(data)
    src = fetch(SourceSpec("tarball", url=local.as_uri(), sha256=sha))
    assert src.version == "4.19.1"
    assert Path(src.tree, "tools", "blob").stat().st_size == 640000
