"""Atomic writes, and reads of the files stages hand each other, with one-line errors.

A file appears under its final name complete or not at all.

Every writer here writes to a temporary file in the destination's own folder (the same file system, so
that the rename is atomic) and renames it onto the final name with `os.replace` only once the content
is written and flushed to disk. On any error (a full disk, a kill) the temporary file is removed and the
final name keeps whatever it held before. The temporary name never reaches the content: it ends in the
destination's own suffix, so libraries that add a suffix (`np.save`, `np.savez`) keep it as it is, and
writers that record their file name get a path they must not rely on.

    with atomic_path(out / "mesh.obj") as tmp:   # any library that writes to a path
        some_library.write(tmp)
    write_json(out / "metrics.json", metrics)     # the common cases, one call each

A write that fails with an OSError (no space, no permission, a folder that is a file) raises a MofaError
that names the final path and the reason, in one line.

A folder written in pieces works the same way with `atomic_dir`: it is built as `<name>.partial` and
renamed onto `<name>` when complete, and removed when building it fails.

The readers (`read_json`, `load_npy`, `read_csv`) are for files one stage writes and another reads: a
file that is there but cut short, edited or of another format raises a MofaError that names it, says
what is wrong and that deleting it makes the workflow write it again.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mofa.errors import MofaError

PARTIAL_SUFFIX = ".partial"  # a folder being built by `atomic_dir`
TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp(\.[^.]+)?")  # `atomic_path`'s: .<stem>.<random>.tmp<suffix>


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reason(path: str | os.PathLike, exc: OSError) -> str:
    """What went wrong, in words: the OSError's own ('No space left on device'), except where a file
    stands where a folder of `path` must be, which the system reports as 'File exists' or 'Not a
    directory': then 'X is a file, not a folder'."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        for node in (Path(path), *Path(path).parents):
            if node.exists():
                if not node.is_dir():
                    return f"{node} is a file, not a folder"
                break
    return exc.strerror or str(exc)


def write_error(path: str | os.PathLike, exc: OSError, stand_in: Path | None = None) -> MofaError:
    """The one-line error for a failed write of `path`: 'PATH: cannot write (No space left on device)'.

    stand_in: the temporary file or folder written in place of `path`; an error about it (or a file
    inside it) is reported under `path`, one about another file under that file's name.
    """
    named = [Path(name) for name in (exc.filename, exc.filename2) if name]  # copies name source and target
    where = named[0] if named else None
    if stand_in is not None:
        for name in named:
            if name == stand_in:
                where = Path(path)
            elif stand_in in name.parents:
                where = Path(path) / name.relative_to(stand_in)
    if where is None or where in Path(path).parents:  # a folder on the way to `path`: name `path`
        where = Path(path)
    return MofaError(f"{where}: cannot write ({reason(where, exc)})")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without error.

    The file is synced to disk before the rename and gets a normal file's mode (0666 less the umask),
    where a bare `mkstemp` would leave it private. On an error the temporary file is removed; an
    OSError becomes a MofaError naming `path`. The parent folder is created when missing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
    except OSError as exc:  # named after `path`, not the temporary file it could not create
        raise write_error(path, exc, Path(exc.filename) if exc.filename else None) from None
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` for writing ('w' or 'wb'), atomically: the file appears when the block ends."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        try:
            with open(tmp, mode, **kwargs) as fh:
                yield fh
        except OSError as exc:
            raise write_error(path, exc, tmp) from None


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2, sort_keys: bool = True) -> Path:
    """`data` as JSON with a final newline (keys sorted by default, so equal data give equal bytes)."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


def save_npy(path: str | os.PathLike, array: Any) -> Path:
    """`np.save` to `path` (which should end in .npy), atomically."""
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.save(fh, np.asarray(array))
    return Path(path)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """`np.savez` of `arrays` to `path` (which should end in .npz), atomically."""
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def copy_file(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """A copy of `source` (contents and modification time) at `path`, atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that `atomic_path` writers killed mid-write (SIGKILL: no cleanup ran)
    left in `folder`; returns them. Only for a folder that no other process is writing to."""
    stale = sorted(p for p in Path(folder).glob(".*.tmp*") if p.is_file() and TEMPORARY.fullmatch(p.name))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def partial_dir(path: str | os.PathLike) -> Path:
    """Where `atomic_dir` builds the folder `path`: <name>.partial beside it."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """An empty folder `<path>.partial` to fill; when the block ends without error it replaces `path`
    (the old folder, if any, is removed first), and when it fails it is removed.

    A `.partial` folder left by a killed process is cleared when the next one starts. The files inside
    need no atomic writes of their own: none is seen under the final folder before all are written.
    """
    path = Path(path)
    partial = partial_dir(path)
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    except OSError as exc:
        raise write_error(partial, exc) from None
    try:
        yield partial
        for file in partial.rglob("*"):
            if file.is_file():
                _fsync(file)
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise write_error(path, exc, partial) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _unreadable(path: Path, what: str, problem: str) -> MofaError:
    return MofaError(f"{path}: unreadable {what} ({problem}); delete it and run the stage that writes it again")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """The JSON object in `path`; a MofaError naming the file when it is missing, not JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MofaError(f"{path}: {what} missing; run the stage that writes it") from None
    except OSError as exc:
        raise MofaError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, what, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _unreadable(path, what, f"a JSON {type(data).__name__}, expected an object")
    return data


def load_npy(path: str | os.PathLike, mmap_mode: str | None = "r", rows: int | None = None) -> Any:
    """np.load of an array file (memory-mapped by default); rows: the length its first axis must have.
    A MofaError naming the file when it is missing, cut short or not a .npy array."""
    import numpy as np

    path = Path(path)
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise MofaError(f"{path}: array missing; run the stage that writes it") from None
    except OSError as exc:
        raise MofaError(f"{path}: cannot read ({exc.strerror})") from None
    except (ValueError, EOFError) as exc:  # a bad header, a file shorter than its header says
        raise _unreadable(path, "array", " ".join(str(exc).split()) or type(exc).__name__) from None
    if not isinstance(array, np.ndarray):
        raise _unreadable(path, "array", "an .npz archive, expected one .npy array")
    if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
        raise _unreadable(path, "array", f"shape {array.shape}, expected {rows} rows as its manifest says")
    return array


def read_csv(path: str | os.PathLike, columns: tuple[str, ...] = (), what: str = "table", **kwargs: Any):
    """pd.read_csv(path) with the `columns` it must have; a MofaError naming the file otherwise."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise MofaError(f"{path}: {what} missing; run the stage that writes it") from None
    except OSError as exc:
        raise MofaError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _unreadable(path, what, " ".join(str(exc).split())[:200]) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise _unreadable(path, what, f"no column {', '.join(missing)}")
    return frame
