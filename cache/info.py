"""What `cache info` shows: one split file summarised, as a dict (for --json) or as text."""
from __future__ import annotations

import json

from .store import read_split


def describe_split(path) -> dict:
    """Clips, errors, and every embedding with its shape, dtype and the backbone that made it."""
    f = read_split(path, lazy=True)
    embeddings = {}
    for name, value in f.embeddings.items():
        info = f.embedding_info.get(name, {})
        role = info.get("role") or ("video" if name.startswith("video") else "audio" if name.startswith("audio")
                                    else "audiovisual")
        backbone = f.backbones.get(role) or f.backbones.get("audiovisual") or {}
        embeddings[name] = {"shape": list(value.shape[1:]), "dtype": str(value.dtype), "role": role,
                            "backbone": backbone.get("name") or backbone.get("config", {}).get("model"),
                            **{k: v for k, v in info.items() if k != "role"}}
    return {
        "path": str(path), "split": f.split, "clips": len(f), "errors": len(f.errors),
        "classes": f.num_classes, "classes_present": int(len(set(f.labels.tolist()))),
        "without_audio": int((~f.has_audio).sum()), "embeddings": embeddings,
        "backbones": f.backbones, "preprocessing": f.preprocessing,
        "error_list": [list(e) for e in f.errors], **{k: v for k, v in f.attrs.items() if k != "source_stamps"},
    }


def _what(name: str, e: dict) -> str:
    kind = ("token sequence" if name.endswith("_tokens") else "pooled embedding after each chosen block"
            if name.endswith("_layers") else "classifier logits" if name == "logits" else "pooled embedding")
    views = f", {e['views']} views" if e.get("views") else ""
    return f"{kind} of {e['backbone'] or '?'} ({e['role']}{views})"


def format_info(info: dict) -> str:
    lines = [f"{info['path']}: split {info['split']!r}, {info['clips']} clips, {info['errors']} errors, "
             f"{info['without_audio']} without audio; {info['classes']} classes ({info['classes_present']} present)"]
    for name, e in info["embeddings"].items():
        lines.append(f"  {name:<13} {str(tuple(e['shape'])):<14} {e['dtype']:<8} {_what(name, e)}")
    for role, b in info["backbones"].items():
        weights = "pretrained" if b.get("pretrained") else f"RANDOM weights, seed {b.get('seed')}"
        name = b.get("name") or b.get("config", {}).get("model")
        lines.append(f"  {role} backbone: {name} {json.dumps(b.get('options', {}), sort_keys=True)}, {weights}, "
                     f"{b.get('fingerprint', '')[:23]}")
    lines.append(f"  preprocessing: {json.dumps(info['preprocessing'], sort_keys=True)}")
    if info.get("extraction"):
        lines.append(f"  extraction: {json.dumps(info['extraction'], sort_keys=True)}")
    lines.append(f"  created {info.get('created')} by alphafuse {info.get('tool_version')}")
    lines += [f"  error {clip_id}: {reason}" for clip_id, reason in info["error_list"][:10]]
    return "\n".join(lines)


def describe_folder(cache_dir) -> dict:
    """Every store of a cache folder: backbone, role, options, checkpoint, splits with their clips
    and embeddings, and its id (which can stand for the backbone's name where it has two stores)."""
    import h5py

    from .stores import list_stores

    stores = []
    for store in list_stores(cache_dir):
        (role, description), = store.identity["backbones"].items()
        splits = {}
        for split in store.splits():
            with h5py.File(store.split_path(split), "r") as f:
                info = json.loads(f.attrs.get("embeddings", "{}"))
                splits[split] = {"clips": int(f["clip_id"].shape[0]), "errors": int(f["errors/clip_id"].shape[0]),
                                 "embeddings": {k: v["shape"] for k, v in info.items()}}
        pending = sorted(p.name[:-len(".parts")] for p in store.path.glob("*.parts"))
        stores.append({"id": store.id, "backbone": store.backbone, "role": role,
                       "options": description.get("options", {}), "pretrained": description.get("pretrained"),
                       "fingerprint": description.get("fingerprint", ""), "seed": description.get("seed"),
                       "extraction": store.identity.get("extraction", {}), "splits": splits,
                       "unfinished": pending, "path": str(store.path)})
    return {"path": str(cache_dir), "stores": stores}


def format_folder(info: dict) -> str:
    if not info["stores"]:
        return f"{info['path']}: no encoder stores (extract into it first)"
    lines = [f"{info['path']}: {len(info['stores'])} store(s)"]
    for s in info["stores"]:
        weights = ("pretrained " + s["fingerprint"][:23]) if s["pretrained"] else f"RANDOM weights, seed {s['seed']}"
        lines.append(f"  {s['id']:<22} {s['role']:<11} {s['backbone']} {json.dumps(s['options'], sort_keys=True)}, "
                     f"{weights}; {json.dumps(s['extraction'], sort_keys=True)}")
        for split, d in s["splits"].items():
            shapes = ", ".join(f"{k} {tuple(v)}" for k, v in d["embeddings"].items())
            lines.append(f"      {split}: {d['clips']} clips, {d['errors']} errors; {shapes}")
        if s["unfinished"]:
            lines.append(f"      unfinished (parts): {', '.join(s['unfinished'])}")
    return "\n".join(lines)
