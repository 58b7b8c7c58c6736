"""Speed of stage 2 (training the fusion head on cached features). Prints one JSON object.

1. Wall time of one paper-configuration ``fuse`` (25 epochs, batch 8, 1536 -> 1024 -> 512 ->
   classes) on a 100-clip cache read from disk: reading the caches, training, scoring, writing
   the run directory with its plots; and the training time alone (target: under 1 s).
2. Training throughput at batch 256 on a VGGSound-sized cache held in memory (180,000 clips x
   1536 features, 309 classes), over a bounded number of steps, with the GFLOP/s that implies
   beside a plain large fp32 matmul measured in the same run.

Figures are medians over a few repeats; the machine may be shared, so its load is reported.

    ./run bench fuse_speed [--device cuda] [--repeats 3]
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

import common

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alphafuse.cache import FeatureSplit, write_split  # noqa: E402
from alphafuse.fuse import AlphaFuseHead, HeadInputs, TrainConfig, fuse_run, load_splits, train_epoch, train_head  # noqa: E402

EMBED = 768
HIDDEN = (1024, 512)


def synthetic_split(split: str, n: int, num_classes: int, seed: int) -> FeatureSplit:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    centres = np.random.default_rng(0).normal(0, 0.5, (num_classes, 2 * EMBED)).astype(np.float32)
    feats = centres[labels] + rng.normal(0, 1, (n, 2 * EMBED)).astype(np.float32)
    return FeatureSplit(split, [f"{split}_{i}" for i in range(n)], labels, feats[:, :EMBED], feats[:, EMBED:],
                        np.ones(n, bool), [f"class_{c}" for c in range(num_classes)],
                        backbones={"video": {"fingerprint": "bench"}, "audio": {"fingerprint": "bench"}})


def small_fuse(repeats: int, device: str) -> dict:
    """The paper's scale: 100 training clips (and 20 val, 20 test), 10 classes."""
    cfg = TrainConfig(device=device)  # paper defaults: 25 epochs, batch 8, Adam 1e-4
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp) / "cache"
        for name, n, seed in (("train", 100, 1), ("val", 20, 2), ("test", 20, 3)):
            write_split(cache_dir / f"{name}.h5", synthetic_split(name, n, 10, seed))
        splits = load_splits(cache_dir)
        train_head(splits["train"], splits["val"], TrainConfig(epochs=1, device=device))  # warm-up
        wall, train_s = [], []
        for i in range(repeats):
            started = time.perf_counter()
            splits = load_splits(cache_dir)
            metrics = fuse_run(splits["train"], splits["val"], splits["test"], cfg, Path(tmp) / f"run{i}")
            wall.append(time.perf_counter() - started)
            train_s.append(metrics["train_seconds"])
    return {"clips": {"train": 100, "val": 20, "test": 20}, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "fuse_wall_s": round(statistics.median(wall), 3), "train_s": round(statistics.median(train_s), 3),
            "train_s_target": 1.0}


def head_flops_per_sample(in_dim: int, num_classes: int) -> int:
    """Forward multiply-adds x2, then x3 for forward + backward (Adam's update not counted)."""
    sizes = [in_dim, *HIDDEN, num_classes]
    return 3 * 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def large_throughput(repeats: int, device: str, n: int = 180_000, num_classes: int = 309,
                     batch: int = 256, steps: int = 30) -> dict:
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    video = torch.randn(n, EMBED, generator=gen).to(dev)
    audio = torch.randn(n, EMBED, generator=gen).to(dev)
    labels = torch.randint(0, num_classes, (n,), generator=gen).to(dev)
    data = HeadInputs.from_tensors({"video": video, "audio": audio}, labels)
    torch.manual_seed(0)
    model = AlphaFuseHead(EMBED, EMBED, num_classes, hidden=HIDDEN).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=dev.type in ("cpu", "cuda"))
    train_epoch(model, optimizer, data, batch, gen, max_steps=3)  # warm-up
    rates = []
    for _ in range(repeats):
        common.sync(dev)
        started = time.perf_counter()
        train_epoch(model, optimizer, data, batch, gen, max_steps=steps)  # .item() syncs
        rates.append(steps * batch / (time.perf_counter() - started))
    samples_per_s = statistics.median(rates)
    flops = head_flops_per_sample(2 * EMBED, num_classes)
    return {"clips": n, "features": 2 * EMBED, "classes": num_classes, "batch_size": batch, "steps": steps,
            "samples_per_s": round(samples_per_s, 1),
            "epoch_s_estimate": round(n / samples_per_s, 1),
            "flops_per_sample": flops,
            "gflops": round(samples_per_s * flops / 1e9, 2)}


def matmul_gflops_entry(repeats: int, device: str, size: int = 2048) -> dict:
    return {"size": size, "gflops": round(common.matmul_gflops(device, size, repeats=max(repeats, 5)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = {
        "device": args.device if args.device != "cpu" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "fuse_100_clips": small_fuse(args.repeats, args.device),
        "train_180k_batch256": large_throughput(args.repeats, args.device),
        "matmul_fp32": matmul_gflops_entry(args.repeats, args.device),
    }
    large, matmul = result["train_180k_batch256"], result["matmul_fp32"]
    large["share_of_matmul"] = round(large["gflops"] / matmul["gflops"], 3)
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
