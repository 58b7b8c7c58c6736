"""One store per encoder: what adding an encoder costs, and what reading a pair of stores costs.
Prints one JSON object.

1. Extraction, on the real subset's clips (or ``--clips`` of them): the pair TimeSformer +
   CAV-MAE audio extracted from scratch into an empty folder, against adding CAV-MAE's audio to
   a folder that already holds TimeSformer + AST (TimeSformer's store is reused, only audio is
   decoded). ``add_vs_scratch`` is the ratio of wall times (below 1: adding is cheaper).
2. Reading what ``fuse`` reads: a split of ``--read-clips`` clips with pooled video and audio
   embeddings (768-d float32 each), as two stores combined by ``cache.open_split`` against one
   schema-2 file holding both (``cache.read_split``). ``stores_vs_file`` is the ratio of
   median wall times (1.0: no cost).

    ./run bench stores_speed [--arch tiny] [--clips 24] [--workers 2] [--read-clips 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alphafuse.cache import FeatureSplit, open_split, read_split, write_split  # noqa: E402
from alphafuse.data import read_manifest  # noqa: E402
from alphafuse.extract import create_backbone  # noqa: E402
from alphafuse.extract.runner import ExtractConfig, extract_split  # noqa: E402
from tests.stores import write_stores  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SUBSET = REPO.parent / "shared" / "vggsound-subset" / "manifest.csv"


def _models(arch: str) -> dict:
    return {"timesformer": create_backbone("timesformer", arch=arch), "ast": create_backbone("ast", arch=arch),
            "cavmae": create_backbone("cavmae", arch=arch)}


def extraction(args) -> dict:
    manifest = read_manifest(args.manifest)
    split = manifest.splits[0]
    config = ExtractConfig(workers=args.workers, batch_size=args.batch_size, device="cpu", limit=args.clips)
    out = {"split": split, "clips": len(manifest.split(split)[:args.clips]), "arch": args.arch,
           "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        m = _models(args.arch)
        started = time.perf_counter()
        extract_split(manifest, split, Path(tmp) / "first", m["timesformer"], m["ast"], config=config)
        out["timesformer_ast_scratch_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        added = extract_split(manifest, split, Path(tmp) / "first", m["timesformer"], m["cavmae"], config=config)
        out["add_cavmae_audio_s"] = round(time.perf_counter() - started, 2)
        out["add_statuses"] = {s.backbone: s.status for s in added.stores}
        started = time.perf_counter()
        extract_split(manifest, split, Path(tmp) / "scratch", m["timesformer"], m["cavmae"], config=config)
        out["timesformer_cavmae_scratch_s"] = round(time.perf_counter() - started, 2)
    out["add_vs_scratch"] = round(out["add_cavmae_audio_s"] / out["timesformer_cavmae_scratch_s"], 3)
    return out


def reading(args) -> dict:
    n, dim = args.read_clips, 768
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 309
    split = FeatureSplit("train", [f"clip{i:06d}" for i in range(n)], labels,
                         video=rng.normal(size=(n, dim)).astype(np.float32),
                         audio=rng.normal(size=(n, dim)).astype(np.float32), has_audio=np.ones(n, bool),
                         label_names=[f"class{c}" for c in range(309)],
                         backbones={"video": {"fingerprint": "v"}, "audio": {"fingerprint": "a"}})
    times = {"file": [], "stores": []}
    with tempfile.TemporaryDirectory() as tmp:
        write_split(Path(tmp) / "legacy" / "train.h5", split)
        write_stores(Path(tmp) / "stores", split, {"video": "timesformer", "audio": "ast"})
        readers = {"file": lambda: read_split(Path(tmp) / "legacy" / "train.h5"),
                   "stores": lambda: open_split(Path(tmp) / "stores", "train")}
        a, b = readers["file"](), readers["stores"]()   # warm the page cache; the same arrays
        assert np.array_equal(a.video, b.video) and np.array_equal(a.audio, b.audio) and a.clip_ids == b.clip_ids
        for _ in range(args.repeats):
            for name in ("file", "stores") if _ % 2 == 0 else ("stores", "file"):   # alternate: fair to both
                started = time.perf_counter()
                readers[name]()
                times[name].append(time.perf_counter() - started)
    file_s, stores_s = statistics.median(times["file"]), statistics.median(times["stores"])
    return {"clips": n, "embeddings": "video + audio, 768-d float32", "repeats": args.repeats,
            "schema2_file_s": round(file_s, 4), "two_stores_s": round(stores_s, 4),
            "stores_vs_file": round(stores_s / file_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(SUBSET))
    parser.add_argument("--arch", default="tiny", choices=("tiny", "base"))
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--read-clips", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    result = {"threads": torch.get_num_threads(), "load": os.getloadavg()[0],
              "read": reading(args), "extract": extraction(args)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
