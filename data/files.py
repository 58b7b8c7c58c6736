"""The one check every path alphafuse reads goes through: it must be a regular file.

Reading a FIFO blocks until some other process writes to it, and reading a device such as
/dev/zero never ends (a checkpoint hashed forever, a config read until memory runs out); a
folder fails later with a confusing error. So before anything is opened, loaded or hashed,
:func:`file_problem` says in a few words what the path is when it is not a regular file
(symlinks are followed; a symlink loop is named as one), and :func:`require_file` turns that into
a one-line error naming the file and what it was meant to be. :func:`open_regular` opens without
blocking and checks the opened descriptor, so a FIFO swapped in after the check cannot hang
either. It lives in data/, the lowest layer, so every package can use it.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Callable

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class InputFileError(ValueError):
    """A path that cannot be read as a file: one line naming it and what it is instead."""


def _mode_problem(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return f"is {kind}, not a regular file"
    return "is not a regular file"


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "not found"
    if exc.errno == errno.ELOOP:
        return "is a symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    if exc.errno == errno.ENOTDIR:
        return "not found (a parent is not a folder)"
    return f"cannot be read: {' '.join(str(exc.strerror or exc).split()).lower()}"


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a regular file ("not found", "is a FIFO (named pipe), not a
    regular file", "is a symlink loop", ...), or None when it can be. Never opens the path."""
    try:
        return _mode_problem(os.stat(path).st_mode)
    except OSError as exc:
        return _os_problem(exc)
    except ValueError:          # an embedded NUL byte
        return "is not a valid path"


def require_file(path: str | os.PathLike, what: str = "file",
                 error: Callable[[str], Exception] = InputFileError) -> Path:
    """``path`` as a Path when it is a regular file, else ``error("<path>: <what> <problem>")``."""
    problem = file_problem(path)
    if problem is not None:
        raise error(f"{path}: {what} {problem}")
    return Path(path)


def open_regular(path: str | os.PathLike, what: str = "file",
                 error: Callable[[str], Exception] = InputFileError) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file without blocking.

    The open is non-blocking (a FIFO with no writer opens at once instead of waiting) and the
    descriptor itself is checked, so the check and the read see the same file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: {what} {_os_problem(exc)}") from None
    except ValueError:
        raise error(f"{path}: {what} is not a valid path") from None
    try:
        problem = _mode_problem(os.fstat(fd).st_mode)
        if problem is not None:
            raise error(f"{path}: {what} {problem}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike, what: str = "file",
                       error: Callable[[str], Exception] = InputFileError) -> bytes:
    """The whole content of a regular file (see :func:`open_regular`)."""
    with open_regular(path, what, error) as f:
        try:
            return f.read()
        except OSError as exc:
            raise error(f"{path}: {what} {_os_problem(exc)}") from None


def read_regular_text(path: str | os.PathLike, what: str = "file",
                      error: Callable[[str], Exception] = InputFileError) -> str:
    """A regular file's content as UTF-8 text (an optional BOM dropped); not UTF-8 is one line."""
    blob = read_regular_bytes(path, what, error)
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = blob[:exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{blob[exc.start]:02x})") from None
