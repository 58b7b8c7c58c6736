"""One store per encoder: ``<cache dir>/<store id>/<split>.h5``, combined into one split on reading.

A store holds what one backbone, in one role, made of a split: ``clip_id``, ``label``,
``has_audio``, ``errors`` and that backbone's embeddings only (``video``, ``audio``, ``joint``,
``logits``, ``video_tokens``, ...), in the file format of cache/store.py, so plain h5py reads it.
Its folder is named ``<backbone>-<8 hex>``: the hex is a hash of the store's identity (the
backbone's description: registry name, options, config, checkpoint fingerprint; the role it
encodes, e.g. CAV-MAE as the audio encoder vs as the audio-visual one; the preprocessing of the
inputs it reads; precision and extras). ``store.json`` beside the split files holds that
identity readably. Everything of cache/parts.py (parts, locks, resume, shards, merge) applies to
each store folder as to a cache folder.

Reading: :func:`open_split` picks one store per role (the only one, or the one named) and
returns one :class:`FeatureSplit` with the embeddings of all of them, as a schema-2 file held
them, after checking that the stores agree on clips, labels and ``has_audio``. A folder of
schema 2 (``<cache dir>/<split>.h5``, both encoders in one file) is read as before.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from alphafuse.data.atomic import atomic_write_text, describe_os_error

from .store import CacheError, FeatureSplit, decode_ids, read_fields, read_split

STORE_FILE = "store.json"
ROLES = ("video", "audio", "audiovisual")
# How each role is chosen on the command line (settings.py's names).
ROLE_FLAGS = {"video": "--video-backbone", "audio": "--audio-backbone", "audiovisual": "--backbone"}
ROLE_SETTINGS = {"video": "video_backbone", "audio": "audio_backbone", "audiovisual": "backbone"}
IDENTITY_KEYS = ("backbones", "preprocessing", "extraction")


def store_identity(meta: dict) -> dict:
    """What makes a store's embeddings what they are, from a one-backbone signature (see
    extract/runner.py ``cache_signature``): its backbone in its role, the inputs' preprocessing,
    precision and extras. The split, the labels and the checkpoint's path are not part of it."""
    if len(meta["backbones"]) != 1:
        raise ValueError(f"a store holds one backbone, got {', '.join(meta['backbones'])}")
    return {key: meta[key] for key in IDENTITY_KEYS}


def store_id(identity: dict) -> str:
    """``<backbone name>-<first 8 hex digits of the identity's sha256>``."""
    (role, description), = identity["backbones"].items()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return f"{description.get('name') or description.get('config', {}).get('model')}-{digest}"


def ensure_store(cache_dir, identity: dict) -> Path:
    """The store folder of ``identity`` in ``cache_dir``, created with its store.json if new."""
    sid = store_id(identity)
    folder = Path(cache_dir) / sid
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create {folder}: {describe_os_error(exc)}") from exc
    if not (folder / STORE_FILE).exists():
        (role, description), = identity["backbones"].items()
        atomic_write_text(folder / STORE_FILE, json.dumps(
            {"id": sid, "role": role, "backbone": description.get("name"), **identity}, indent=1, sort_keys=True))
    return folder


@dataclass(frozen=True)
class Store:
    """One store folder: its id, role, backbone name, and identity (store.json)."""
    id: str
    path: Path
    role: str
    backbone: str
    identity: dict

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.h5"

    def splits(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.h5"))

    def matches(self, name: str) -> bool:
        """A backbone name, a store id, or (4 characters or more) the start of an id or of its hex."""
        if name in (self.backbone, self.id):
            return True
        hexpart = self.id.rsplit("-", 1)[-1]
        return len(name) >= 4 and (self.id.startswith(name) or hexpart.startswith(name))


def list_stores(cache_dir) -> list[Store]:
    """Every store folder of ``cache_dir`` (a folder with a store.json), by id."""
    out = []
    for meta_path in sorted(Path(cache_dir).glob(f"*/{STORE_FILE}")):
        try:
            meta = json.loads(meta_path.read_text())
            out.append(Store(meta["id"], meta_path.parent, meta["role"], meta["backbone"],
                             {k: meta[k] for k in IDENTITY_KEYS}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"{meta_path}: not a readable store description ({' '.join(str(exc).split())})") from exc
    return out


def _shown(stores: list[Store]) -> str:
    names = [s.backbone for s in stores]
    # Two stores of one backbone (two checkpoints) are told apart by their ids.
    return ", ".join(s.id if names.count(s.backbone) > 1 else s.backbone for s in stores)


def _role_words(role: str) -> str:
    return "audio-visual" if role == "audiovisual" else role


def select_stores(cache_dir, video: str | None = None, audio: str | None = None,
                  backbone: str | None = None, stores: list[Store] | None = None) -> dict[str, Store]:
    """{role: store} for the names given, and the only candidate of each role not named.

    Two candidates for a role and no name, a name that matches none or two, are one-line
    CacheErrors naming the candidates and the setting that chooses.
    """
    stores = list_stores(cache_dir) if stores is None else stores
    # A store with no finished split (an extraction still running, or refused at its start) is
    # no candidate yet.
    stores = [s for s in stores if s.splits()]
    where = f"{cache_dir}/" if not str(cache_dir).endswith("/") else str(cache_dir)
    by_role = {role: [s for s in stores if s.role == role] for role in ROLES}
    if backbone and (video or audio):
        raise CacheError("give either one audio-visual backbone or video and audio backbones, not both",
                         hint="backbone")

    def pick(role: str, name: str) -> Store:
        found = [s for s in by_role[role] if s.matches(name)]
        if not found:
            have = _shown(by_role[role]) or "none"
            raise CacheError(f"no {_role_words(role)} encoder {name!r} in {where} (its {_role_words(role)} "
                             f"encoders: {have}); extract it with {ROLE_FLAGS[role]} {name}",
                             hint=ROLE_SETTINGS[role])
        if len(found) > 1:
            raise CacheError(f"two {_role_words(role)} stores match {name!r} in {where}: "
                             f"{', '.join(s.id for s in found)}; pass {ROLE_FLAGS[role]} with one of these ids")
        return found[0]

    def only(role: str) -> Store | None:
        found = by_role[role]
        if len(found) > 1:
            count = "two" if len(found) == 2 else str(len(found))
            raise CacheError(f"{count} {_role_words(role)} encoders in {where}: {_shown(found)}; "
                             f"pass {ROLE_FLAGS[role]}")
        return found[0] if found else None

    if backbone:
        return {"audiovisual": pick("audiovisual", backbone)}
    if not (video or audio) and by_role["audiovisual"] and (by_role["video"] or by_role["audio"]):
        raise CacheError(f"{where} holds audio-visual encoders ({_shown(by_role['audiovisual'])}) and video or "
                         f"audio encoders ({_shown(by_role['video'] + by_role['audio'])}); pass --backbone, or "
                         f"--video-backbone and --audio-backbone")
    if not (video or audio) and by_role["audiovisual"]:
        return {"audiovisual": only("audiovisual")}
    chosen = {}
    for role, name in (("video", video), ("audio", audio)):
        store = pick(role, name) if name else only(role)
        if store is not None:
            chosen[role] = store
    if not chosen:
        raise CacheError(f"{where}: no encoder store here (run the extract command first)")
    return chosen


def legacy_path(cache_dir, split: str) -> Path:
    return Path(cache_dir) / f"{split}.h5"


def split_exists(cache_dir, split: str, video=None, audio=None, backbone=None) -> bool:
    """Whether ``split`` can be opened from ``cache_dir`` with this selection (both layouts)."""
    stores = list_stores(cache_dir)
    if not stores:
        return legacy_path(cache_dir, split).is_file()
    return all(s.split_path(split).is_file() for s in select_stores(cache_dir, video, audio, backbone, stores).values())


def open_split(cache_dir, split: str, video: str | None = None, audio: str | None = None,
               backbone: str | None = None, *, lazy: bool | str = "auto") -> FeatureSplit:
    """Split ``split`` of the cache folder ``cache_dir``: the chosen stores combined (see
    :func:`select_stores`), or the folder's schema-2 ``<split>.h5``.

    The result is what one file of schema 2 held: the embeddings of every chosen store, their
    ``backbones``, ``preprocessing`` and ``sources`` by role; ``attrs["stores"]`` says which
    store each role came from. Stores that disagree on clips, labels or ``has_audio`` are
    refused, naming the clip.
    """
    cache_dir = Path(cache_dir)
    stores = list_stores(cache_dir)
    if not stores:
        path = legacy_path(cache_dir, split)
        if not path.is_file():
            raise CacheError(f"{path}: no such cache file (run the extract command for this split first)")
        features = read_split(path, lazy=lazy)
        _check_legacy_names(features, path, video=video, audio=audio, audiovisual=backbone)
        return features
    chosen = select_stores(cache_dir, video, audio, backbone, stores)
    parts = {}
    for role, store in chosen.items():
        path = store.split_path(split)
        if not path.is_file():
            raise CacheError(f"{path}: no such cache file (run the extract command for split {split!r} with "
                             f"{ROLE_FLAGS[role]} {store.backbone})")
        parts[role] = (store, read_fields(path, lazy))
    return combine(cache_dir, split, parts)


def _check_legacy_names(features: FeatureSplit, path: Path, **names) -> None:
    for role, name in names.items():
        if not name:
            continue
        have = (features.backbones.get(role) or {}).get("name")
        if have != name:
            held = ", ".join(f"{r} {b.get('name')}" for r, b in features.backbones.items())
            raise CacheError(f"{path} (one file of schema 2) holds {held}, not {_role_words(role)} {name}",
                             hint=ROLE_SETTINGS[role])


def combine(cache_dir, split: str, parts: dict[str, tuple[Store, dict]]) -> FeatureSplit:
    """One FeatureSplit of the stores' split files {role: (store, cache.store.read_fields(...))},
    refusing any disagreement. Clip ids are compared as stored and the result is checked once
    (NaN included), so reading two stores costs what reading one file of both costs."""
    items = list(parts.items())
    (_, (first_store, first)), rest = items[0], items[1:]
    for role, (store, other) in rest:
        same = (first["label_names"] == other["label_names"] and np.array_equal(first["clip_ids"], other["clip_ids"])
                and np.array_equal(first["labels"], other["labels"])
                and np.array_equal(first["has_audio"], other["has_audio"]))
        if not same:
            _check_agree(first_store, _view(first), store, _view(other))
    embeddings, info, backbones, preprocessing, sources, extraction = {}, {}, {}, {}, {}, {}
    errors = {}
    for role, (store, f) in items:
        for name, value in f["embeddings"].items():
            if name in embeddings:
                raise CacheError(f"stores {info[name]['store']} and {store.id} both hold a {name!r} embedding; "
                                 f"choose stores of other roles")
            embeddings[name] = value
            info[name] = {**f["embedding_info"].get(name, {}), "store": store.id}
        backbones.update(f["backbones"])
        for slot, spec in f["preprocessing"].items():
            if slot in preprocessing and preprocessing[slot] != spec:
                raise CacheError(f"stores {', '.join(s.id for s, _ in parts.values())} read their {slot} input "
                                 f"with different preprocessing; they cannot be combined")
            preprocessing[slot] = spec
        sources.update(f["attrs"].get("sources") or {})
        extraction[role] = f["attrs"].get("extraction") or {}
        errors.update(dict(f["errors"]))
    same = all(e == next(iter(extraction.values())) for e in extraction.values())
    attrs = {"stores": {role: store.id for role, (store, _) in items}, "sources": sources,
             # One extraction dict where the stores agree (as schema 2 had); per role where not.
             "extraction": next(iter(extraction.values())) if same else {},
             "extraction_by_role": extraction,
             "created": min(str(f["attrs"].get("created", "")) for _, (_, f) in items)}
    return FeatureSplit(split, decode_ids(first["clip_ids"]), first["labels"], has_audio=first["has_audio"],
                        label_names=first["label_names"], backbones=backbones, preprocessing=preprocessing,
                        errors=sorted(errors.items()), attrs=attrs, path=Path(cache_dir) / split,
                        embeddings=embeddings, embedding_info=info)


def _view(fields: dict) -> SimpleNamespace:
    """The parts of a store's split that _check_agree names a clip from."""
    return SimpleNamespace(split=fields["split"], clip_ids=decode_ids(fields["clip_ids"]), labels=fields["labels"],
                           has_audio=fields["has_audio"], label_names=fields["label_names"], errors=fields["errors"])


def _check_agree(store_a: Store, a: FeatureSplit, store_b: Store, b: FeatureSplit) -> None:
    redo = "run extract with both backbones on this folder again to bring them up to date"
    if a.label_names != b.label_names:
        raise CacheError(f"{store_a.split_path(a.split)} and {store_b.split_path(b.split)} have other label "
                         f"names (extracted from different manifests); {redo}")
    if a.clip_ids != b.clip_ids:
        ids_a, ids_b = set(a.clip_ids), set(b.clip_ids)
        for (sa, fa, ia), (sb, fb, ib) in (((store_a, a, ids_a), (store_b, b, ids_b)),
                                           ((store_b, b, ids_b), (store_a, a, ids_a))):
            extra = [c for c in fa.clip_ids if c not in ib]
            if extra:
                why = dict(fb.errors).get(extra[0])
                there = f"an error there ({why})" if why else "not extracted there"
                raise CacheError(f"clip {extra[0]} of split {a.split!r} is in store {sa.id} but {there} in store "
                                 f"{sb.id} ({len(extra)} clip(s) differ); {redo}")
        first = next(x for x, y in zip(a.clip_ids, b.clip_ids) if x != y)
        raise CacheError(f"clip {first} of split {a.split!r} is in another position in store {store_a.id} than in "
                         f"{store_b.id}; {redo}")
    for what, x, y in (("label", a.labels, b.labels), ("has_audio", a.has_audio, b.has_audio)):
        bad = np.flatnonzero(np.asarray(x) != np.asarray(y))
        if len(bad):
            i = bad[0]
            shown = ((a.label_names[x[i]], b.label_names[y[i]]) if what == "label" else (bool(x[i]), bool(y[i])))
            raise CacheError(f"clip {a.clip_ids[i]} of split {a.split!r} has {what} {shown[0]!r} in store "
                             f"{store_a.id} but {shown[1]!r} in store {store_b.id} ({len(bad)} clip(s) differ); "
                             f"{redo}")


def merge_split(cache_dir, split: str, store: str | None = None) -> list[Path]:
    """``cache merge``: merge the parts of ``split`` in the store named ``store`` (a backbone name
    or id), or in every store of the folder (and a schema-2 ``<split>.parts``) that has some."""
    from .parts import merge_parts, parts_dir

    cache_dir = Path(cache_dir)
    stores = list_stores(cache_dir)
    if store is not None:
        found = [s for s in stores if s.matches(store)]
        if len(found) != 1:
            have = ", ".join(s.id for s in stores) or "none"
            raise CacheError(f"{'no' if not found else 'more than one'} store of {cache_dir} matches {store!r} "
                             f"(its stores: {have})", hint="store")
        folders = [found[0].path]
    else:
        folders = [s.path for s in stores if parts_dir(s.path, split).exists()]
        if parts_dir(cache_dir, split).exists():
            folders.insert(0, cache_dir)
        if not folders:
            raise CacheError(f"{cache_dir}: no extraction parts of split {split!r} to merge")
    return [merge_parts(folder, split) for folder in folders]
