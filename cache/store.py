"""The HDF5 feature store: one file per split, readable with plain h5py.

Layout of ``<cache dir>/<split>.h5`` (schema version 1)::

    clip_id    (N,)     utf-8 string
    label      (N,)     int64, index into the ``label_names`` attribute
    video      (N, Dv)  float32, TimeSformer embedding (768 for base)
    audio      (N, Da)  float32, AST embedding (768 for base)
    has_audio  (N,)     bool, False where the clip had no audio stream (audio is then the
                        embedding of silence, exactly what the end-to-end model would see)
    errors/clip_id, errors/reason   (M,) utf-8 strings: clips that could not be read

    attrs: schema_version, split, label_names, backbones, preprocessing (JSON strings
           where structured), tool_version, created

Files are only ever written whole, to a temporary name renamed into place, so a reader never
sees a half-written file and a crash leaves the previous version intact.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

SCHEMA_VERSION = 1
TOOL_VERSION = "0.1.0"
_STR = h5py.string_dtype("utf-8")


class CacheError(ValueError):
    """A cache file that is missing, unreadable, or does not match what it is used with."""


@dataclass
class FeatureSplit:
    """One split's cached embeddings, held in memory (what ``fuse`` trains on)."""

    split: str
    clip_ids: list[str]
    labels: np.ndarray          # (N,) int64
    video: np.ndarray           # (N, Dv) float32
    audio: np.ndarray           # (N, Da) float32
    has_audio: np.ndarray       # (N,) bool
    label_names: list[str]
    backbones: dict = field(default_factory=dict)      # {"video": {...}, "audio": {...}}
    preprocessing: dict = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)          # everything else stored (created, ...)
    path: Path | None = None

    def __post_init__(self):
        self.clip_ids = [str(c) for c in self.clip_ids]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.video = np.asarray(self.video, dtype=np.float32)
        self.audio = np.asarray(self.audio, dtype=np.float32)
        self.has_audio = np.asarray(self.has_audio, dtype=bool).reshape(-1)
        n = len(self.clip_ids)
        where = self.path or f"split {self.split!r}"
        for name, arr in (("labels", self.labels), ("video", self.video),
                          ("audio", self.audio), ("has_audio", self.has_audio)):
            if arr.shape[0] != n:
                raise CacheError(f"{where}: {name} has {arr.shape[0]} rows but there are {n} clip ids")
        for name, arr in (("video", self.video), ("audio", self.audio)):
            if arr.ndim != 2:
                raise CacheError(f"{where}: {name} must be 2-D (N, D), got shape {arr.shape}")
        if len(set(self.clip_ids)) != n:
            raise CacheError(f"{where}: clip ids are not unique")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
            raise CacheError(f"{where}: labels outside 0..{len(self.label_names) - 1}")

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def write_split(path: str | os.PathLike, features: FeatureSplit) -> Path:
    """Write ``features`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("clip_id", data=np.array(features.clip_ids, dtype=object), dtype=_STR)
        f.create_dataset("label", data=features.labels)
        f.create_dataset("video", data=features.video)
        f.create_dataset("audio", data=features.audio)
        f.create_dataset("has_audio", data=features.has_audio)
        errors = f.create_group("errors")
        errors.create_dataset("clip_id", data=np.array([e[0] for e in features.errors], dtype=object), dtype=_STR)
        errors.create_dataset("reason", data=np.array([e[1] for e in features.errors], dtype=object), dtype=_STR)
        attrs = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **features.attrs}
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["tool_version"] = TOOL_VERSION
        f.attrs["split"] = features.split
        f.attrs["label_names"] = json.dumps(list(features.label_names))
        f.attrs["backbones"] = json.dumps(features.backbones, sort_keys=True)
        f.attrs["preprocessing"] = json.dumps(features.preprocessing, sort_keys=True)
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    os.replace(tmp, path)
    return path


def read_split(path: str | os.PathLike) -> FeatureSplit:
    """Load a whole split file into memory. Raises :class:`CacheError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no such cache file (run `cli.py extract` for this split first)")
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise CacheError(f"{path}: cache schema version {version}, this alphafuse reads {SCHEMA_VERSION}")
            known = {"schema_version", "split", "label_names", "backbones", "preprocessing"}
            return FeatureSplit(
                split=str(f.attrs["split"]),
                clip_ids=[s.decode() if isinstance(s, bytes) else s for s in f["clip_id"][()]],
                labels=f["label"][()],
                video=f["video"][()],
                audio=f["audio"][()],
                has_audio=f["has_audio"][()],
                label_names=json.loads(f.attrs["label_names"]),
                backbones=json.loads(f.attrs["backbones"]),
                preprocessing=json.loads(f.attrs["preprocessing"]),
                errors=list(zip(f["errors/clip_id"].asstr()[()], f["errors/reason"].asstr()[()])),
                attrs={k: _attr(v) for k, v in f.attrs.items() if k not in known},
                path=path,
            )
    except CacheError:
        raise
    except (OSError, KeyError) as exc:
        raise CacheError(f"{path}: not a readable alphafuse cache ({exc})") from exc


def _attr(value):
    # Structured attributes were stored as JSON strings (see write_split).
    if isinstance(value, str) and value[:1] in "{[":
        return json.loads(value)
    return value.item() if isinstance(value, np.generic) else value


def check_compatible(*splits: FeatureSplit) -> None:
    """Refuse to mix splits extracted with different backbones, preprocessing or labels.

    Embeddings from different backbones (or frame sampling, or fbank settings) live in
    different spaces, so a head trained on one split means nothing on the other.
    """
    if not splits:
        return
    first = splits[0]
    for other in splits[1:]:
        for name in ("video", "audio"):
            got, want = getattr(other, name).shape[1], getattr(first, name).shape[1]
            if got != want:
                raise CacheError(f"{_where(other)} has {got}-d {name} embeddings but {_where(first)} has {want}-d; "
                                 f"use caches extracted with the same backbones")
        for what in ("backbones", "preprocessing", "label_names"):
            a, b = getattr(first, what), getattr(other, what)
            if a != b:
                raise CacheError(
                    f"{_where(other)} and {_where(first)} differ in {what}: "
                    f"{_first_difference(a, b)}. Re-extract them with the same settings."
                )


def _where(features: FeatureSplit) -> str:
    return str(features.path) if features.path is not None else f"split {features.split!r}"


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{prefix.rstrip('.') or 'value'}: {len(a)} entries vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"{prefix}[{i}]: {x!r} vs {y!r}"
    return f"{prefix.rstrip('.') or 'value'}: {b!r} vs {a!r}"
