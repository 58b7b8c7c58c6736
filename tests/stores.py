"""Cache folders of one store per encoder, built from FeatureSplits (as extraction writes them)."""
from pathlib import Path

from alphafuse.cache import FeatureSplit, ensure_store, write_split


def write_stores(cache, features: FeatureSplit, names: dict[str, str], *, prefix: dict | None = None) -> dict:
    """Write each role of ``features`` ({"video": "timesformer", ...}: role -> backbone name) as its
    own store of ``cache``; an embedding belongs to the role its name starts with. ``prefix``
    maps a role to other embedding arrays ({"audio": array}) to store instead. Returns
    {role: store folder}."""
    folders = {}
    for role, name in names.items():
        description = {**features.backbones.get(role, {}), "name": name}
        identity = {"backbones": {role: description},
                    "preprocessing": {role: features.preprocessing}, "extraction": {"precision": "fp32"}}
        folder = ensure_store(cache, identity)
        own = {k: v for k, v in features.embeddings.items() if k.startswith(role)}
        own.update((prefix or {}).get(role, {}))
        write_split(Path(folder) / f"{features.split}.h5", FeatureSplit(
            features.split, features.clip_ids, features.labels, has_audio=features.has_audio,
            label_names=features.label_names, backbones={role: description},
            preprocessing=identity["preprocessing"], errors=features.errors,
            attrs={"store_id": folder.name, "extraction": {"precision": "fp32"}}, embeddings=own,
            embedding_info={k: v for k, v in features.embedding_info.items() if k in own}))
        folders[role] = folder
    return folders
