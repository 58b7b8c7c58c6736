"""Manifests: which clips a dataset has, with labels and splits, from three layouts.

* ``csv``: a CSV with header ``path,label,split``; paths relative to the CSV's folder or absolute.
* ``vggsound``: the official VGGSound CSV, no header, ``YouTube ID, start seconds, label, split``;
  clip ``{id}_{start:06d}.mp4`` lives in ``video_root`` or in ``video_root/<split>/``.
* ``folders``: ``root/<label>/<clip>`` split per class by a seeded ratio, or
  ``root/<split>/<label>/<clip>`` when every folder under root is a split name.

A dataset has one label vocabulary: the sorted names of every label in any split (stored with
the cache, so train and test agree on indices). Files that are missing are not a manifest
error: they fail one by one at load time. A row repeated exactly (same clip, label and split)
is used once, with a warning naming both lines; the same clip with another label or split is
an error. Split names become file names (``<split>.h5``): letters, digits, ``_``, ``-`` and
``.``, not first. A malformed manifest (not UTF-8, not CSV, wrong columns, no rows, a folder,
unreadable) is a one-line ValueError naming the file and, where there is one, the line.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .files import file_problem, read_regular_bytes

log = logging.getLogger(__name__)

CSV_HEADER = ("path", "label", "split")
# Folder names read as splits in the folders layout (every folder under root must be one).
SPLIT_FOLDER_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
# Files the folders layout takes as clips; anything else in a class folder is ignored.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg",
                            ".mpeg", ".ts", ".mts", ".wmv", ".3gp", ".ogv", ".ogg", ".nut"})
_SPLIT_ORDER = ("train", "val", "test")
_START_SECONDS = re.compile(r"^\d+(\.0*)?$")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def check_split_name(split: str) -> str | None:
    """Why ``split`` cannot name a cache file (``<split>.h5``), or None when it can."""
    if _SPLIT_NAME.match(split):
        return None
    return (f"bad split name {split!r}: it names the cache file <split>.h5, so use only letters, "
            "digits, '_', '-' and '.' (not first)")


@dataclass(frozen=True)
class Clip:
    """One clip: a unique id within its manifest, where the file is, its label and split."""

    clip_id: str
    path: Path
    label: str
    split: str


@dataclass
class Manifest:
    """The clips of one dataset and its label vocabulary (sorted, every split)."""

    clips: list[Clip]
    label_names: list[str]
    root: Path
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        self.clips = list(self.clips)
        self.label_names = list(self.label_names)
        self.root = Path(self.root)
        where = self.source or self.root
        if self.label_names != sorted(set(self.label_names)):
            raise ValueError(f"{where}: label_names must be sorted and unique")
        self._index = {name: i for i, name in enumerate(self.label_names)}
        seen: set[str] = set()
        for clip in self.clips:
            if clip.clip_id in seen:
                raise ValueError(f"{where}: duplicate clip id {clip.clip_id!r}")
            seen.add(clip.clip_id)
            if check_split_name(clip.split):
                raise ValueError(f"{where}: clip {clip.clip_id!r}: {check_split_name(clip.split)}")
            if clip.label not in self._index:
                raise ValueError(f"{where}: clip {clip.clip_id!r} has label {clip.label!r}, "
                                 "which is not in label_names")

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def splits(self) -> list[str]:
        """Split names present: train, val, test first (when present), then others sorted."""
        present = {c.split for c in self.clips}
        return [s for s in _SPLIT_ORDER if s in present] + sorted(present - set(_SPLIT_ORDER))

    def split(self, name: str) -> list[Clip]:
        """The clips of one split, in manifest order."""
        if name not in {c.split for c in self.clips}:
            raise ValueError(f"no split {name!r} in {self.source or self.root}; "
                             f"available: {', '.join(self.splits) or '(none)'}")
        return [c for c in self.clips if c.split == name]

    def label_index(self, label: str) -> int:
        """Index of ``label`` in ``label_names``."""
        try:
            return self._index[label]
        except KeyError:
            raise ValueError(f"unknown label {label!r}: not among the {len(self.label_names)} "
                             f"labels of {self.source or self.root}") from None

    def unseen_labels(self, split: str) -> list[str]:
        """Labels present in ``split`` but absent from train (sorted)."""
        in_train = {c.label for c in self.clips if c.split == "train"}
        return sorted({c.label for c in self.split(split)} - in_train)

    def report_unseen(self) -> dict[str, list[str]]:
        """{split: unseen labels} for every split but train; logged as a warning when not empty."""
        if "train" not in self.splits:
            return {}
        unseen = {s: self.unseen_labels(s) for s in self.splits if s != "train"}
        for split, labels in unseen.items():
            if labels:
                log.warning("%s: %d label(s) of split %r never occur in train: %s",
                            self.source or self.root, len(labels), split, "; ".join(labels))
        return {s: labels for s, labels in unseen.items() if labels}


# --------------------------------------------------------------------------------------------
# Reading


def read_manifest(path: str | os.PathLike, *, video_root: str | os.PathLike | None = None,
                  layout: str = "auto", val_ratio: float = 0.1, test_ratio: float = 0.1,
                  seed: int = 0) -> Manifest:
    """Read a manifest in any of the three layouts (see the module docstring).

    ``layout="auto"``: a directory is ``folders``; a CSV whose first row is ``path,label,split``
    is ``csv``; a headerless 4-column CSV is ``vggsound`` (``video_root`` defaults to the CSV's
    folder). ``val_ratio``, ``test_ratio`` and ``seed`` only split class folders that have no
    split folders above them. Labels of val/test that train lacks are logged as a warning.
    """
    path = Path(path)
    try:
        found = path.exists()
    except OSError as exc:  # e.g. a parent folder that cannot be searched
        raise ValueError(f"{path}: cannot read the manifest: {exc.strerror or exc}") from None
    if not found:
        if path.is_symlink():     # a dangling link or a symlink loop: say which
            raise ValueError(f"{path}: manifest {file_problem(path)}")
        raise FileNotFoundError(f"manifest not found: {path}")
    if layout == "auto":
        layout = _detect_layout(path)
    if layout == "csv":
        manifest = _read_path_csv(path)
    elif layout == "vggsound":
        manifest = _read_vggsound_csv(path, Path(video_root) if video_root is not None else path.parent)
    elif layout == "folders":
        manifest = _read_folders(path, val_ratio, test_ratio, seed)
    else:
        raise ValueError(f"unknown manifest layout {layout!r}: use 'csv', 'vggsound', 'folders' or 'auto'")
    manifest.report_unseen()
    return manifest


def _detect_layout(path: Path) -> str:
    if path.is_dir():
        return "folders"
    first = next(_csv_rows(path), None)
    if first is None:
        raise ValueError(f"{path}: empty manifest")
    _, row = first
    if tuple(cell.strip().lower() for cell in row) == CSV_HEADER:
        return "csv"
    if len(row) == 4:
        return "vggsound"
    raise ValueError(f"{path}: cannot tell the manifest layout from line 1 ({','.join(row)!r}): "
                     "expected the header 'path,label,split' or the 4 VGGSound columns "
                     "'YouTube ID,start seconds,label,split'; or pass layout=")


def _csv_rows(path: Path):
    """(line number, cells) of the non-blank rows; cells stripped. BOM and CRLF are fine."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, [cell.strip() for cell in row]
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None


def _read_text(path: Path) -> str:
    """The manifest as text (UTF-8, optional BOM); every failure a one-line ValueError."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a CSV manifest (read a folder of class folders "
                         "with layout='folders' or 'auto')")
    # A FIFO or a device is refused, not read (it would block or never end).
    blob = read_regular_bytes(path, "manifest")
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = blob[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{blob[exc.start]:02x}); save the "
                         "manifest as UTF-8") from None
    if "\0" in text:  # UTF-16 without a BOM decodes as UTF-8 with a NUL every other byte
        line = text[:text.index("\0")].count("\n") + 1
        raise ValueError(f"{path}:{line}: NUL byte: not a text file (UTF-16?); save the manifest "
                         "as UTF-8")
    return text


@dataclass
class _Entry:
    line: int | str  # where the entry came from, for messages (a line number or a folder)
    path: Path
    label: str
    split: str
    clip_id: str | None = None


def _read_path_csv(path: Path) -> Manifest:
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{path}: empty manifest")
    line, header = first
    if tuple(cell.lower() for cell in header) != CSV_HEADER:
        raise ValueError(f"{path}:{line}: expected the header 'path,label,split', "
                         f"got {','.join(header)!r}")
    root = path.parent
    entries = []
    for line, row in rows:
        if len(row) != 3:
            raise ValueError(f"{path}:{line}: expected 3 columns (path,label,split), got {len(row)}"
                             " (quote labels that contain commas)")
        rel, label, split = row
        _require_cells(path, line, path=rel, label=label, split=split)
        clip_path = Path(rel)
        entries.append(_Entry(line, clip_path if clip_path.is_absolute() else root / clip_path,
                              label, split))
    if not entries:
        raise ValueError(f"{path}: no clips (the header 'path,label,split' and no rows)")
    entries = _drop_repeats(path, entries, key=lambda e: Path(os.path.normpath(e.path)),
                            what=lambda e: str(e.path))
    _assign_ids_from_paths(path, root, entries)
    return _build(path, root, entries)


def _read_vggsound_csv(path: Path, video_root: Path) -> Manifest:
    if not video_root.is_dir():
        raise ValueError(f"video root {video_root} (for {path}) is not a folder: pass video_root=")
    entries = []
    for line, row in _csv_rows(path):
        if len(row) != 4:
            raise ValueError(f"{path}:{line}: expected 4 columns (YouTube ID, start seconds, "
                             f"label, split), got {len(row)} (quote labels that contain commas)")
        youtube_id, start, label, split = row
        _require_cells(path, line, youtube_id=youtube_id, label=label, split=split)
        if not _START_SECONDS.match(start):
            raise ValueError(f"{path}:{line}: bad start seconds {start!r}: expected a whole "
                             "number of seconds")
        if "/" in youtube_id or "\\" in youtube_id:
            raise ValueError(f"{path}:{line}: bad YouTube ID {youtube_id!r}")
        clip_id = f"{youtube_id}_{int(float(start)):06d}"
        entries.append(_Entry(line, _find_vggsound_file(video_root, split, clip_id + ".mp4"),
                              label, split, clip_id))
    if not entries:
        raise ValueError(f"{path}: empty manifest")
    entries = _drop_repeats(path, entries, key=lambda e: e.clip_id,
                            what=lambda e: f"duplicate clip id {e.clip_id!r}:")
    _check_unique_ids(path, entries)
    return _build(path, video_root, entries)


def _find_vggsound_file(root: Path, split: str, name: str) -> Path:
    """root/<split>/name or root/name, whichever exists; a missing file is placed where the
    layout says it should be (under its split folder when that folder exists)."""
    in_split = root / split / name
    if in_split.exists():
        return in_split
    flat = root / name
    if flat.exists():
        return flat
    return in_split if (root / split).is_dir() else flat


def _read_folders(root: Path, val_ratio: float, test_ratio: float, seed: int) -> Manifest:
    if not root.is_dir():
        raise ValueError(f"{root}: the folders layout needs a directory")
    subdirs = _visible_dirs(root)
    if not subdirs:
        raise ValueError(f"{root}: no class folders (expected root/<label>/<clip> or "
                         "root/<split>/<label>/<clip>)")
    entries = []
    if all(d.name in SPLIT_FOLDER_NAMES for d in subdirs):
        for split_dir in subdirs:
            stray = _video_files(split_dir)
            if stray:
                raise ValueError(f"{split_dir}: video files directly in a split folder (e.g. "
                                 f"{stray[0].name}); the folders layout expects "
                                 f"{root}/<split>/<label>/<clip>; use a CSV manifest instead")
            for label_dir in _visible_dirs(split_dir):
                entries += [_Entry(str(label_dir), f, label_dir.name, split_dir.name)
                            for f in _video_files(label_dir)]
    else:
        _check_ratios(val_ratio, test_ratio)
        rng = random.Random(seed)
        for label_dir in subdirs:
            files = _video_files(label_dir)
            splits = _ratio_splits(len(files), val_ratio, test_ratio, rng)
            entries += [_Entry(str(label_dir), f, label_dir.name, s) for f, s in zip(files, splits)]
    if not entries:
        raise ValueError(f"{root}: no video files in the class folders "
                         f"(suffixes read: {', '.join(sorted(VIDEO_SUFFIXES))})")
    _assign_ids_from_paths(root, root, entries)
    return _build(root, root, entries)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _video_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".") and p.is_file())


def _check_ratios(val_ratio: float, test_ratio: float) -> None:
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError(f"val_ratio={val_ratio} and test_ratio={test_ratio} must be in [0, 1) "
                         "and leave clips for train")


def _ratio_splits(n: int, val_ratio: float, test_ratio: float, rng: random.Random) -> list[str]:
    """Split names for one class's n clips (sorted order), stratified: round(n * ratio) clips
    each to test and val (half up), at least one left for train; shuffled by ``rng``."""
    n_test = int(math.floor(n * test_ratio + 0.5))
    n_val = int(math.floor(n * val_ratio + 0.5))
    while n > 0 and n_test + n_val >= n:  # keep one for train: a class must be learnable
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    rng.shuffle(names)
    return names


def _require_cells(source: Path, line: int, **cells: str) -> None:
    for name, value in cells.items():
        if not value:
            raise ValueError(f"{source}:{line}: empty {name.replace('_', ' ')}")
    problem = check_split_name(cells["split"])
    if problem:
        raise ValueError(f"{source}:{line}: {problem}")


def _drop_repeats(source: Path, entries: list[_Entry], key, what) -> list[_Entry]:
    """Entries with exact repeats (same ``key``, label and split) dropped, with a warning naming
    both lines; the same ``key`` with another label or split is an error naming both."""
    first: dict = {}
    kept = []
    for e in entries:
        k = key(e)
        if k not in first:
            first[k] = e
            kept.append(e)
            continue
        f = first[k]
        if (f.label, f.split) != (e.label, e.split):
            raise ValueError(f"{source}:{e.line}: {what(e)} listed twice with another label or split "
                             f"(line {f.line}: {f.label!r}, {f.split!r}; line {e.line}: {e.label!r}, "
                             f"{e.split!r})")
        log.warning("%s:%s: repeats line %s (same clip, label and split); the clip is used once",
                    source, e.line, f.line)
    return kept


def _assign_ids_from_paths(source: Path, root: Path, entries: list[_Entry]) -> None:
    """Clip id = file stem; where stems collide, the path relative to ``root`` without suffix
    (with it, if that still collides). Entries name distinct files (see ``_drop_repeats``)."""
    stems = defaultdict(list)
    for e in entries:
        stems[e.path.stem].append(e)
    for stem, group in stems.items():
        if len(group) == 1:
            group[0].clip_id = stem
            continue
        rel = [Path(os.path.relpath(os.path.normpath(e.path), root)).as_posix() for e in group]
        no_suffix = [r[: len(r) - len(Path(r).suffix)] if Path(r).suffix else r for r in rel]
        use = no_suffix if len(set(no_suffix)) == len(no_suffix) else rel
        for e, clip_id in zip(group, use):
            e.clip_id = clip_id
    _check_unique_ids(source, entries)


def _check_unique_ids(source: Path, entries: list[_Entry]) -> None:
    first: dict[str, _Entry] = {}
    for e in entries:
        if e.clip_id in first:
            raise ValueError(f"{source}:{e.line}: duplicate clip id {e.clip_id!r} "
                             f"(first at {first[e.clip_id].line})")
        first[e.clip_id] = e


def _build(source: Path, root: Path, entries: list[_Entry]) -> Manifest:
    clips = [Clip(e.clip_id, e.path, e.label, e.split) for e in entries]
    return Manifest(clips, sorted({c.label for c in clips}), root, source)
