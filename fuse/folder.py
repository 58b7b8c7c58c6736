"""Output folders of fuse and grid: one writer at a time, and a folder that says what it holds.

Each output folder has

    .alphafuse.lock   locked (flock) by the command writing into the folder; a second command
                      into it is refused in one line. The kernel releases the lock when its
                      holder dies, so a killed run never leaves the folder locked.
    .alphafuse.json   {"holds": "run" or "grid", "settings": ...}: a run folder is never written
                      by grid, nor a grid folder by fuse, and a grid resumes only with the
                      settings it was started with.

Folders written before the marker existed are recognised by their files (head.pt/metrics.json:
a run; results.csv/summary.json: a grid). :func:`claim` creates the folder only after every
setting was validated (the callers validate first), and removes what it created when the
command fails before writing anything, so that a refused run leaves no folder behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from alphafuse.data.atomic import TMP_SUFFIX, atomic_write_text

LOCK_FILE = ".alphafuse.lock"
MARKER_FILE = ".alphafuse.json"
KINDS = ("run", "grid")
# What a folder without a marker holds, told by its files.
LEGACY_FILES = {"run": ("head.pt", "metrics.json"), "grid": ("results.csv", "summary.json")}
WRITERS = {"run": "fuse", "grid": "grid"}


class FolderError(ValueError):
    """An output folder that a command may not write into: one line naming it and why."""


@dataclass
class Folder:
    path: Path
    settings: dict | None   # the settings recorded by an earlier, unfinished grid (None: none)


def folder_holds(path) -> str | None:
    """"run", "grid" or None (empty, or not written by fuse or grid)."""
    path = Path(path)
    marker = path / MARKER_FILE
    if marker.is_file():
        try:
            holds = json.loads(marker.read_text(encoding="utf-8")).get("holds")
        except (ValueError, AttributeError, OSError):
            raise FolderError(f"{marker} is not readable: remove the folder or choose another output directory")
        if holds in KINDS:
            return holds
        raise FolderError(f"{marker} says the folder holds {holds!r}, which this alphafuse does not write")
    for kind, names in LEGACY_FILES.items():
        if any((path / name).exists() for name in names):
            return kind
    return None


def recorded_settings(path) -> dict | None:
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8")).get("settings")


def check_kind(path, kind: str) -> None:
    """Refuse ``path`` for a ``kind`` when it holds the other kind (before anything is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a directory; choose another output directory")
    holds = folder_holds(path) if path.is_dir() else None
    if holds is not None and holds != kind:
        raise FolderError(f"{path} holds a {holds} (written by {WRITERS[holds]}); {WRITERS[kind]} writes a {kind}: "
                          f"choose another output directory")


@contextmanager
def claim(path, kind: str, known=()) -> Iterator[Folder]:
    """Create ``path`` if needed, lock it for this command and mark what it holds.

    Refused in one line: a folder locked by another command, or holding the other kind. Under
    the lock, the temporaries of the ``known`` files (and of the marker) that a killed writer
    left are removed. On an exception, what this call created (the folder and its bookkeeping
    files) is removed when nothing else was written there. The lock is released on exit.
    """
    path = Path(path)
    check_kind(path, kind)
    created = _missing_parents(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = _lock(path)
    try:
        check_kind(path, kind)   # again, now that no other writer can change it
        for name in (*known, MARKER_FILE):   # what SIGKILL left mid-write; no writer holds them now
            Path(str(path / name) + TMP_SUFFIX).unlink(missing_ok=True)
        previous = recorded_settings(path)
        if not (path / MARKER_FILE).is_file():
            mark(path, kind)
        yield Folder(path, previous)
    except BaseException:
        if created:
            _remove_if_only_bookkeeping(path, created)
        raise
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def mark(path, kind: str, settings: dict | None = None) -> None:
    """Record what ``path`` holds (and, for a grid, the settings a resumption must match)."""
    atomic_write_text(Path(path) / MARKER_FILE, json.dumps({"holds": kind, "settings": settings}, indent=1,
                                                           default=str))


def remove_files(path, names) -> None:
    """Remove ``names`` (files or folders) and their temporaries from ``path``: an overwrite."""
    for name in names:
        target = Path(path) / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        Path(str(target) + TMP_SUFFIX).unlink(missing_ok=True)


def _lock(path: Path):
    """Open and lock ``path/.alphafuse.lock`` without waiting; refused when another command holds it.

    The lock must be on the file that is there now: a writer that removed the folder it had
    created (a failed run) may have unlinked the file we opened, so check and retry.
    """
    for _ in range(5):
        lock = path / LOCK_FILE
        path.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FolderError(f"{path} is being written by another alphafuse command (it holds {LOCK_FILE}); "
                              f"wait for it to finish or choose another output directory") from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()
    raise FolderError(f"{path}: could not lock {LOCK_FILE} (the folder keeps being removed); try again")


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_if_only_bookkeeping(path: Path, created: list[Path]) -> None:
    """Undo :func:`claim`'s folder when nothing but its lock and marker is in it."""
    try:
        if any(p.name not in (LOCK_FILE, MARKER_FILE) for p in path.iterdir()):
            return
        for name in (MARKER_FILE, LOCK_FILE):
            (path / name).unlink(missing_ok=True)
        for folder in created:
            folder.rmdir()
    except OSError:
        pass   # another command got in: leave the folder to it
