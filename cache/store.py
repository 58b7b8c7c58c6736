"""The HDF5 split file: one split of one store (or of a schema-2 folder), readable with plain h5py.

Since schema 3 a cache folder holds one store per encoder, ``<cache dir>/<store id>/<split>.h5``
(cache/stores.py), each file holding its own backbone's embeddings; a schema-2 folder holds one
``<cache dir>/<split>.h5`` with both encoders. The file format is the same::

    clip_id    (N,)       utf-8 string
    label      (N,)       int64, index into the ``label_names`` attribute
    has_audio  (N,)       bool, False where the clip had no audio stream (its audio embedding is
                          then the embedding of silence, exactly what the end-to-end model sees)
    <name>     (N, ...)   one dataset per named embedding: ``video`` and ``audio`` (pooled, (N, D)),
                          and whatever else the backbones produced: per-frame ``video`` (N, F, D),
                          ``joint``, ``logits``, ``video_tokens`` (N, T, D) or ``audio_layers``
                          (N, L, D). float32, or float16 for token and layer caches; chunked
                          by clip, so one clip's rows are one read
    errors/clip_id, errors/reason   (M,) utf-8 strings: clips that could not be read

    attrs: schema_version, split, label_names, embeddings (name -> shape, dtype, what it is),
           backbones, preprocessing, extraction (JSON strings where structured), tool_version,
           created; store_id in a store's file (schema 3)

Version 1 files (``video`` and ``audio`` only, no ``embeddings`` attribute) are read as before.

Files are only ever written whole, to a temporary name renamed into place (data/atomic.py), so
a reader never sees a half-written file and a crash leaves the previous version intact.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from alphafuse import __version__ as TOOL_VERSION  # the package's one version string
from alphafuse.data.atomic import atomic_write_with
from alphafuse.data.files import file_problem

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_STR = h5py.string_dtype("utf-8")
_RESERVED = {"clip_id", "label", "has_audio", "errors"}
# Embeddings at most this many bytes are read into memory by read_split(lazy="auto"); bigger
# ones (token caches of a whole dataset) stay on disk and are read a batch at a time.
EAGER_MAX_BYTES = 1 << 30


class CacheError(ValueError):
    """A cache file that is missing, unreadable, or does not match what it is used with.

    ``hint`` names the setting that would resolve it (the command line shows it as a flag)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class LazyArray:
    """An (N, ...) dataset of a cache file read on demand: ``arr[indices]`` reads those rows.

    Holds the file's path, not an open handle, until first use, so it pickles into worker
    processes; each process opens the file once.
    """

    def __init__(self, path: str | os.PathLike, name: str, shape: tuple, dtype):
        self.path, self.name, self.shape, self.dtype = Path(path), name, tuple(shape), np.dtype(dtype)
        self._file = self._pid = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _dataset(self):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file[self.name]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer, slice)):
            return self._dataset()[index]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        # h5py reads increasing, unique indices: read those and put the rows back in order.
        unique, inverse = np.unique(index, return_inverse=True)
        return self._dataset()[unique][inverse]

    def __array__(self, dtype=None, copy=None):
        data = self._dataset()[()]
        return data if dtype is None else data.astype(dtype)

    def __getstate__(self):
        return {"path": self.path, "name": self.name, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._file = self._pid = None

    def __repr__(self) -> str:
        return f"LazyArray({self.path}:{self.name}, shape={self.shape}, dtype={self.dtype})"


class FeatureSplit:
    """One split's cached embeddings (what ``fuse`` trains on).

    ``embeddings`` maps a name to an (N, ...) array (numpy, or :class:`LazyArray` for big
    caches); ``video`` and ``audio`` are the pooled embeddings the paper's head fuses. The
    first positional arguments keep the version-1 order: split, clip_ids, labels, video,
    audio, has_audio, label_names.
    """

    def __init__(self, split: str, clip_ids, labels, video=None, audio=None, has_audio=None,
                 label_names=(), backbones: dict | None = None, preprocessing: dict | None = None,
                 errors=(), attrs: dict | None = None, path=None, *, embeddings: dict | None = None,
                 embedding_info: dict | None = None):
        self.split = str(split)
        self.clip_ids = [str(c) for c in clip_ids]
        n = len(self.clip_ids)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.has_audio = (np.ones(n, bool) if has_audio is None
                          else np.asarray(has_audio, dtype=bool).reshape(-1))
        self.label_names = [str(x) for x in label_names]
        self.backbones = dict(backbones or {})
        self.preprocessing = dict(preprocessing or {})
        self.errors = [(str(c), str(r)) for c, r in errors]
        self.attrs = dict(attrs or {})
        self.path = Path(path) if path is not None else None
        self.embeddings: dict = {}
        for name, value in (("video", video), ("audio", audio)):
            if value is not None:
                self.embeddings[name] = value
        for name, value in (embeddings or {}).items():
            if name in self.embeddings and value is not self.embeddings[name]:
                raise CacheError(f"{self._where()}: embedding {name!r} given twice")
            self.embeddings[name] = value
        self.embedding_info = dict(embedding_info or {})
        self._validate()

    def _where(self) -> str:
        return str(self.path) if self.path is not None else f"split {self.split!r}"

    def _validate(self) -> None:
        n, where = len(self.clip_ids), self._where()
        for name in list(self.embeddings):
            value = self.embeddings[name]
            if name in _RESERVED or not name or "/" in name:
                raise CacheError(f"{where}: {name!r} cannot name an embedding")
            if not isinstance(value, LazyArray):
                value = np.asarray(value)
                if value.dtype.kind not in "fiu":
                    raise CacheError(f"{where}: embedding {name!r} is not numeric ({value.dtype})")
                value = value if value.dtype in (np.float16, np.float32) else value.astype(np.float32)
                self.embeddings[name] = value
            if value.ndim < 2:
                raise CacheError(f"{where}: embedding {name!r} must be (N, ...) with a feature axis, "
                                 f"got shape {value.shape}")
        for name, arr in (("labels", self.labels), ("has_audio", self.has_audio),
                          *((f"embedding {k!r}", v) for k, v in self.embeddings.items())):
            if arr.shape[0] != n:
                raise CacheError(f"{where}: {name} has {arr.shape[0]} rows but there are {n} clip ids")
        if len(set(self.clip_ids)) != n:
            raise CacheError(f"{where}: clip ids are not unique")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
            raise CacheError(f"{where}: labels outside 0..{len(self.label_names) - 1}")
        for name, value in self.embeddings.items():
            if isinstance(value, np.ndarray) and not np.isfinite(value).all():
                bad = np.flatnonzero(~np.isfinite(value.reshape(n, -1)).all(axis=1))
                shown = ", ".join(self.clip_ids[i] for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
                raise CacheError(f"{where}: embedding {name!r} is NaN or infinite for {len(bad)} clip(s) "
                                 f"({shown}); re-extract them (e.g. in fp32)")

    # -- the version-1 view ---------------------------------------------------------------

    @property
    def video(self):
        return self._get("video")

    @property
    def audio(self):
        return self._get("audio")

    def _get(self, name: str):
        try:
            return self.embeddings[name]
        except KeyError:
            raise CacheError(f"{self._where()} has no {name!r} embedding (it has: "
                             f"{', '.join(self.embeddings) or 'none'})") from None

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def take(self, index) -> "FeatureSplit":
        """A new split with the rows ``index`` (lazy embeddings are read)."""
        index = np.asarray(index, dtype=np.int64)
        return FeatureSplit(self.split, [self.clip_ids[i] for i in index], self.labels[index],
                            has_audio=self.has_audio[index], label_names=self.label_names,
                            backbones=self.backbones, preprocessing=self.preprocessing, errors=self.errors,
                            attrs=self.attrs, embeddings={k: v[index] for k, v in self.embeddings.items()},
                            embedding_info=self.embedding_info)


def write_split(path: str | os.PathLike, features: FeatureSplit) -> Path:
    """Write ``features`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("clip_id", data=np.array(features.clip_ids, dtype=object), dtype=_STR)
            f.create_dataset("label", data=features.labels)
            f.create_dataset("has_audio", data=features.has_audio)
            info = {}
            for name, value in features.embeddings.items():
                _write_embedding(f, name, value)
                info[name] = {"shape": list(value.shape[1:]), "dtype": str(np.dtype(value.dtype)),
                              **features.embedding_info.get(name, {})}
            errors = f.create_group("errors")
            errors.create_dataset("clip_id", data=np.array([e[0] for e in features.errors], dtype=object),
                                  dtype=_STR)
            errors.create_dataset("reason", data=np.array([e[1] for e in features.errors], dtype=object),
                                  dtype=_STR)
            attrs = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **features.attrs}
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["tool_version"] = TOOL_VERSION
            f.attrs["split"] = features.split
            f.attrs["label_names"] = json.dumps(list(features.label_names))
            f.attrs["embeddings"] = json.dumps(info, sort_keys=True)
            f.attrs["backbones"] = json.dumps(features.backbones, sort_keys=True)
            f.attrs["preprocessing"] = json.dumps(features.preprocessing, sort_keys=True)
            for key, value in attrs.items():
                if key not in ("schema_version", "tool_version"):
                    f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)

    return atomic_write_with(path, write)


def _write_embedding(f: h5py.File, name: str, value) -> None:
    shape, dtype = tuple(value.shape), np.dtype(value.dtype)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    chunks = (max(1, min(shape[0], (1 << 20) // max(row_bytes, 1))), *shape[1:]) if shape[0] else None
    dset = f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
    step = max(1, (64 << 20) // max(row_bytes, 1))   # copy lazy sources 64 MB at a time
    for start in range(0, shape[0], step):
        dset[start:start + step] = np.asarray(value[start:start + step])


def read_split(path: str | os.PathLike, lazy: bool | str = "auto",
               names: list[str] | None = None) -> FeatureSplit:
    """Open one split file. Raises :class:`CacheError` naming the file. Where ``<dir>/<split>.h5``
    is absent and ``<dir>`` is a folder of stores, that folder's split is opened instead (its
    only store per role, :func:`cache.open_split`).

    ``lazy``: False reads every embedding into memory, True none (each becomes a
    :class:`LazyArray`), "auto" those above ``EAGER_MAX_BYTES``. ``names`` keeps only those
    embeddings (an absent one is an error naming what the file has).
    """
    path = Path(path)
    if file_problem(path) == "not found":
        from .stores import list_stores, open_split
        if path.suffix == ".h5" and path.parent.is_dir() and list_stores(path.parent):
            # <cache dir>/<split>.h5 names the split of a folder of stores too: its only stores.
            return _only(open_split(path.parent, path.stem, lazy=lazy), names)
        raise CacheError(f"{path}: no such cache file (run the extract command for this split first)")
    fields = read_fields(path, lazy, names)
    fields["clip_ids"] = decode_ids(fields["clip_ids"])
    return FeatureSplit(**fields)


def decode_ids(raw) -> list[str]:
    """The clip ids of a split file as read raw by :func:`read_fields` (utf-8 bytes)."""
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in raw]


def read_fields(path: Path, lazy: bool | str = "auto", names: list[str] | None = None) -> dict:
    """What :func:`read_split` makes a FeatureSplit of, with ``clip_ids`` still the file's raw
    bytes: cache/stores.py compares several stores' ids raw and builds one FeatureSplit of them
    (checked once, as one file is)."""
    problem = file_problem(path)
    if problem is not None:     # a FIFO, device or folder is refused, never opened
        raise CacheError(f"{path}: cache file {problem}")
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", -1))
            if version not in READABLE_VERSIONS:
                raise CacheError(f"{path}: cache schema version {version}, this alphafuse reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
            info = json.loads(f.attrs["embeddings"]) if "embeddings" in f.attrs else {
                k: {"shape": list(f[k].shape[1:]), "dtype": str(f[k].dtype)} for k in ("video", "audio")}
            wanted = list(info) if names is None else list(names)
            missing = [n for n in wanted if n not in info or n not in f]
            if missing:
                raise CacheError(f"{path} has no embedding {', '.join(map(repr, missing))} (it has: "
                                 f"{', '.join(info)})")
            embeddings = {}
            for name in wanted:
                dset = f[name]
                big = dset.size * dset.dtype.itemsize > EAGER_MAX_BYTES
                if lazy is True or (lazy == "auto" and big):
                    embeddings[name] = LazyArray(path, name, dset.shape, dset.dtype)
                else:
                    embeddings[name] = dset[()]
            known = {"schema_version", "split", "label_names", "backbones", "preprocessing", "embeddings"}
            return dict(
                split=str(f.attrs["split"]),
                clip_ids=f["clip_id"][()],
                labels=f["label"][()],
                has_audio=f["has_audio"][()],
                label_names=json.loads(f.attrs["label_names"]),
                backbones=json.loads(f.attrs["backbones"]),
                preprocessing=json.loads(f.attrs["preprocessing"]),
                errors=list(zip(f["errors/clip_id"].asstr()[()], f["errors/reason"].asstr()[()])),
                attrs={k: _attr(v) for k, v in f.attrs.items() if k not in known},
                path=path, embeddings=embeddings,
                embedding_info={k: {kk: vv for kk, vv in v.items() if kk not in ("shape", "dtype")}
                                for k, v in info.items() if k in wanted},
            )
    except CacheError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CacheError(f"{path}: not a readable alphafuse cache ({_one_line(exc)})") from exc


def _only(features: FeatureSplit, names) -> FeatureSplit:
    if names is None:
        return features
    missing = [n for n in names if n not in features.embeddings]
    if missing:
        raise CacheError(f"{features.path} has no embedding {', '.join(map(repr, missing))} (it has: "
                         f"{', '.join(features.embeddings)})")
    features.embeddings = {n: features.embeddings[n] for n in names}
    features.embedding_info = {n: v for n, v in features.embedding_info.items() if n in names}
    return features


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
        for name in sorted(set(first.embeddings) & set(other.embeddings)):
            got, want = tuple(other.embeddings[name].shape[1:]), tuple(first.embeddings[name].shape[1:])
            if got != want:
                raise CacheError(f"{other._where()} has {name} embeddings of shape {got} but {first._where()} "
                                 f"has {want}; use caches extracted with the same backbones")
        for what in ("backbones", "preprocessing", "label_names"):
            a, b = getattr(first, what), getattr(other, what)
            if a != b:
                raise CacheError(
                    f"{other._where()} and {first._where()} differ in {what}: "
                    f"{first_difference(a, b)}. Re-extract them with the same settings."
                )
    ids = {}
    for s in splits:
        if s.split in ids and ids[s.split] is not s:
            raise CacheError(f"{s._where()} and {ids[s.split]._where()} are both split {s.split!r}: a split "
                             f"file was copied or renamed; point to the right files")
        ids[s.split] = s
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            shared = set(a.clip_ids) & set(b.clip_ids)
            if shared:
                raise CacheError(f"{a._where()} ({a.split}) and {b._where()} ({b.split}) share {len(shared)} "
                                 f"clip(s) (e.g. {sorted(shared)[0]}): a clip in two splits leaks "
                                 f"training data into evaluation")


def first_difference(old, new, template: str = "{path}: {new} vs {old}", prefix: str = "") -> str:
    """The first place where two JSON-like values differ (dict keys in order, list items in
    order), written with ``template`` from ``path``, ``old`` and ``new``: ``audio.seed: 7 vs
    None``, or with ``"{path} was {old}, now {new}"``, ``configs.[0].epochs was 1, now 3``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), template, f"{prefix}{key}.")
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return template.format(path=prefix.rstrip(".") or "value", old=f"{len(old)} entries",
                                   new=f"{len(new)} entries")
        for i, (x, y) in enumerate(zip(old, new)):
            if x != y:
                return first_difference(x, y, template, f"{prefix}[{i}].")
    return template.format(path=prefix.rstrip(".") or "value", old=repr(old), new=repr(new))
