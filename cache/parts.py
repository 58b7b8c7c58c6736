"""Crash-safe, resumable, shardable writing of one split: parts first, then one merged file.

While a split is being extracted its results live in ``<cache dir>/<split>.parts/``:

    meta.json                 what the parts were made with (backbones, preprocessing, labels)
    order.json                the split's clips in manifest order, the order of the merged file
    part-<shard>-<n>.h5       one batch each, written to a temporary name and renamed into place
    done-<shard>.json         written when a shard has finished all of its clips

Renames are atomic, so a kill at any moment (SIGKILL included) leaves only whole parts; a rerun
skips their clips. When every shard is done, the parts are merged, in manifest order, into
``<split>.h5`` (itself written atomically by :func:`cache.store.write_split`) and removed.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .store import CacheError, FeatureSplit, read_split, write_split

log = logging.getLogger(__name__)
_STR = h5py.string_dtype("utf-8")


def split_path(cache_dir, split: str) -> Path:
    return Path(cache_dir) / f"{split}.h5"


def parts_dir(cache_dir, split: str) -> Path:
    return Path(cache_dir) / f"{split}.parts"


def _fsync_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SplitWriter:
    """Writes one shard's batches of one split, resuming whatever an earlier run left.

    ``meta`` is the signature of the extraction (split, label names, backbones, preprocessing);
    resuming parts made with another signature is refused unless ``overwrite``.
    """

    def __init__(self, cache_dir, split: str, meta: dict, order: list[str],
                 shard: tuple[int, int] = (0, 1), overwrite=False):
        self.cache_dir, self.split, self.meta = Path(cache_dir), split, meta
        self.shard_index, self.num_shards = shard
        if overwrite and self.num_shards > 1:
            raise CacheError(f"--overwrite cannot be combined with sharding (each shard would wipe the others' "
                             f"work): delete {split_path(cache_dir, split)} and {parts_dir(cache_dir, split)} first")
        self.final_path = split_path(cache_dir, split)
        self.dir = parts_dir(cache_dir, split)
        self.dir.mkdir(parents=True, exist_ok=True)
        with _lock(self.dir):  # shards start together: one at a time adopts or creates the folder
            self._adopt_or_refuse(overwrite)
            _fsync_write(self.dir / "order.json", lambda p: p.write_text(json.dumps(order)))
        for stale in self.dir.glob(f"part-{self.shard_index:04d}-*.tmp"):
            stale.unlink()  # a write that was interrupted before its rename
        self._next = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in self._own_parts()), default=-1)

    def _adopt_or_refuse(self, overwrite: bool) -> None:
        meta_path = self.dir / "meta.json"
        if overwrite:
            for p in self.dir.iterdir():
                if p.name != ".lock":
                    p.unlink()
            self.final_path.unlink(missing_ok=True)
        elif meta_path.exists():
            self._refuse_if_different(json.loads(meta_path.read_text()))
        elif self.final_path.exists():
            # A finished file is the starting point of this run: the clips in it are kept.
            final = read_split(self.final_path)
            self._refuse_if_different(signature(final))
            _fsync_write(self.dir / "part-final-000000.h5", lambda tmp: _write_part(
                tmp, final.clip_ids, final.labels, final.video, final.audio, final.has_audio, final.errors))
        if not meta_path.exists():
            _fsync_write(meta_path, lambda p: p.write_text(json.dumps(self.meta, indent=1, sort_keys=True)))

    def _refuse_if_different(self, existing: dict) -> None:
        if _comparable(existing) != _comparable(self.meta):
            raise CacheError(_mismatch_message(self.final_path, existing, self.meta))

    def _own_parts(self):
        return sorted(self.dir.glob(f"part-{self.shard_index:04d}-*.h5"))

    def done_ids(self) -> set[str]:
        """Clip ids any shard has already written (features or an error)."""
        done = set()
        for part in sorted(self.dir.glob("part-*.h5")):
            with h5py.File(part, "r") as f:
                done.update(f["clip_id"].asstr()[()])
                done.update(f["errors/clip_id"].asstr()[()])
        return done

    def write_batch(self, clip_ids, labels, video, audio, has_audio, errors=()) -> Path:
        path = self.dir / f"part-{self.shard_index:04d}-{self._next:06d}.h5"
        _fsync_write(path, lambda tmp: _write_part(tmp, clip_ids, labels, video, audio, has_audio, errors))
        self._next += 1
        return path

    def finish(self) -> Path | None:
        """Mark this shard done; the last shard to finish merges. Returns the split file if merged."""
        marker = self.dir / f"done-{self.shard_index:04d}-of-{self.num_shards:04d}.json"
        _fsync_write(marker, lambda p: p.write_text(json.dumps({"shard": self.shard_index})))
        if not self.dir.exists():
            return None
        with _lock(self.dir):
            markers = list(self.dir.glob(f"done-*-of-{self.num_shards:04d}.json"))
            if len(markers) < self.num_shards:
                return None  # other shards still running (or one of them already merged)
            return merge_parts(self.cache_dir, self.split, locked=True)


def merge_parts(cache_dir, split: str, order: list[str] | None = None, locked=False) -> Path:
    """Merge ``<split>.parts/`` into ``<split>.h5`` (clip order: ``order`` if given, else as written)."""
    directory = parts_dir(cache_dir, split)
    if not (directory / "meta.json").exists():
        raise CacheError(f"{directory}: no extraction parts to merge")
    with (_nolock() if locked else _lock(directory)):
        meta = json.loads((directory / "meta.json").read_text())
        features = _read_parts(directory, meta)
        if order is None and (directory / "order.json").exists():
            order = json.loads((directory / "order.json").read_text())
        if order:
            rank = {c: i for i, c in enumerate(order)}
            idx = sorted(range(len(features.clip_ids)), key=lambda i: rank.get(features.clip_ids[i], len(rank)))
            features = _take(features, idx)
            features.errors.sort(key=lambda e: rank.get(e[0], len(rank)))
        path = write_split(split_path(cache_dir, split), features)
        shutil.rmtree(directory)
    log.info("merged %d clips (%d errors) into %s", len(features), len(features.errors), path)
    return path


def _comparable(meta: dict) -> dict:
    # Where the checkpoints were read from is recorded, not compared: their sha256 is in backbones.
    return {k: v for k, v in meta.items() if k != "sources"}


def _read_parts(directory: Path, meta: dict) -> FeatureSplit:
    ids, labels, video, audio, has_audio, errors, seen = [], [], [], [], [], [], set()
    for part in sorted(directory.glob("part-*.h5")):
        with h5py.File(part, "r") as f:
            part_ids = list(f["clip_id"].asstr()[()])
            keep = [i for i, c in enumerate(part_ids) if c not in seen]  # a clip once, even if re-run
            seen.update(part_ids)
            ids += [part_ids[i] for i in keep]
            labels.append(f["label"][()][keep])
            video.append(f["video"][()][keep])
            audio.append(f["audio"][()][keep])
            has_audio.append(f["has_audio"][()][keep])
            for cid, reason in zip(f["errors/clip_id"].asstr()[()], f["errors/reason"].asstr()[()]):
                if cid not in seen:
                    seen.add(cid)
                    errors.append((cid, reason))
    dims = meta["dims"]
    return FeatureSplit(
        split=meta["split"], clip_ids=ids,
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        video=np.concatenate(video) if video else np.zeros((0, dims["video"]), np.float32),
        audio=np.concatenate(audio) if audio else np.zeros((0, dims["audio"]), np.float32),
        has_audio=np.concatenate(has_audio) if has_audio else np.zeros(0, bool),
        label_names=meta["label_names"], backbones=meta["backbones"], preprocessing=meta["preprocessing"],
        errors=errors, attrs={"sources": meta.get("sources", {})},
    )


def _take(f: FeatureSplit, idx) -> FeatureSplit:
    return FeatureSplit(split=f.split, clip_ids=[f.clip_ids[i] for i in idx], labels=f.labels[idx],
                        video=f.video[idx], audio=f.audio[idx], has_audio=f.has_audio[idx],
                        label_names=f.label_names, backbones=f.backbones, preprocessing=f.preprocessing,
                        errors=list(f.errors), attrs=f.attrs)


def _write_part(path, clip_ids, labels, video, audio, has_audio, errors) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("clip_id", data=np.array(list(clip_ids), dtype=object), dtype=_STR)
        f.create_dataset("label", data=np.asarray(labels, dtype=np.int64).reshape(-1))
        f.create_dataset("video", data=np.asarray(video, dtype=np.float32))
        f.create_dataset("audio", data=np.asarray(audio, dtype=np.float32))
        f.create_dataset("has_audio", data=np.asarray(has_audio, dtype=bool).reshape(-1))
        f.create_dataset("errors/clip_id", data=np.array([e[0] for e in errors], dtype=object), dtype=_STR)
        f.create_dataset("errors/reason", data=np.array([e[1] for e in errors], dtype=object), dtype=_STR)


def signature(features: FeatureSplit) -> dict:
    """What a finished split was made with, in the form of a parts folder's meta.json."""
    return {"split": features.split, "label_names": features.label_names, "backbones": features.backbones,
            "preprocessing": features.preprocessing,
            "dims": {"video": int(features.video.shape[1]), "audio": int(features.audio.shape[1])}}


def _mismatch_message(path: Path, existing: dict, wanted: dict) -> str:
    for key in ("backbones", "preprocessing", "label_names", "dims", "split"):
        if existing.get(key) != wanted.get(key):
            return (f"{path}: the partial or finished cache was made with other {key} than this run; "
                    f"use --overwrite to start again, or another --cache-dir")
    return f"{path}: the cache was made with other settings; use --overwrite or another --cache-dir"


@contextmanager
def _lock(directory: Path):
    """An advisory lock on the parts folder; the kernel releases it if the holder is killed."""
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _nolock():
    yield
