"""Which cache a run or grid was trained on: an identity recorded at training, checked at evaluation.

A relative ``--cache-dir`` names a different cache from another working directory, and a cache
folder can be re-extracted in place; a run that only kept a path would be scored on whatever is
there now. So a run records, per split, the absolute file and digests of what makes the split
what it is, and every later reader compares them. The digests are of the clip ids and labels and
of the settings the cache records (backbones with their seeds and fingerprints, preprocessing,
extraction, class names, embedding shapes), not of the embeddings themselves: those follow from
the rest, and hashing gigabytes at every ``evaluate`` would cost more than the check is worth;
``values`` digests a sample of them (up to 64 rows per embedding, as float32), which tells a
re-extraction with other weights or inputs apart.

Everything that records or checks an identity goes through :func:`cache_identity` and
:func:`check_identity`, so a change in how caches are addressed changes these two functions only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from alphafuse.cache import CacheError, FeatureSplit

# The parts of a split's identity, each digested on its own so that a refusal can name the part.
PARTS = ("clips", "labels", "backbones", "preprocessing", "extraction", "label_names", "embeddings", "values")
SAMPLED_ROWS = 64


def split_identity(split: FeatureSplit) -> dict:
    """``{"file": absolute path or None, "clips": N, <part>: sha256[:16], ...}`` for one split."""
    embeddings = {name: list(np.shape(value)[1:]) for name, value in sorted(split.embeddings.items())}
    values = {"clips": [str(c) for c in split.clip_ids], "labels": np.asarray(split.labels).tolist(),
              "backbones": split.backbones, "preprocessing": split.preprocessing,
              "extraction": split.attrs.get("extraction", {}), "label_names": list(split.label_names),
              "embeddings": embeddings}
    digests = {part: hashlib.sha256(json.dumps(values[part], sort_keys=True, default=str).encode()).hexdigest()[:16]
               for part in PARTS if part != "values"}
    digests["values"] = _sampled_values(split)
    path = str(Path(split.path).resolve()) if split.path is not None else None
    return {"file": path, "num_clips": len(split), **digests}


def _sampled_values(split: FeatureSplit) -> str:
    """sha256 of up to SAMPLED_ROWS evenly spaced rows of every embedding, as float32 (the cache's
    float64 input is stored as float32, float16 widens exactly), read row by row (lazy arrays)."""
    digest = hashlib.sha256()
    rows = np.unique(np.linspace(0, len(split) - 1, min(len(split), SAMPLED_ROWS)).astype(int)) if len(split) else []
    for name in sorted(split.embeddings):
        array = split.embeddings[name]
        for i in rows:
            digest.update(np.ascontiguousarray(np.asarray(array[int(i)], dtype=np.float32)).tobytes())
    return digest.hexdigest()[:16]


def cache_identity(splits: dict[str, FeatureSplit | None]) -> dict:
    """What a run or grid records of the cache it was trained on: ``{"cache_dir": absolute folder
    of the train split (None for splits built in memory), "splits": {name: split_identity}}``."""
    present = {name: split for name, split in splits.items() if split is not None}
    train = present.get("train")
    folder = str(Path(train.path).resolve().parent) if train is not None and train.path is not None else None
    return {"cache_dir": folder, "splits": {name: split_identity(split) for name, split in present.items()}}


def differing_parts(recorded: dict, current: dict) -> list[str]:
    """The parts of two split identities that differ (the number of clips first)."""
    parts = [p for p in ("num_clips", *PARTS) if recorded.get(p) != current.get(p)]
    return parts


def check_identity(recorded: dict | None, name: str, split: FeatureSplit, whose: str) -> None:
    """Refuse ``split`` as the ``name`` split of the recorded identity when its contents differ.

    A split the record does not hold (another split of the same cache) passes: whether it fits the
    head is check_compatible's business.
    """
    want = ((recorded or {}).get("splits") or {}).get(name)
    if not want:
        return
    parts = differing_parts(want, split_identity(split))
    if parts:
        where = split.path if split.path is not None else repr(split.split)
        raise CacheError(f"{where} is not the {name} split {whose} was trained with (recorded: {want.get('file')}; "
                         f"they differ in {', '.join(parts)}); give the cache it was trained on (--cache-dir)")


def recorded_cache_dir(meta: dict, run_dir) -> Path:
    """The absolute cache folder a run recorded, or a one-line refusal: a run whose record is a
    relative path (written before runs recorded identities) or names a folder that is gone."""
    identity = meta.get("cache") or {}
    folder = identity.get("cache_dir")
    if folder is None:   # runs written before identities: the train file's path as it was given
        train = (meta.get("cache_paths") or {}).get("train")
        if not train:
            raise ValueError(f"{run_dir} does not record its cache: give the cache folder (--cache-dir)")
        if not Path(train).is_absolute():
            raise ValueError(f"{run_dir} records its cache as the relative path {train}, which may name another "
                             f"cache from here: give the cache folder (--cache-dir)")
        folder = str(Path(train).parent)
    if not Path(folder).is_dir():
        raise ValueError(f"{run_dir} was trained on the cache {folder}, which is not there now: give the cache "
                         f"folder (--cache-dir)")
    return Path(folder)
