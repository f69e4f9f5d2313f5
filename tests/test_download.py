"""ICT-FaceKit lookup and download, against a fake archive served from 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import os
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from mofa.errors import MofaError
from mofa.facemodel.download import (ENV_VAR, PINNED_CHECKSUM, PINNED_COMMIT, content_checksum, download_ict,
                                     is_ict_dir, resolve_ict_dir)

VERTS = "v 0.0 0.0 1.0\nv 1.0 0.0 0.0\nv 0.0 1.0 0.0\n"


def make_fake_ict(root: Path) -> Path:
    """A three-vertex ICT-FaceKit look-alike with the repository's layout."""
    mdir = root / "FaceXModel"
    mdir.mkdir(parents=True)
    (mdir / "generic_neutral_mesh.obj").write_text("# ICT\nmtllib m.mtl\n" + VERTS + "vt 0 0\nf 1/1 2/1 3/1\n")
    (mdir / "identity000.obj").write_text("# ICT\n" + VERTS.replace("1.0\n", "1.5\n", 1))
    (mdir / "browDown_L.obj").write_text(VERTS.replace("0.0 1.0 0.0", "0.0 1.1 0.0"))
    (mdir / "vertex_indices.json").write_text('{"expressions": ["browDown_L"]}')
    (root / "README.md").write_text("fake ICT-FaceKit\n")
    (root / "LICENSE").write_text("MIT\n")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves <root>/ict.zip (GitHub archive layout, plus a scripts/ folder that is not kept) at
    http://127.0.0.1:<port>/ict.zip; yields (base URL, checksum of the fake contents)."""
    root = tmp_path_factory.mktemp("served")
    fake = make_fake_ict(root / "src")
    (fake / "scripts").mkdir()
    (fake / "scripts" / "tool.py").write_text("print('not kept')\n")
    with zipfile.ZipFile(root / "ict.zip", "w") as zf:
        for path in sorted(fake.rglob("*")):
            if path.is_file():
                zf.write(path, f"ICT-FaceKit-{PINNED_COMMIT}/{path.relative_to(fake).as_posix()}")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", content_checksum(fake)
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ict.zip"  # nothing listens there: connection refused


def test_content_checksum_reads_only_vertex_lines_and_json(tmp_path):
    a = make_fake_ict(tmp_path / "a")
    reference = content_checksum(a)
    with open(a / "FaceXModel" / "identity000.obj", "a") as fh:  # topology lines do not count
        fh.write("vt 0 0\nf 1/1 2/1 3/1\nusemtl skin\n")
    assert content_checksum(a) == reference
    obj = a / "FaceXModel" / "browDown_L.obj"
    obj.write_text(obj.read_text().replace("1.1", "1.2"))
    assert content_checksum(a) != reference
    b = make_fake_ict(tmp_path / "b")
    (b / "FaceXModel" / "vertex_indices.json").write_text('{"expressions": []}')
    assert content_checksum(b) != reference


def test_download_verifies_and_renames_into_place(tmp_path, server):
    base, checksum = server
    dest = tmp_path / "cache" / "ict"
    assert download_ict(dest, url=f"{base}/ict.zip", checksum=checksum, timeout=10) == dest
    assert is_ict_dir(dest) and content_checksum(dest) == checksum
    assert (dest / "README.md").is_file() and not (dest / "scripts").exists()
    assert os.listdir(dest.parent) == ["ict"]  # no temporary files left
    assert download_ict(dest, url=closed_port_url(), checksum=checksum) == dest  # present: no download


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, server):
    base, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(MofaError, match=r"content checksum .* does not match"):
        download_ict(cache / "ict", url=f"{base}/ict.zip", checksum="0" * 64, timeout=10)
    assert os.listdir(cache) == []
    with pytest.raises(MofaError, match=r"HTTP 404"):
        download_ict(cache / "ict", url=f"{base}/missing.zip", checksum="0" * 64, timeout=10)
    assert os.listdir(cache) == []


def test_resolve_prefers_the_environment_variable(tmp_path, monkeypatch):
    env_copy, configured = make_fake_ict(tmp_path / "env"), make_fake_ict(tmp_path / "configured")
    monkeypatch.setenv(ENV_VAR, str(env_copy))
    assert resolve_ict_dir(str(configured), tmp_path / "cache", url=closed_port_url()) == env_copy
    monkeypatch.delenv(ENV_VAR)
    assert resolve_ict_dir(str(configured), tmp_path / "cache", url=closed_port_url()) == configured


def test_resolve_rejects_a_bad_environment_variable(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(MofaError, match=rf"{ENV_VAR}={missing}: no such folder"):
        resolve_ict_dir(None, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(MofaError, match=rf"{ENV_VAR}=.*empty: missing FaceXModel/generic_neutral_mesh.obj"):
        resolve_ict_dir(None, tmp_path / "cache")


def test_resolve_uses_the_cache_then_downloads(tmp_path, monkeypatch, server):
    base, checksum = server
    monkeypatch.delenv(ENV_VAR, raising=False)
    cache = tmp_path / "cache"
    got = resolve_ict_dir(str(tmp_path / "not-there"), cache, url=f"{base}/ict.zip", checksum=checksum, timeout=10)
    assert got == cache / f"ICT-FaceKit-{PINNED_COMMIT}" and is_ict_dir(got)
    assert resolve_ict_dir(None, cache, url=closed_port_url()) == got  # cached: no network needed


def test_resolve_without_network_says_set_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(MofaError) as info:
        resolve_ict_dir(None, tmp_path / "cache", url=closed_port_url(), timeout=5)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"ICT-FaceKit not found: set {ENV_VAR} to a copy of https://github.com/ICT-VGL/ICT-FaceKit "
                              "(no local copy and no internet: ")
    assert not any((tmp_path / "cache").iterdir())


def test_pinned_checksum_matches_the_local_copy():
    folder = os.environ.get(ENV_VAR)
    assert folder, (f"set {ENV_VAR} to the ICT-FaceKit copy (here: ../shared/ict-facekit) to check "
                    "the pinned content checksum")
    assert content_checksum(folder) == PINNED_CHECKSUM, (
        f"{folder}: content checksum differs from PINNED_CHECKSUM in mofa/facemodel/download.py")


def test_resolve_with_a_failed_download_says_set_the_variable(tmp_path, monkeypatch, server):
    base, _ = server
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(MofaError, match=rf"^ICT-FaceKit not found: set {ENV_VAR} .*the download failed: .*checksum"):
        resolve_ict_dir(None, tmp_path / "cache", url=f"{base}/ict.zip", checksum="0" * 64, timeout=10)
    assert not any((tmp_path / "cache").iterdir())
