"""Speed of the fusion heads (fuse/heads/). Prints one JSON object.

(a) The paper's recipe for every head: 100 training clips (20 val, 20 test), random 768-d
    features, 10 classes, 25 epochs at batch 8, Adam 1e-4, each head with its default
    options (bottleneck: dim 256, 4 layers, 4 bottleneck tokens, 4 attention heads). Inputs as
    extraction writes them: pooled ``video``/``audio`` float32, ``*_tokens`` float16 with 9
    video tokens (TimeSformer, 8 frames: CLS + one per frame) and 103 audio tokens (AST: CLS,
    distillation and 101 time tokens), ``*_layers`` float16 (12 blocks). Seconds per
    ``train_head`` run (with the per-epoch validation), median of --repeats. Target: under 5 s.
(b) The bottleneck head's training throughput on a synthetic 20,000-clip token cache (float16,
    in memory, or an HDF5 file read lazily with --lazy): samples/s at --batch, and the GFLOP/s
    that implies (forward multiply-adds x 2, x 3 for forward + backward) beside a plain fp32
    matmul measured in the same run.

    python benchmarks/heads_speed.py [--threads 2] [--repeats 3] [--lazy]

The machine may be shared: its load average is reported before and after.
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

from alphafuse.cache import FeatureSplit, read_split, write_split  # noqa: E402
from alphafuse.fuse import HeadInputs, TrainConfig, create_head, head_defaults, head_names, train_head  # noqa: E402
from alphafuse.fuse.train import make_optimizer, train_epoch  # noqa: E402

DIM = 768
TOKENS = {"video": 9, "audio": 103}
LAYERS = 12
# Beside the defaults: a bottleneck head small enough for the 100-clip recipe on 2 cores
# (its cost grows with dim^2 x layers).
EXTRA = {"bottleneck dim=64 layers=2": ("bottleneck", {"dim": 64, "layers": 2})}


def synthetic_split(split: str, n: int, classes: int, seed: int, extras: bool = True) -> FeatureSplit:
    """Gaussian classes on the pooled embeddings; tokens and layers scattered around them (float16)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = np.random.default_rng(0).normal(0, 0.5, (classes, 2, DIM)).astype(np.float32)
    pooled = centres[labels] + rng.normal(0, 1, (n, 2, DIM)).astype(np.float32)
    embeddings = {"video": pooled[:, 0], "audio": pooled[:, 1]}
    if extras:
        for i, m in enumerate(("video", "audio")):
            embeddings[f"{m}_tokens"] = _around(pooled[:, i], TOKENS[m], rng)
            embeddings[f"{m}_layers"] = _around(pooled[:, i], LAYERS, rng)
    return FeatureSplit(split, [f"{split}_{i}" for i in range(n)], labels, label_names=[f"c{c}" for c in range(classes)],
                        backbones={"video": {"fingerprint": "bench"}, "audio": {"fingerprint": "bench"}},
                        embeddings=embeddings)


def _around(pooled: np.ndarray, count: int, rng, chunk: int = 512) -> np.ndarray:
    out = np.empty((len(pooled), count, DIM), np.float16)
    for i in range(0, len(pooled), chunk):   # float32 noise a chunk at a time: a 20k cache is 3.4 GB in fp16
        part = pooled[i:i + chunk, None] + rng.standard_normal((len(pooled[i:i + chunk]), count, DIM), np.float32)
        out[i:i + chunk] = part
    return out


def recipe(repeats: int, bottleneck_repeats: int, heads: list[str]) -> dict:
    """(a): seconds per 25-epoch train_head run of every head, median of ``repeats``."""
    train, val = synthetic_split("train", 100, 10, 1), synthetic_split("val", 20, 10, 2)
    out = {}
    runs = {**{name: (name, {}) for name in head_names()}, **EXTRA}
    for label, (name, options) in runs.items():
        if name not in heads:
            continue
        cfg = TrainConfig(head=name, head_options=options)
        train_head(train, val, TrainConfig(head=name, head_options=options, epochs=1))   # warm-up
        count = bottleneck_repeats if label == "bottleneck" else repeats
        seconds = [train_head(train, val, cfg).seconds for _ in range(count)]
        out[label] = {"train_s": round(statistics.median(seconds), 2), "runs_s": [round(s, 2) for s in seconds],
                     "under_5_s": statistics.median(seconds) < 5.0}
    return out


def bottleneck_flops_per_sample(options: dict, tokens: dict, in_dim: int = DIM) -> float:
    """Forward multiply-adds x 2, x 3 for forward + backward: the input projections, then per layer
    and modality over its tokens + CLS + bottleneck: qkv, output projection, MLP, and attention."""
    d, r, b = options["dim"], options["mlp_ratio"], options["bottlenecks"]
    macs = 0.0
    for t in tokens.values():
        n = t + 1 + b
        macs += t * in_dim * d
        macs += options["layers"] * (n * (4 + 2 * r) * d * d + 2 * n * n * d)
    return 3 * 2 * macs


def bottleneck_throughput(n: int, batch: int, steps: int, lazy: bool, tmp: Path) -> dict:
    """(b): training steps of the default bottleneck head on an n-clip token cache."""
    started = time.perf_counter()
    split = synthetic_split("train", n, 309, 3, extras=False)
    rng = np.random.default_rng(4)
    for i, m in enumerate(("video", "audio")):
        split.embeddings[f"{m}_tokens"] = _around(split.embeddings[m], TOKENS[m], rng)
    if lazy:
        write_split(tmp / "tokens.h5", split)
        split = read_split(tmp / "tokens.h5", lazy=True)
    build_s = time.perf_counter() - started
    names = ("video_tokens", "audio_tokens")
    data = HeadInputs(split, names, head="bottleneck")
    cfg = TrainConfig(head="bottleneck")
    torch.manual_seed(0)
    model = create_head("bottleneck", data.shapes, split.num_classes, **cfg.head_kwargs())
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    train_epoch(model, optimizer, data, batch, gen, max_steps=2)   # warm-up
    started = time.perf_counter()
    train_epoch(model, optimizer, data, batch, gen, max_steps=steps)
    seconds = time.perf_counter() - started
    samples_per_s = steps * batch / seconds
    options = head_defaults("bottleneck")
    flops = bottleneck_flops_per_sample(options, TOKENS)
    return {"clips": n, "storage": "hdf5, read lazily" if lazy else "in memory (float16)",
            "cache_build_s": round(build_s, 1), "batch_size": batch, "steps": steps,
            "options": {k: v for k, v in options.items() if k != "modality_dropout"},
            "samples_per_s": round(samples_per_s, 1), "epoch_s_estimate": round(n / samples_per_s, 1),
            "gflop_per_sample": round(flops / 1e9, 3), "gflops": round(samples_per_s * flops / 1e9, 2)}


def matmul_gflops_entry(size: int = 2048) -> dict:
    return {"size": size, "gflops": round(common.matmul_gflops("cpu", size), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the 2-core target)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bottleneck-repeats", type=int, help="runs of the default bottleneck head in (a) "
                                                              "(default: --repeats; each is minutes on 2 cores)")
    parser.add_argument("--heads", default=",".join(head_names()), help="heads timed in (a)")
    parser.add_argument("--clips", type=int, default=20_000, help="clips of the token cache in (b)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lazy", action="store_true", help="(b) from an HDF5 file read lazily")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"device": f"cpu ({len(os.sched_getaffinity(0))} cores)", "threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_average_before": round(os.getloadavg()[0], 2),
              "a_recipe_100_clips": recipe(args.repeats, args.bottleneck_repeats or args.repeats,
                                           [h.strip() for h in args.heads.split(",")])}
    if not args.skip_throughput:
        with tempfile.TemporaryDirectory() as tmp:
            result["b_bottleneck_throughput"] = bottleneck_throughput(args.clips, args.batch, args.steps, args.lazy,
                                                                      Path(tmp))
        result["b_matmul_fp32"] = matmul_gflops_entry()
        result["b_bottleneck_throughput"]["share_of_matmul"] = round(
            result["b_bottleneck_throughput"]["gflops"] / result["b_matmul_fp32"]["gflops"], 3)
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
