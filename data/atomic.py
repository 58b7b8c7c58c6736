"""The one way alphafuse writes a file: whole or not at all.

Every file a later command trusts (cache splits and parts, run directories, grids, manifests,
plots) goes through :func:`atomic_write`: the content is written to a temporary name beside
the target, flushed and fsynced, then renamed over it, and the directory entry is fsynced too.
A kill, a full disk or an exception at any moment leaves either the old file or the new one,
never a half-written file under the real name, and no temporary behind (except after SIGKILL,
whose ``.tmp`` files are ignored by every reader and removed by the next writer).

It lives in data/, the lowest layer, so that every package can use it without breaking the
one-way flow data -> extract -> cache -> fuse.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written (full disk, read-only folder, ...): one line naming the file."""

    def __str__(self) -> str:
        return str(self.strerror)


def tmp_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Yield a file open on ``path.tmp``; on success fsync it and rename it to ``path``.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text, no newline translation). On any
    exception the temporary file is removed and the exception propagates; an OSError becomes
    a :class:`WriteError` naming ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    with _committing(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with ``write(tmp_path)`` for writers that open files themselves
    (h5py). The temporary file is fsynced, renamed into place and the folder fsynced."""
    path = Path(path)
    with _committing(path) as tmp:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return path


@contextmanager
def _committing(path: Path) -> Iterator[Path]:
    """The temporary name to write; renamed over ``path`` (folder fsynced) when the block ends
    well, removed when it raises. An OSError becomes a WriteError naming ``path``."""
    tmp = tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(exc.errno, f"cannot write {path}: {describe_os_error(exc)}") from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_os_error(exc: BaseException) -> str:
    """A short reason for an OSError: 'no space left on device', 'permission denied', ..."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return "no space left on device"
    if code == errno.EDQUOT:
        return "disk quota exceeded"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EROFS:
        return "read-only file system"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split()).lower()
