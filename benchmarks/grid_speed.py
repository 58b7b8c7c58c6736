"""Speed of ``cli.py grid``: many fusion heads on one cache. Prints one JSON object.

(a) The paper preset (9 configurations x 5 seeds = 45 heads, 25 epochs, batch 8) on a
    100-clip cache (plus 20 val, 20 test) read from disk, results and plots written: wall time
    with each method, worker start-up included (as a fresh ``cli.py grid`` pays it). Twice: with
    768-d embeddings (base backbones; head 1536-1024-512-10) and 64-d ones (tiny backbones).
(b) A sweep, 2 targets x 12 alphas x 3 seeds = 72 heads, on a synthetic cache of 20,000 clips
    (16,000 train, 2,000 val, 2,000 test), 309 classes, 768-d: wall time and the GFLOP/s it
    achieves beside a plain large fp32 matmul measured in the same run. The paper's recipe
    (batch 8, 25 epochs) would take hours here, so this runs --sweep-epochs at --sweep-batch,
    and extrapolates the paper recipe from a timed stretch of batch-8 steps.
(c) One head of (b) with scikit-learn's MLPClassifier (same sizes, relu, adam, same learning
    rate, batch and epochs, no L2; it has no dropout) against ``train_head``: times and accuracies.
(d) The paper notebook's approach for preset (a): both base backbones recomputed for every clip
    in every epoch of every head (forward time per clip measured on a few clips, random weights),
    against extracting once plus the grid of (a).

    ./run bench grid_speed [--skip-sweep] [--sweep-epochs 1] [--sweep-batch 256]

The machine may be shared: its load average is reported before and after; timings of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import common

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alphafuse.cache import FeatureSplit, write_split  # noqa: E402
from alphafuse.fuse import TrainConfig, load_splits, train_head  # noqa: E402
from alphafuse.fuse.grid import head_parameters, paper_preset, run_grid, sweep  # noqa: E402
from alphafuse.fuse.metrics import score  # noqa: E402
from alphafuse.fuse.inputs import HeadInputs  # noqa: E402
from alphafuse.fuse.train import predict_logits, train_epoch  # noqa: E402

HIDDEN = (1024, 512)


def synthetic_split(split: str, n: int, num_classes: int, dim: int, seed: int, spread: float = 0.5) -> FeatureSplit:
    """Gaussian classes: centres fixed across splits, clip noise per split."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    centres = np.random.default_rng(0).normal(0, spread, (num_classes, 2 * dim)).astype(np.float32)
    feats = centres[labels] + rng.normal(0, 1, (n, 2 * dim)).astype(np.float32)
    return FeatureSplit(split, [f"{split}_{i}" for i in range(n)], labels, feats[:, :dim], feats[:, dim:],
                        np.ones(n, bool), [f"class_{c}" for c in range(num_classes)],
                        backbones={"video": {"fingerprint": "bench"}, "audio": {"fingerprint": "bench"}})


def restart_workers() -> None:
    """Shut joblib's reusable worker pool, so that a timed grid pays the start-up a CLI run pays."""
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)


def train_flops(params_matmul: int, samples: int) -> float:
    return 6.0 * params_matmul * samples   # forward + backward multiply-adds x 2


def matmul_params(cfg: TrainConfig, in_dim: int, classes: int) -> int:
    sizes = [in_dim, *cfg.hidden, classes]
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


# ----------------------------------------------------------------------------- (a)

def preset_grid(dim: int, methods: list[str], tmp: Path) -> dict:
    cache = tmp / f"cache_{dim}"
    for name, n, seed in (("train", 100, 1), ("val", 20, 2), ("test", 20, 3)):
        write_split(cache / f"{name}.h5", synthetic_split(name, n, 10, dim, seed))
    configs = paper_preset(seeds=5)
    splits = load_splits(cache)
    out = {"embedding_dim": dim, "heads": len(configs), "clips": {"train": 100, "val": 20, "test": 20},
           "head_parameters": head_parameters(configs[0], dim, dim, 10), "target_s": 10.0}
    for method in methods:
        restart_workers()
        started = time.perf_counter()
        splits = load_splits(cache)
        result = run_grid(splits["train"], splits["val"], splits["test"], configs, tmp / f"grid_{dim}_{method}",
                          method=method)
        out[f"{method}_wall_s"] = round(time.perf_counter() - started, 2)
        out[f"{method}_chose"] = result.method
        out[f"{method}_test_top1_first_rows"] = [r["test_top1"] for r in result.rows[:3]]
    out["identical_results"] = _same_rows(tmp, dim, methods)
    return out


def _same_rows(tmp: Path, dim: int, methods: list[str]):
    import csv

    tables = []
    for method in methods:
        with open(tmp / f"grid_{dim}_{method}" / "results.csv", newline="") as f:
            tables.append([{k: v for k, v in r.items() if k != "train_seconds"} for r in csv.DictReader(f)])
    return all(t == tables[0] for t in tables)


# ----------------------------------------------------------------------------- (b), (c)

def big_splits(tmp: Path, n: int, classes: int, dim: int) -> dict:
    cache = tmp / "cache_big"
    sizes = {"train": n * 8 // 10, "val": n // 10, "test": n - n * 8 // 10 - n // 10}
    for i, (name, count) in enumerate(sizes.items()):
        write_split(cache / f"{name}.h5", synthetic_split(name, count, classes, dim, 10 + i))
    return load_splits(cache)


def big_sweep(splits: dict, epochs: int, batch: int, methods: list[str], tmp: Path) -> dict:
    base = TrainConfig(epochs=epochs, batch_size=batch)
    configs = sweep("scale", "video,audio", "0.25:3.0:0.25", seeds=3, base=base, baseline=False, learned=False)
    train, val, test = splits["train"], splits["val"], splits["test"]
    classes, dim = train.num_classes, train.video.shape[1]
    params = matmul_params(configs[0], 2 * dim, classes)
    flops = len(configs) * (train_flops(params, len(train) * epochs)
                            + 2.0 * params * (len(val) * (epochs + 1) + len(test)))   # + per-epoch val, final scoring
    out = {"heads": len(configs), "clips": {k: len(v) for k, v in splits.items()}, "classes": classes,
           "epochs": epochs, "batch_size": batch, "head_parameters": head_parameters(configs[0], dim, dim, classes),
           "gflop": round(flops / 1e9, 1)}
    for method in methods:
        restart_workers()
        started = time.perf_counter()
        result = run_grid(train, val, test, configs, tmp / f"sweep_{method}", method=method)
        wall = time.perf_counter() - started
        out[f"{method}_wall_s"] = round(wall, 1)
        out[f"{method}_gflops"] = round(flops / wall / 1e9, 1)
        out[f"{method}_best_test_top1"] = max(r["test_top1"] for r in result.rows)
    return out


def paper_recipe_estimate(splits: dict, steps: int = 200) -> dict:
    """Time batch-8 steps of one 309-class head on one thread; scale to 72 heads x 25 epochs on all cores."""
    train = splits["train"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = TrainConfig()
    gen = torch.Generator().manual_seed(0)
    data = HeadInputs(train, ("video", "audio"))
    from alphafuse.fuse import AlphaFuseHead
    model = AlphaFuseHead(train.video.shape[1], train.audio.shape[1], train.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    train_epoch(model, optimizer, data, 8, gen, max_steps=10)
    started = time.perf_counter()
    train_epoch(model, optimizer, data, 8, gen, max_steps=steps)
    step_s = (time.perf_counter() - started) / steps
    torch.set_num_threads(previous)
    cores = len(os.sched_getaffinity(0))
    hours = step_s * (len(train) / 8) * 25 * 72 / cores / 3600
    return {"batch8_step_ms": round(step_s * 1e3, 2), "estimated_hours_72_heads_25_epochs_batch8": round(hours, 2)}


def sklearn_versus(splits: dict, epochs: int, batch: int) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    train, test = splits["train"], splits["test"]
    x_train = np.concatenate([train.video, train.audio], axis=1)
    x_test = np.concatenate([test.video, test.audio], axis=1)
    threads = torch.get_num_threads()
    cfg = TrainConfig(epochs=epochs, batch_size=batch)
    ours_s = []
    for _ in range(2):   # best of two: the machine is shared
        started = time.perf_counter()
        result = train_head(train, None, cfg)
        ours_s.append(time.perf_counter() - started)
    ours_s = min(ours_s)
    ours_top1 = _test_top1(result.model, test)
    # MLPClassifier has no dropout: the same head without it, for the accuracies side by side.
    no_dropout_top1 = _test_top1(train_head(train, None, TrainConfig(epochs=epochs, batch_size=batch,
                                                                     dropout=0.0)).model, test)

    mlp = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="relu", solver="adam", learning_rate_init=cfg.lr,
                        batch_size=batch, max_iter=epochs, alpha=0.0, shuffle=True, random_state=0, tol=0.0,
                        n_iter_no_change=epochs + 1)
    sklearn_s = []
    for _ in range(2):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)   # max_iter=epochs is the point
            mlp.fit(x_train, train.labels)
        sklearn_s.append(time.perf_counter() - started)
    sklearn_s = min(sklearn_s)
    return {"epochs": epochs, "batch_size": batch, "threads": threads, "train_clips": len(train), "timing": "best of 2",
            "alphafuse_train_s": round(ours_s, 2), "sklearn_train_s": round(sklearn_s, 2),
            "sklearn_over_alphafuse": round(sklearn_s / ours_s, 2),
            "alphafuse_test_top1": round(ours_top1, 4), "alphafuse_dropout0_test_top1": round(no_dropout_top1, 4),
            "sklearn_test_top1": round(float(mlp.score(x_test, test.labels)), 4),
            "sklearn_dtype": str(mlp.coefs_[0].dtype),
            "note": "MLPClassifier has no dropout; alphafuse's head uses 0.5"}


def _test_top1(model, test: FeatureSplit) -> float:
    logits = predict_logits(model, torch.from_numpy(test.video), torch.from_numpy(test.audio))
    return score(logits, test.labels, test.num_classes)["top1"]


def matmul_gflops_entry(size: int = 4096) -> dict:
    return {"size": size, "threads": torch.get_num_threads(), "gflops": round(common.matmul_gflops("cpu", size), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="joblib,vectorized", help="methods timed in (a) and (b)")
    parser.add_argument("--skip-sweep", action="store_true", help="leave out (b) and (c)")
    parser.add_argument("--sweep-clips", type=int, default=20_000)
    parser.add_argument("--sweep-epochs", type=int, default=1)
    parser.add_argument("--sweep-batch", type=int, default=256)
    parser.add_argument("--notebook-clips", type=int, default=2, help="clips timed per backbone in (d)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = {"device": f"cpu ({len(os.sched_getaffinity(0))} cores)", "torch": torch.__version__,
              "load_average_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result["a_preset_768d"] = preset_grid(768, methods, tmp)
        result["a_preset_64d"] = preset_grid(64, methods, tmp)
        if not args.skip_sweep:
            splits = big_splits(tmp, args.sweep_clips, 309, 768)
            result["b_sweep"] = big_sweep(splits, args.sweep_epochs, args.sweep_batch, methods, tmp)
            result["b_matmul_fp32"] = matmul_gflops_entry()
            for method in methods:
                result["b_sweep"][f"{method}_share_of_matmul"] = round(
                    result["b_sweep"][f"{method}_gflops"] / result["b_matmul_fp32"]["gflops"], 3)
            result["b_paper_recipe"] = paper_recipe_estimate(splits)
            result["c_sklearn"] = sklearn_versus(splits, args.sweep_epochs, args.sweep_batch)
    result["d_notebook"] = notebook_cost(result["a_preset_768d"], args.notebook_clips)
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
