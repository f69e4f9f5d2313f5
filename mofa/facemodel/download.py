"""Finding ICT-FaceKit: a local copy (`MOFA_ICT_DIR`, the config), a cached download, or a fresh
download of the pinned commit, verified by a checksum over its contents.

GitHub regenerates archive zips on the fly, so their bytes (and so a plain file hash) can change
over time. The checksum is taken over what the loader reads instead: for each `FaceXModel/*.obj`
in sorted name order its file name and its `v ` lines, then the bytes of `vertex_indices.json`.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from mofa.errors import MofaError
from mofa.io import write_error

log = logging.getLogger(__name__)

REPOSITORY_URL = "https://github.com/ICT-VGL/ICT-FaceKit"
PINNED_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
PINNED_URL = f"{REPOSITORY_URL}/archive/{PINNED_COMMIT}.zip"
# content_checksum("/work/shared/ict-facekit"): that copy keeps the pinned commit's `v` lines and
# vertex_indices.json byte for byte (its PROVENANCE.md), and only those enter the checksum.
PINNED_CHECKSUM = "375009a818bdbee59ca90cbee75b6755c75b38a8d8c93ed48ba4f24f114ca33a"
ENV_VAR = "MOFA_ICT_DIR"
NEUTRAL_MESH = Path("FaceXModel") / "generic_neutral_mesh.obj"
# What is kept from the archive: the data, the topology/landmark README and the licence.
KEPT = ("FaceXModel/", "README.md", "LICENSE")


class NoNetwork(MofaError):
    """The download could not reach the server (no route, DNS failure, refused, timed out)."""


def content_checksum(folder: str | os.PathLike) -> str:
    """sha256 hex digest of an ICT-FaceKit folder's contents: for each `FaceXModel/*.obj` in sorted
    name order, its name and its `v ` lines (line endings and trailing blanks dropped, each ended
    with a newline), then the raw bytes of `FaceXModel/vertex_indices.json`."""
    mdir = Path(folder) / "FaceXModel"
    objs = sorted(mdir.glob("*.obj"), key=lambda p: p.name)
    if not objs:
        raise MofaError(f"{mdir}: no OBJ files; not an ICT-FaceKit folder")
    digest = hashlib.sha256()
    try:
        for obj in objs:
            digest.update(obj.name.encode() + b"\n")
            with obj.open("rb") as fh:
                for line in fh:
                    if line.startswith(b"v "):
                        digest.update(line.rstrip() + b"\n")
        digest.update((mdir / "vertex_indices.json").read_bytes())
    except OSError as exc:
        raise MofaError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


def is_ict_dir(folder: str | os.PathLike) -> bool:
    """Whether `folder` has the repository layout (FaceXModel/generic_neutral_mesh.obj)."""
    return (Path(folder) / NEUTRAL_MESH).is_file()


def _fetch(url: str, target: Path, timeout: float) -> None:
    """Stream `url` into the file `target`, with a progress bar on a terminal."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="ICT-FaceKit", disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:  # the server answered: not a network problem
        raise MofaError(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except urllib.error.URLError as exc:
        raise NoNetwork(f"{url}: cannot connect ({exc.reason})") from None
    except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise NoNetwork(f"{url}: connection failed ({type(exc).__name__}: {exc})") from None


def _extract(archive: Path, into: Path, url: str) -> Path:
    """Unpack the kept parts of a GitHub archive zip into `into`; returns its top folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            tops = {name.split("/", 1)[0] for name in names}
            if len(tops) != 1:
                raise MofaError(f"{url}: archive has {len(tops)} top-level entries, expected one ICT-FaceKit-<commit>/ folder")
            top = tops.pop()
            members = [n for n in names if n.split("/", 1)[-1].startswith(KEPT)]
            zf.extractall(into, members=members)  # zipfile drops '..' and absolute parts
    except zipfile.BadZipFile as exc:
        raise MofaError(f"{url}: not a zip archive ({exc})") from None
    return into / top


def download_ict(dest_dir: str | os.PathLike, url: str = PINNED_URL, checksum: str = PINNED_CHECKSUM,
                 timeout: float = 60) -> Path:
    """Download ICT-FaceKit to `dest_dir` (the folder that will hold FaceXModel/) and return it.

    The zip goes to a temporary file and is unpacked into a temporary folder beside `dest_dir`;
    only after `content_checksum` matches `checksum` is it renamed into place, so `dest_dir` is
    either absent or complete. On any failure nothing is left behind. `timeout` is in seconds per
    network operation. Raises `NoNetwork` (a MofaError) when the server cannot be reached.
    """
    dest = Path(dest_dir)
    if dest.exists():
        if is_ict_dir(dest) and content_checksum(dest) == checksum:
            return dest
        raise MofaError(f"{dest}: exists but is not the pinned ICT-FaceKit copy; delete it to download again")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".zip.part")
        os.close(fd)
    except OSError as exc:
        raise write_error(dest, exc) from None
    archive = Path(tmp_name)
    try:
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".extract"))
    except OSError as exc:
        archive.unlink(missing_ok=True)
        raise write_error(dest, exc) from None
    try:
        log.info("downloading ICT-FaceKit from %s", url)
        _fetch(url, archive, timeout)
        top = _extract(archive, staging, url)
        if not is_ict_dir(top):
            raise MofaError(f"{url}: archive has no {NEUTRAL_MESH}; not ICT-FaceKit")
        found = content_checksum(top)
        if found != checksum:
            raise MofaError(f"{url}: content checksum {found[:16]}... does not match the pinned "
                            f"{checksum[:16]}...; nothing was kept")
        try:
            os.rename(top, dest)
        except OSError:
            if not is_ict_dir(dest):  # someone else finishing the same download first is fine
                raise
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def resolve_ict_dir(configured: str | None, cache_dir: str | os.PathLike, *, url: str = PINNED_URL,
                    checksum: str = PINNED_CHECKSUM, timeout: float = 60) -> Path:
    """The ICT-FaceKit folder to use, first found of: `$MOFA_ICT_DIR` (must be valid when set), the
    `configured` path, a copy downloaded earlier into `cache_dir`, a fresh download into `cache_dir`."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not Path(env).is_dir():
            raise MofaError(f"{ENV_VAR}={env}: no such folder; point it at a copy of {REPOSITORY_URL}")
        if not is_ict_dir(env):
            raise MofaError(f"{ENV_VAR}={env}: missing {NEUTRAL_MESH}; point it at a copy of {REPOSITORY_URL}")
        return Path(env)
    if configured:
        if is_ict_dir(configured):
            return Path(configured)
        log.warning("face_model ICT folder %s has no %s; looking elsewhere", configured, NEUTRAL_MESH)
    cached = Path(cache_dir) / f"ICT-FaceKit-{PINNED_COMMIT}"
    if is_ict_dir(cached):
        return cached
    try:
        return download_ict(cached, url=url, checksum=checksum, timeout=timeout)
    except MofaError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the OS put in the reason
        cause = "no internet" if isinstance(exc, NoNetwork) else "the download failed"
        raise MofaError(f"ICT-FaceKit not found: set {ENV_VAR} to a copy of {REPOSITORY_URL} "
                        f"(no local copy and {cause}: {reason})") from None
