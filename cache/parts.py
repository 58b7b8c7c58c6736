"""Crash-safe, resumable, shardable writing of one split: parts first, then one merged file.

While a split is being extracted its results live in ``<cache dir>/<split>.parts/``:

    meta.json                 what the parts are made with: backbones, preprocessing, embeddings,
                              precision (the run's *signature*), plus label names and sources
    order.json, labels.json   the split's clips in manifest order and their labels, as the latest
                              run read the manifest: the merged file holds exactly these
    part-<shard>-<n>.h5       one batch each, written whole and renamed into place; each carries
                              the signature's hash and, per clip, the source file's stamp
    done-<shard>-of-<n>.json  written when a shard has finished all of its clips
    shard-<k>-of-<n>.lock     held by the run extracting that shard (a second run is refused)

What can go wrong, and what happens:

* A kill at any moment (SIGKILL included) leaves only whole parts; a rerun skips their clips.
* A manifest edit: the merged file follows the manifest of the latest run (removed rows are
  dropped, changed labels are taken from the manifest, a clip moved to another split leaves
  this one). A clip whose file changed (size or modification time, or a missing file that has
  appeared) is extracted again; the newest part wins.
* Two runs of one shard: the second is refused while the first holds the shard's lock.
* Parts made with another signature (other backbones, seed, preprocessing or precision: the
  cross-machine ``--shard`` workflow with a mistake on one machine) are refused by name, at
  resume and at merge. A merge needs every shard's done marker and every clip of the order.
* A damaged part file (disk trouble, a hand edit) is moved aside as ``*.damaged`` with a warning
  naming it, and its clips are extracted again.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from alphafuse.data.atomic import atomic_write_text, atomic_write_with, describe_os_error
from alphafuse.data.files import read_regular_text

from .store import CacheError, FeatureSplit, read_split, write_split

log = logging.getLogger(__name__)
_STR = h5py.string_dtype("utf-8")
# Split names become file names (<split>.h5): letters, digits, '_', '-', '.', no leading dot.
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
# The signature keys that decide whether two runs' embeddings can live in one file.
SIGNATURE_KEYS = ("split", "backbones", "preprocessing", "embeddings", "extraction")
MISSING = "missing"


def check_split_name(split: str) -> str:
    if not isinstance(split, str) or not _SPLIT_NAME.match(split) or len(split) > 100:
        raise CacheError(f"split name {split!r} cannot name a cache file: use letters, digits, '_', '-' "
                         f"and '.' (not first)")
    return split


def split_path(cache_dir, split: str) -> Path:
    return Path(cache_dir) / f"{check_split_name(split)}.h5"


def parts_dir(cache_dir, split: str) -> Path:
    return Path(cache_dir) / f"{check_split_name(split)}.parts"


def source_stamp(path) -> str:
    """What identifies a clip's file for resuming: name, size and modification time (not the
    folder: a dataset moved with its times kept is not re-extracted), or ``missing``."""
    try:
        st = os.stat(path)
    except OSError:
        return MISSING
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}"


def signature_hash(meta: dict) -> str:
    core = {k: meta.get(k) for k in SIGNATURE_KEYS}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


class SplitWriter:
    """Writes one shard's batches of one split, resuming whatever an earlier run left.

    ``meta``: the run's signature (see SIGNATURE_KEYS) plus ``label_names`` and ``sources``.
    ``clips``: [(clip_id, label index, source stamp)] of the whole split in manifest order.
    Resuming parts made with another signature is refused unless ``overwrite``.
    """

    def __init__(self, cache_dir, split: str, meta: dict, clips, shard: tuple[int, int] = (0, 1),
                 overwrite=False):
        self.cache_dir, self.split, self.meta = Path(cache_dir), check_split_name(split), meta
        self.shard_index, self.num_shards = shard
        self.signature = signature_hash(meta)
        if overwrite and self.num_shards > 1:
            raise CacheError(f"starting again cannot be combined with sharding (each shard would wipe the "
                             f"others' work): delete {split_path(cache_dir, split)} and "
                             f"{parts_dir(cache_dir, split)} first")
        self.final_path = split_path(cache_dir, split)
        self.dir = parts_dir(cache_dir, split)
        self.clips = [(str(c), int(label), str(stamp)) for c, label, stamp in clips]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create {self.dir}: {describe_os_error(exc)}") from exc
        self._shard_lock = _try_lock(self.dir / f"shard-{self.shard_index:04d}-of-{self.num_shards:04d}.lock",
                                     f"another extraction of split {split!r} (shard {self.shard_index}/"
                                     f"{self.num_shards}) is running on {self.dir}; wait for it to finish")
        try:
            with _lock(self.dir):  # shards start together: one at a time adopts or creates the folder
                self._adopt_or_refuse(overwrite)
                atomic_write_text(self.dir / "order.json", json.dumps([c for c, _, _ in self.clips]))
                atomic_write_text(self.dir / "labels.json", json.dumps({c: label for c, label, _ in self.clips}))
        except BaseException:
            self.close()
            raise
        for stale in self.dir.glob(f"part-{self.shard_index:04d}-*.tmp"):
            stale.unlink()  # a write that was interrupted before its rename
        # This shard is running again (with perhaps another manifest): it is not done until it says so.
        (self.dir / f"done-{self.shard_index:04d}-of-{self.num_shards:04d}.json").unlink(missing_ok=True)
        self._next = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in self._own_parts()), default=-1)

    def close(self) -> None:
        """Release this shard's lock (also released by the kernel if the process dies)."""
        if self._shard_lock is not None:
            self._shard_lock.close()
            self._shard_lock = None

    def _adopt_or_refuse(self, overwrite: bool) -> None:
        meta_path = self.dir / "meta.json"
        if overwrite:
            for p in self.dir.iterdir():
                if p.suffix != ".lock":
                    p.unlink()
            self.final_path.unlink(missing_ok=True)
        elif meta_path.exists():
            self._refuse_if_different(_read_json(meta_path))
        elif self.final_path.exists():
            # A finished file is the starting point of this run: the clips in it are kept.
            final = read_split(self.final_path, lazy=False)
            self._refuse_if_different(signature_of(final))
            stamps = final.attrs.get("source_stamps") or {}
            atomic_write_with(self.dir / "part-final-000000.h5", lambda tmp: _write_part(
                tmp, self.signature, final.clip_ids, final.labels, final.embeddings, final.has_audio,
                [stamps.get(c, "") for c in final.clip_ids], final.errors,
                [stamps.get(c, "") for c, _ in final.errors]))
        # Label names follow the manifest of the latest run: labels do not change embeddings.
        atomic_write_text(meta_path, json.dumps(self.meta, indent=1, sort_keys=True))

    def _refuse_if_different(self, existing: dict) -> None:
        if signature_hash(existing) != self.signature:
            raise CacheError(_mismatch_message(self.final_path, existing, self.meta), hint="overwrite")

    def _own_parts(self):
        return sorted(self.dir.glob(f"part-{self.shard_index:04d}-*.h5"))

    def done_ids(self) -> set[str]:
        """Clips already written (features or an error) whose source file has not changed since."""
        stamps = {c: stamp for c, _, stamp in self.clips}
        done = set()
        for clip_id, stamp in _written(self.dir).items():
            # "" is a clip adopted from a cache written before stamps were recorded: kept.
            if stamp == "" or stamps.get(clip_id) == stamp:
                done.add(clip_id)
        return done

    def write_batch(self, clip_ids, labels, embeddings: dict, has_audio, errors=(), stamps=None,
                    error_stamps=None) -> Path:
        """One batch: ``embeddings`` maps names to (B, ...) arrays; ``errors`` [(clip_id, reason)]."""
        stamp_of = {c: s for c, _, s in self.clips}
        stamps = stamps if stamps is not None else [stamp_of.get(c, "") for c in clip_ids]
        error_stamps = error_stamps if error_stamps is not None else [stamp_of.get(c, "") for c, _ in errors]
        path = self.dir / f"part-{self.shard_index:04d}-{self._next:06d}.h5"
        atomic_write_with(path, lambda tmp: _write_part(tmp, self.signature, clip_ids, labels, embeddings,
                                                         has_audio, stamps, errors, error_stamps))
        self._next += 1
        return path

    def finish(self) -> Path | None:
        """Mark this shard done; the last shard to finish merges. Returns the split file if merged."""
        marker = self.dir / f"done-{self.shard_index:04d}-of-{self.num_shards:04d}.json"
        atomic_write_text(marker, json.dumps({"shard": self.shard_index, "signature": self.signature}))
        self.close()
        with _lock(self.dir):
            markers = list(self.dir.glob(f"done-*-of-{self.num_shards:04d}.json"))
            if len(markers) < self.num_shards:
                return None  # other shards still running
            written = _written(self.dir)
            if any(c not in written for c, _, _ in self.clips):
                log.info("%s: other shards still have clips of this manifest to extract", self.dir)
                return None
            return merge_parts(self.cache_dir, self.split, locked=True)


def merge_parts(cache_dir, split: str, locked=False) -> Path:
    """Merge ``<split>.parts/`` into ``<split>.h5``, in the order and with the labels of the manifest
    the latest run read. Refuses missing shards, missing clips and parts of another signature."""
    directory = parts_dir(cache_dir, split)
    if not (directory / "meta.json").exists():
        raise CacheError(f"{directory}: no extraction parts to merge")
    with (_nolock() if locked else _lock(directory)):
        meta = _read_json(directory / "meta.json")
        _check_shards_done(directory)
        order = _read_json(directory / "order.json")
        labels = _read_json(directory / "labels.json")
        features = _read_parts(directory, meta, order, labels)
        _check_free_space(directory, features)
        path = write_split(split_path(cache_dir, split), features)
        shutil.rmtree(directory)
    log.info("merged %d clips (%d errors) into %s", len(features), len(features.errors), path)
    return path


def _check_shards_done(directory: Path) -> None:
    markers = sorted(directory.glob("done-*-of-*.json"))
    if not markers:
        raise CacheError(f"{directory}: no shard has finished yet; run the extraction (every shard) to the "
                         f"end first")
    counts = {int(m.stem.rsplit("-", 1)[1]) for m in markers}
    if len(counts) != 1:
        raise CacheError(f"{directory}: shards of different splittings ({', '.join(f'N={n}' for n in sorted(counts))}) "
                         f"finished here; extract again with one number of shards", hint="shard")
    n = counts.pop()
    done = {int(m.stem.split("-")[1]) for m in markers}
    missing = sorted(set(range(n)) - done)
    if missing:
        raise CacheError(f"{directory}: shard(s) {', '.join(f'{k}/{n}' for k in missing)} have not finished; "
                         f"run them (or copy their {directory.name} folder here) before merging")


def _read_parts(directory: Path, meta: dict, order: list[str], labels: dict) -> FeatureSplit:
    expected = signature_hash(meta)
    rows: dict[str, tuple] = {}       # clip -> (part path, row index) of its newest features
    errors: dict[str, str] = {}
    arrays: dict[Path, dict] = {}
    for part in _parts(directory):
        try:
            with h5py.File(part, "r") as f:
                got = f.attrs.get("signature", "")
                if got != expected:
                    raise CacheError(f"{part}: made by a run with other settings (signature {got or 'none'}, "
                                     f"expected {expected}: other backbones, seed, preprocessing or precision); "
                                     f"remove it and extract its clips again")
                ids = list(f["clip_id"].asstr()[()])
                arrays[part] = {name: f[name][()] for name in meta["embeddings"]}
                has_audio = f["has_audio"][()]
                for i, c in enumerate(ids):
                    rows[c] = (part, i, bool(has_audio[i]))
                    errors.pop(c, None)
                for c, reason in zip(f["errors/clip_id"].asstr()[()], f["errors/reason"].asstr()[()]):
                    errors[c] = reason
                    rows.pop(c, None)
        except (OSError, KeyError) as exc:
            raise CacheError(f"{part}: damaged part file ({' '.join(str(exc).split())}); remove it and "
                             f"run the extraction again") from exc
    missing = [c for c in order if c not in rows and c not in errors]
    if missing:
        raise CacheError(f"{directory}: {len(missing)} clip(s) of the manifest were never extracted "
                         f"(e.g. {missing[0]}); run the extraction again to finish them")
    kept = [c for c in order if c in rows]
    label_index = np.array([labels[c] for c in kept], dtype=np.int64)
    embeddings = {}
    for name, info in meta["embeddings"].items():
        dtype = np.dtype(info["dtype"])
        out = np.empty((len(kept), *info["shape"]), dtype=dtype)
        for j, c in enumerate(kept):
            part, i, _ = rows[c]
            out[j] = arrays[part][name][i]
        embeddings[name] = out
    stamps = _written(directory)
    return FeatureSplit(
        split=meta["split"], clip_ids=kept, labels=label_index,
        has_audio=np.array([rows[c][2] for c in kept], dtype=bool),
        label_names=meta["label_names"], backbones=meta["backbones"], preprocessing=meta["preprocessing"],
        errors=[(c, errors[c]) for c in order if c in errors],
        attrs={"sources": meta.get("sources", {}), "extraction": meta.get("extraction", {}),
               "source_stamps": {c: stamps.get(c, "") for c in order}},
        embeddings=embeddings,
        embedding_info={k: {kk: vv for kk, vv in v.items() if kk not in ("shape", "dtype")}
                        for k, v in meta["embeddings"].items()})


def _parts(directory: Path) -> list[Path]:
    # Adopted finished file first, then by shard and batch number: later parts win for a clip.
    return sorted(directory.glob("part-*.h5"), key=lambda p: (not p.name.startswith("part-final"), p.name))


def _written(directory: Path) -> dict[str, str]:
    """clip_id -> source stamp of its newest record (features or error) in the parts folder.

    A part that cannot be read is moved aside as ``*.damaged`` (with a warning naming it), so
    its clips count as not done and are extracted again.
    """
    stamps: dict[str, str] = {}
    for part in _parts(directory):
        try:
            with h5py.File(part, "r") as f:
                for key in ("", "errors/"):
                    ids = f[f"{key}clip_id"].asstr()[()]
                    got = f[f"{key}source"].asstr()[()] if f"{key}source" in f else [""] * len(ids)
                    stamps.update(zip(ids, got))
        except (OSError, KeyError):
            damaged = part.with_name(part.name + ".damaged")
            os.replace(part, damaged)
            log.warning("%s cannot be read; moved aside as %s and its clips will be extracted again",
                        part, damaged.name)
    return stamps


def signature_of(features: FeatureSplit) -> dict:
    """What a finished split was made with, in the form of a parts folder's meta.json."""
    info = {name: {"shape": list(v.shape[1:]), "dtype": str(np.dtype(v.dtype)), **features.embedding_info.get(name, {})}
            for name, v in features.embeddings.items()}
    return {"split": features.split, "label_names": features.label_names, "backbones": features.backbones,
            "preprocessing": features.preprocessing, "embeddings": info,
            "extraction": features.attrs.get("extraction", {}), "sources": features.attrs.get("sources", {})}


def _write_part(path, signature, clip_ids, labels, embeddings, has_audio, stamps, errors, error_stamps) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["signature"] = signature
        f.create_dataset("clip_id", data=np.array(list(clip_ids), dtype=object), dtype=_STR)
        f.create_dataset("label", data=np.asarray(labels, dtype=np.int64).reshape(-1))
        f.create_dataset("has_audio", data=np.asarray(has_audio, dtype=bool).reshape(-1))
        f.create_dataset("source", data=np.array(list(stamps), dtype=object), dtype=_STR)
        for name, value in embeddings.items():
            f.create_dataset(name, data=np.asarray(value))
        f.create_dataset("errors/clip_id", data=np.array([e[0] for e in errors], dtype=object), dtype=_STR)
        f.create_dataset("errors/reason", data=np.array([e[1] for e in errors], dtype=object), dtype=_STR)
        f.create_dataset("errors/source", data=np.array(list(error_stamps), dtype=object), dtype=_STR)


def _check_free_space(directory: Path, features: FeatureSplit) -> None:
    need = sum(np.asarray(v).nbytes for v in features.embeddings.values()) + 64 * len(features) + (1 << 20)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise CacheError(f"{directory.parent}: {free / 2**20:.0f} MiB free, merging {directory.name} needs about "
                         f"{need / 2**20:.0f} MiB; free some space and run the merge again (the parts are kept)")


def _read_json(path: Path):
    try:   # a FIFO or device under this name is refused (InputFileError is a ValueError), never read
        return json.loads(read_regular_text(path, "cache part metadata"))
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: unreadable ({' '.join(str(exc).split())}); remove the folder "
                         f"{path.parent} to start this split again") from exc


def _mismatch_message(path: Path, existing: dict, wanted: dict) -> str:
    for key in ("backbones", "preprocessing", "embeddings", "extraction", "split"):
        if existing.get(key) != wanted.get(key):
            return (f"{path}: the partial or finished cache was made with other {key} than this run; "
                    f"start again (overwrite), or use another cache folder")
    return f"{path}: the cache was made with other settings; start again (overwrite) or use another cache folder"


@contextmanager
def _lock(directory: Path):
    """An advisory lock on the parts folder; the kernel releases it if the holder is killed."""
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(path: Path, busy_message: str):
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CacheError(busy_message) from None
    return handle


@contextmanager
def _nolock():
    yield
