"""Grids of fusion heads on one cache: the paper's experiments, alpha sweeps, honest statistics.

Once the embeddings are cached, every transform, alpha, target and seed is a small head
trained on a few arrays in memory. A grid trains them all (in parallel processes, or stacked
into batched matmuls), scores each on the test split exactly as ``fuse_run`` does, and
summarises each configuration with

* a 95% t-interval over seeds (how much training noise moves the result), and
* a paired bootstrap interval, over the test clips, of its test top-1 minus that of the
  ``none`` baseline trained with the same seeds (how much the choice of test clips moves a
  difference; the paper's 22% vs 11% is two clips out of 20).

    from fuse import load_splits
    from fuse.grid import paper_preset, run_grid, format_summary_table
    s = load_splits("cache_out")
    result = run_grid(s["train"], s["val"], s["test"], paper_preset(seeds=5), "grids/paper")
    print(format_summary_table(result.summary))

Output directory: results.csv (one row per configuration and seed), summary.csv and
summary.json (one row per configuration; summary.json is written last and marks a finished
grid), predictions.npz (each row's predicted class per test clip, to recompute any interval),
alpha_curve.png (when some target was swept over several alphas) or preset_bars.png.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cache import FeatureSplit, check_compatible

from .metrics import score
from data.atomic import atomic_write

from .run import check_out_dir, prepare_out_dir
from .stats import mean_interval, paired_bootstrap
from .stacked import stack_key, train_heads_stacked
from .train import TrainConfig, TrainResult, predict_logits, single_thread, train_head
from .transforms import DEFAULT_ALPHA, TRANSFORMS, resolve_target, validate_transform

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
PREDICTIONS_FILE = "predictions.npz"
ALPHA_CURVE_FILE = "alpha_curve.png"
BARS_FILE = "preset_bars.png"
GRID_MARKERS = (RESULTS_FILE, SUMMARY_JSON)
# Every file a grid writes, the finished-grid marker first: an overwrite removes them all.
GRID_FILES = (SUMMARY_JSON, RESULTS_FILE, SUMMARY_CSV, PREDICTIONS_FILE, ALPHA_CURVE_FILE, BARS_FILE)

RESULT_COLUMNS = ("modalities", "target", "transform", "alpha", "seed", "val_top1", "test_top1", "test_top5",
                  "test_map", "test_loss", "best_epoch", "learned_alpha", "val_loss", "train_seconds",
                  "config_id", "config")
SUMMARY_METRICS = ("val_top1", "test_top1", "test_top5", "test_map", "test_loss", "val_loss", "best_epoch",
                   "learned_alpha")
# Shares in [0, 1]: their intervals are cut to that range.
BOUNDED_METRICS = ("val_top1", "test_top1", "test_top5", "test_map")
METHODS = ("auto", "joblib", "vectorized")
PRESETS = ("paper",)
CONFIDENCE = 0.95

# Transforms that multiply the target embedding by a fixed alpha: the points of an alpha curve.
SCALAR_TRANSFORMS = ("pos_scalar", "neg_scalar", "scale")
TARGET_NAMES = {"video": "TimeSformer (video)", "audio": "AST (audio)"}

# method="auto" on CPU stacks heads of at most this many parameters. Measured on 2 cores (100
# clips, batch 8; per head, stacked vs one at a time): 4k parameters 3-4x faster, 200k 2x,
# 660k (the paper's head on 64-d tiny-backbone embeddings) 1.2x in stacks of 8 but 0.8x in
# stacks of 24, 2.1M (the paper's head on 768-d embeddings) 0.8x. Small heads spend a step in
# Python and dispatch, which a stack shares; big ones are memory-bound, and a stack whose
# weights and Adam state outgrow the cache is slower than one head at a time.
STACKED_MAX_PARAMS = 750_000
# A stack holds at most this many parameters in all (16 bytes each with gradients and Adam
# state: about 100 MB), and at most MAX_STACK heads.
STACK_PARAM_BUDGET = 6_000_000
MAX_STACK = 48

Progress = Callable[[int, int, dict], None]


# ----------------------------------------------------------------------------- configurations

def seed_list(seeds: int | Iterable[int]) -> list[int]:
    """``5`` -> [0, 1, 2, 3, 4]; an explicit list of seeds is kept as given."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("no seeds given")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds repeat: {out}")
    return out


def parse_names(names: str | Iterable[str]) -> list[str]:
    """``"timesformer,ast"`` or a list -> stripped, non-empty names in order, without repeats."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out = []
    for item in (str(i).strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def parse_alphas(text: str | float | Iterable[float]) -> list[float]:
    """Alphas from ``"0.25:3.0:0.25"`` (start:stop:step, stop included), ``"0.5,1,2"``, or both
    mixed (``"0.25:1:0.25,2,3"``); sorted, without repeats.

    The number of steps is rounded, not floored, within 1e-9 of a step, and every value is
    rounded to 12 significant digits, so ``0.1:0.3:0.1`` gives 0.1, 0.2, 0.3 and not
    0.30000000000000004 or a missing stop.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        items = [str(text)]
    elif isinstance(text, str):
        items = [part.strip() for part in text.split(",")]
    else:
        items = [str(a) for a in text]
    values: list[float] = []
    for item in items:
        if not item:
            continue
        if ":" in item:
            values += _alpha_range(item)
        else:
            values.append(_alpha_number(item, item))
    if not values:
        raise ValueError(f"no alphas in {text!r}; give start:stop:step such as 0.25:3.0:0.25, "
                         f"or a list such as 0.5,1,2")
    return sorted(set(values))


def _alpha_number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"alphas: {text!r} in {where!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"alphas: {where!r} is not finite")
    return value


def _alpha_range(item: str) -> list[float]:
    parts = item.split(":")
    if len(parts) != 3:
        raise ValueError(f"alphas: {item!r} should be start:stop:step, e.g. 0.25:3.0:0.25")
    start, stop, step = (_alpha_number(p.strip(), item) for p in parts)
    if step <= 0:
        raise ValueError(f"alphas: step must be positive in {item!r}")
    if stop < start:
        raise ValueError(f"alphas: {item!r} is an empty range (stop {stop:g} is below start {start:g})")
    steps = (stop - start) / step
    count = math.floor(steps + 1e-9) + 1
    if count > 10_000:
        raise ValueError(f"alphas: {item!r} gives {count} values; that is not a grid anyone wants to train")
    return [float(f"{start + i * step:.12g}") for i in range(count)]


def paper_preset(seeds: int | Iterable[int] = 5, base: TrainConfig | None = None,
                 learned: bool = False) -> list[TrainConfig]:
    """The paper's Table 1 and its baselines, each over ``seeds``.

    Six experiments (TimeSformer or AST transformed with sqrt, pos_scalar at its default alpha
    1.5, neg_scalar at 0.75), the plain concatenation (``none``), and the video-only and
    audio-only heads. ``base`` carries the training settings (epochs, lr, ...); ``learned``
    adds a learned-alpha head per target.
    """
    kinds = [("both", "none", "audio", None)]
    for target in ("video", "audio"):
        kinds += [("both", t, target, DEFAULT_ALPHA[t]) for t in ("sqrt", "pos_scalar", "neg_scalar")]
    kinds += [("video", "none", "video", None), ("audio", "none", "audio", None)]
    if learned:
        kinds += [("both", "learned", target, None) for target in ("video", "audio")]
    return _expand(kinds, seeds, base)


def sweep(transforms: str | Iterable[str] = ("scale",), targets: str | Iterable[str] = ("video", "audio"),
          alphas: str | Iterable[float] | None = None, seeds: int | Iterable[int] = 3,
          base: TrainConfig | None = None, baseline: bool = True, learned: bool = True) -> list[TrainConfig]:
    """Every transform x target x alpha (transforms without an alpha once per target), over ``seeds``.

    ``baseline`` adds the ``none`` head the intervals compare against; ``learned`` adds a
    learned-alpha head per target, reported beside the sweep's best alpha. An alpha outside
    a transform's range is an error naming the offending values, not silently skipped.
    """
    transforms = parse_names(transforms)
    targets = [resolve_target(t) for t in parse_names(targets)]
    if not transforms:
        raise ValueError("no transforms given")
    if not targets:
        raise ValueError("no targets given")
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {', '.join(unknown)}; choose from {', '.join(TRANSFORMS)}")
    alpha_values = parse_alphas(alphas) if alphas is not None else None
    kinds = []
    if baseline or "none" in transforms:
        kinds.append(("both", "none", "audio", None))
    for transform in transforms:
        if transform == "none":
            continue
        if transform not in SCALAR_TRANSFORMS:
            if alphas is not None and len(transforms) == 1:
                raise ValueError(f"transform {transform} takes no alpha; drop the alphas or add a transform that "
                                 f"takes one (scale, pos_scalar, neg_scalar)")
            kinds += [("both", transform, target, None) for target in targets]
            continue
        values = alpha_values if alpha_values is not None else _default_alphas(transform)
        _check_alphas(transform, values)
        kinds += [("both", transform, target, alpha) for target in targets for alpha in values]
    if learned:
        kinds += [("both", "learned", target, None) for target in targets]
    return _expand(list(dict.fromkeys(kinds)), seeds, base)


def _default_alphas(transform: str) -> list[float]:
    alpha = DEFAULT_ALPHA[transform]
    if alpha is None:
        raise ValueError(f"transform {transform} needs alphas, e.g. --alphas 0.25:3.0:0.25")
    return [alpha]


def _check_alphas(transform: str, values: Sequence[float]) -> None:
    bad, rule = [], ""
    for alpha in values:
        try:
            validate_transform(transform, alpha)
        except ValueError as exc:
            bad.append(f"{alpha:g}")
            rule = str(exc).split(", got")[0]
    if bad:
        raise ValueError(f"{rule}: alpha {', '.join(bad)} from the sweep outside it "
                         f"(scale takes any alpha > 0)")


def _expand(kinds, seeds, base: TrainConfig | None) -> list[TrainConfig]:
    base = base if base is not None else TrainConfig()
    return [replace(base, modalities=modalities, transform=transform, target=target, alpha=alpha, seed=seed)
            for modalities, transform, target, alpha in kinds for seed in seed_list(seeds)]


def configs_from_options(preset: str | None = None, transforms=None, targets=None, alphas=None,
                         seeds: int | Iterable[int] = 5, base: TrainConfig | None = None,
                         learned: bool | None = None) -> list[TrainConfig]:
    """What ``cli.py grid`` asks for: ``preset="paper"``, or a sweep of transforms x targets x alphas.

    Strings are accepted as the command line gives them (``"scale,pos_scalar"``,
    ``"timesformer,ast"``, ``"0.25:3.0:0.25"``). ``learned`` defaults to off for the preset
    (it is the paper's table) and on for a sweep.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if transforms is not None or alphas is not None or targets is not None:
            raise ValueError("give either a preset or transforms/targets/alphas, not both")
        return paper_preset(seeds, base, learned=bool(learned))
    if transforms is None and alphas is None:
        raise ValueError("nothing to run: give a preset (--preset paper) or a sweep (--transform, --alphas)")
    return sweep(transforms if transforms is not None else "scale",
                 targets if targets is not None else ("video", "audio"), alphas, seeds, base,
                 learned=True if learned is None else learned)


def config_key(cfg: TrainConfig) -> tuple:
    """What identifies a configuration across its seeds: every setting but the seed."""
    options = cfg.to_dict()
    options.pop("seed")
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(options.items()))


def describe(cfg: TrainConfig | dict) -> str:
    """Short label: ``none``, ``video only``, ``sqrt video``, ``scale audio x0.5``, ``learned video``."""
    c = cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg
    if c["modalities"] != "both":
        label = f"{c['modalities']} only"
        return label if c["transform"] == "none" else f"{label}, {c['transform']}"
    if c["transform"] == "none":
        return "none"
    alpha = c.get("alpha")
    return f"{c['transform']} {c['target']}" + ("" if alpha in (None, "") else f" x{float(alpha):g}")


# ----------------------------------------------------------------------------- running

@dataclass
class GridResult:
    """A finished grid. ``rows`` follow the configurations' order (configuration, then seed);
    ``predicted[i]`` holds row i's predicted class for every test clip."""

    rows: list[dict]
    summary: list[dict]
    best_alpha: list[dict]
    predicted: np.ndarray
    test_labels: np.ndarray
    test_clip_ids: list[str]
    method: str
    jobs: int
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)


def run_grid(train: FeatureSplit, val: FeatureSplit | None, test: FeatureSplit, configs: Sequence[TrainConfig],
             out_dir=None, *, jobs: int | None = None, method: str = "auto", progress: Progress | None = None,
             overwrite: bool = False, resamples: int = 2000, bootstrap_seed: int = 0) -> GridResult:
    """Train and score every configuration; summarise; write ``out_dir`` when given.

    ``jobs``: single-threaded worker processes (None: one per core; 1: in this process).
    ``method``: ``joblib`` trains one configuration per task with ``train_head``;
    ``vectorized`` trains stacks of heads with batched matmuls (``train_heads_stacked``);
    ``auto`` takes the faster for these head sizes (see STACKED_MAX_PARAMS). On CPU both give
    the very numbers of a single-threaded ``fuse_run`` of the same configuration and seed
    (tests/test_grid.py checks it). ``progress(done, total, row)`` is called as each
    configuration and seed finishes. Splits from other backbones, preprocessing or labels,
    an existing grid in ``out_dir`` (unless ``overwrite``) and bad arguments are refused
    before any training.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("no configurations to run")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_unique(configs)
    _check_splits(train, val, test)
    jobs = _resolve_jobs(jobs, len(configs))
    chosen = choose_method(configs, train) if method == "auto" else method
    if out_dir is not None:
        check_out_dir(out_dir, overwrite, GRID_MARKERS, "grid")
    log.info("grid: %d trainings (%d configurations), method %s, %d job(s)", len(configs),
             len({config_key(c) for c in configs}), chosen, jobs)

    started = time.perf_counter()
    scored = _run(train, val, test, configs, jobs, chosen, progress)
    seconds = time.perf_counter() - started

    ids = _config_ids(configs)
    rows = [_result_row(cfg, metrics, ids) for cfg, (metrics, _) in zip(configs, scored)]
    predicted = np.stack([p for _, p in scored])
    summary = summarize(rows, predicted, test.labels, resamples=resamples, seed=bootstrap_seed)
    result = GridResult(rows, summary, best_alphas(summary), predicted, test.labels.copy(), list(test.clip_ids),
                        chosen, jobs, seconds)
    if out_dir is not None:
        out = prepare_out_dir(out_dir, overwrite, GRID_MARKERS, "grid", known=GRID_FILES)
        result.files = write_grid(out, result, resamples)
    log.info("grid done in %.1f s", seconds)
    return result


def choose_method(configs: Sequence[TrainConfig], train: FeatureSplit) -> str:
    """``auto``'s choice: stacked heads for small heads on CPU, one process per head otherwise.

    On a GPU the heads are trained one after another in this process: the stacked path runs
    there too (method="vectorized") but has not been measured or checked on one.
    """
    if any(torch.device(c.device).type != "cpu" for c in configs):
        return "joblib"
    biggest = max(head_parameters(c, train.video.shape[1], train.audio.shape[1], train.num_classes)
                  for c in configs)
    return "vectorized" if biggest <= STACKED_MAX_PARAMS else "joblib"


def head_parameters(cfg: TrainConfig, video_dim: int, audio_dim: int, num_classes: int) -> int:
    in_dim = {"both": video_dim + audio_dim, "video": video_dim, "audio": audio_dim}[cfg.modalities]
    sizes = [in_dim, *cfg.hidden, num_classes]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _run(train, val, test, configs, jobs: int, method: str, progress) -> list[tuple[dict, np.ndarray]]:
    """Spread the trainings over ``jobs`` single-threaded processes: one task per configuration
    (joblib), or per stack of configurations (vectorized).

    Single-threaded workers rather than multi-threaded kernels: a head's steps are too small to
    split well across cores, and on a shared machine one descheduled thread stalls every
    parallel region of the others (measured: the same stacked grid took 1 s or 24 s).
    """
    tasks = _stack_tasks(configs, jobs, train) if method == "vectorized" else [[i] for i in range(len(configs))]
    if jobs == 1 or len(tasks) == 1 or torch.device(configs[0].device).type != "cpu":
        outcomes = (_task(members, method, train, val, test, [configs[i] for i in members]) for members in tasks)
    else:
        from joblib import Parallel, delayed

        # loky processes limited to one thread (set again in the task), so that a head trains
        # exactly as a single-threaded fuse_run would.
        parallel = Parallel(n_jobs=jobs, backend="loky", inner_max_num_threads=1, return_as="generator_unordered")
        outcomes = parallel(delayed(_task)(members, method, train, val, test, [configs[i] for i in members])
                            for members in tasks)
    scored: list = [None] * len(configs)
    done = 0
    for members, results in outcomes:
        for i, (metrics, predicted) in zip(members, results):
            scored[i] = (metrics, predicted)
            done += 1
            if progress is not None:
                progress(done, len(configs), {**_labels(configs[i]), **metrics})
    return scored


def stack_size(params: int) -> int:
    """Heads per stack for heads of ``params`` parameters (see STACK_PARAM_BUDGET)."""
    return max(1, min(MAX_STACK, STACK_PARAM_BUDGET // max(1, params)))


def _stack_tasks(configs: Sequence[TrainConfig], jobs: int, train: FeatureSplit) -> list[list[int]]:
    """Configurations that can share a stack, cut into at least ``jobs`` stacks of at most
    stack_size heads; the largest first, so that the last task to start is a short one."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(stack_key(cfg), []).append(i)
    tasks = []
    for members in groups.values():
        size = stack_size(head_parameters(configs[members[0]], train.video.shape[1], train.audio.shape[1],
                                          train.num_classes))
        parts = min(len(members), max(jobs, math.ceil(len(members) / size)))
        tasks += [[int(i) for i in chunk] for chunk in np.array_split(members, parts)]
    return sorted(tasks, key=len, reverse=True)


def _task(members: list[int], method: str, train, val, test, cfgs: list[TrainConfig]):
    """Train and score some configurations on one thread (a joblib task, or in-process)."""
    with single_thread(), warnings.catch_warnings():
        # joblib hands large arrays over as read-only memory maps; training only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if method == "vectorized":   # the task is already one stack (see _stack_tasks)
            results = train_heads_stacked(train, val, cfgs, max_stack=len(cfgs))
        else:
            results = [train_head(train, val, cfg) for cfg in cfgs]
        return [int(i) for i in members], [_score(result, val, test) for result in results]


def _score(result: TrainResult, val: FeatureSplit | None, test: FeatureSplit) -> tuple[dict, np.ndarray]:
    """The val and test scores fuse_run reports for this head (its metrics.json), and its
    predicted class per test clip."""
    logits = _logits(result.model, test)
    scores = score(logits, test.labels, test.num_classes, label_names=test.label_names)
    val_scores = {"top1": None, "loss": None}
    if val is not None:
        val_scores = score(_logits(result.model, val), val.labels, val.num_classes, label_names=val.label_names)
    metrics = {
        "val_top1": val_scores["top1"], "val_loss": val_scores["loss"],
        "test_top1": scores["top1"], "test_top5": scores["top5"], "test_map": scores["map"],
        "test_loss": scores["loss"], "best_epoch": result.best_epoch,
        "learned_alpha": result.model.learned_alpha, "train_seconds": result.seconds,
    }
    return metrics, logits.argmax(1).numpy().astype(np.int32)


def _logits(model, split: FeatureSplit) -> torch.Tensor:
    device = next(model.parameters()).device
    return predict_logits(model, torch.from_numpy(split.video).to(device),
                          torch.from_numpy(split.audio).to(device)).cpu()


def _resolve_jobs(jobs: int | None, tasks: int) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs is None or jobs == -1:
        jobs = available
    if not isinstance(jobs, (int, np.integer)) or jobs < 1:
        raise ValueError(f"jobs must be a positive number of processes (or -1 for all cores), got {jobs!r}")
    return int(min(jobs, tasks))


def _check_unique(configs: Sequence[TrainConfig]) -> None:
    seen = set()
    for cfg in configs:
        key = (config_key(cfg), cfg.seed)
        if key in seen:
            raise ValueError(f"configuration {describe(cfg)} with seed {cfg.seed} appears twice in the grid")
        seen.add(key)


def _check_splits(train: FeatureSplit, val: FeatureSplit | None, test: FeatureSplit | None) -> None:
    if test is None or len(test) == 0:
        raise ValueError("a grid needs a test split with clips: its results are test scores")
    if len(train) == 0:
        raise ValueError(f"train split {train.path or train.split!r} has no clips; extract it first")
    check_compatible(train, *(s for s in (val, test) if s is not None))


# ----------------------------------------------------------------------------- rows and summary

def _labels(cfg: TrainConfig) -> dict:
    # A target means nothing without a transform: leave it empty rather than print the default.
    return {"modalities": cfg.modalities, "target": cfg.target if cfg.transform != "none" else "",
            "transform": cfg.transform, "alpha": cfg.alpha, "seed": cfg.seed}


def _config_ids(configs: Sequence[TrainConfig]) -> dict[tuple, int]:
    ids: dict[tuple, int] = {}
    for cfg in configs:
        ids.setdefault(config_key(cfg), len(ids))
    return ids


def _result_row(cfg: TrainConfig, metrics: dict, ids: dict) -> dict:
    row = {**_labels(cfg), **metrics, "config_id": ids[config_key(cfg)], "config": describe(cfg)}
    row["_key"] = config_key(cfg)
    return {k: row[k] for k in (*RESULT_COLUMNS, "_key")}


def summarize(rows: Sequence[dict], predicted: np.ndarray, labels: np.ndarray, *, resamples: int = 2000,
              seed: int = 0, confidence: float = CONFIDENCE) -> list[dict]:
    """One row per configuration: mean and t-interval over seeds of each metric, and the paired
    bootstrap interval of its test top-1 minus the ``none`` baseline's over the seeds both have.

    The baseline of a configuration is the ``none`` head (both modalities) with the same
    training settings. Each row's per-clip correctness comes from ``predicted`` (one row per
    result row) against ``labels``.
    """
    correct = np.asarray(predicted) == np.asarray(labels)[None, :]
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["_key"], []).append(i)
    baselines = {_baseline_key(key): members for key, members in groups.items()
                 if dict(key)["transform"] == "none" and dict(key)["modalities"] == "both"}
    summary = []
    for key, members in groups.items():
        first = rows[members[0]]
        entry = {"config_id": first["config_id"], "config": first["config"],
                 **{k: first[k] for k in ("modalities", "target", "transform")},
                 "alpha": first["alpha"], "seeds": len(members)}
        for metric in SUMMARY_METRICS:
            values = [rows[i][metric] for i in members if rows[i][metric] is not None]
            mean, low, high = _metric_interval(metric, values, confidence) if values else (None, None, None)
            entry.update({f"{metric}_mean": mean, f"{metric}_low": low, f"{metric}_high": high})
        entry.update(_versus_baseline(rows, correct, members, baselines.get(_baseline_key(key)), resamples, seed,
                                      confidence))
        entry["_key"] = key
        summary.append(entry)
    return summary


def _metric_interval(metric: str, values: list[float], confidence: float) -> tuple[float, float, float]:
    if metric == "learned_alpha":
        # The trained parameter is log(alpha): average there, so that the mean is the geometric
        # mean and the interval, mapped back, is a positive one like alpha itself.
        return tuple(math.exp(v) for v in mean_interval(np.log(values), confidence))
    mean, low, high = mean_interval(values, confidence)
    if metric in BOUNDED_METRICS:
        # A t-interval ignores that a share lies in [0, 1]; cutting it there loses no coverage.
        low, high = max(low, 0.0), min(high, 1.0)   # nan (one seed) stays nan
    return mean, low, high


def _baseline_key(key: tuple) -> tuple:
    # Settings that must match for a paired comparison: everything about training, nothing
    # about the transform (alpha_lr only matters to learned heads, device not at all).
    ignored = {"transform", "target", "alpha", "modalities", "alpha_lr", "device"}
    return tuple(item for item in key if item[0] not in ignored)


def _versus_baseline(rows, correct, members, baseline_members, resamples, seed, confidence) -> dict:
    empty = {"vs_none_diff": None, "vs_none_low": None, "vs_none_high": None, "vs_none_seeds": 0}
    if baseline_members is None:
        return empty
    baseline_by_seed = {rows[i]["seed"]: i for i in baseline_members}
    pairs = [(i, baseline_by_seed[rows[i]["seed"]]) for i in members if rows[i]["seed"] in baseline_by_seed]
    if not pairs:
        return empty
    mine, theirs = zip(*pairs)
    boot = paired_bootstrap(correct[list(mine)], correct[list(theirs)], resamples=resamples, seed=seed,
                            confidence=confidence)
    return {"vs_none_diff": boot["diff"], "vs_none_low": boot["low"], "vs_none_high": boot["high"],
            "vs_none_seeds": boot["seeds"]}


def best_alphas(summary: Sequence[dict]) -> list[dict]:
    """Per target: the swept alpha with the best mean val top-1 (ties: lower mean val loss), beside
    the learned alpha. Chosen on validation, so its test score is an honest estimate."""
    out = []
    for target in ("video", "audio"):
        swept = [s for s in summary if s["modalities"] == "both" and s["target"] == target
                 and s["transform"] in SCALAR_TRANSFORMS]
        learned = [s for s in summary if s["modalities"] == "both" and s["target"] == target
                   and s["transform"] == "learned"]
        if not swept and not learned:
            continue
        entry = {"target": target}
        if swept:
            best = max(swept, key=lambda s: (_num(s["val_top1_mean"]), -_num(s["val_loss_mean"], math.inf)))
            entry.update({"best_alpha": best["alpha"], "best_transform": best["transform"],
                          "alphas_tried": len(swept), **_scores(best, "best")})
        if learned:
            s = learned[0]
            entry.update({"learned_alpha_mean": s["learned_alpha_mean"], "learned_alpha_low": s["learned_alpha_low"],
                          "learned_alpha_high": s["learned_alpha_high"], **_scores(s, "learned")})
        out.append(entry)
    return out


def _scores(s: dict, prefix: str) -> dict:
    return {f"{prefix}_{k}": s[k] for k in ("val_top1_mean", "test_top1_mean", "test_top1_low", "test_top1_high",
                                             "vs_none_diff", "vs_none_low", "vs_none_high")}


def _num(x, missing: float = -math.inf) -> float:
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# ----------------------------------------------------------------------------- files

def write_grid(out: Path, result: GridResult, resamples: int) -> dict[str, Path]:
    """Write results, summary, predictions and plots into ``out``; summary.json goes last."""
    out = Path(out)
    files = {"results": out / RESULTS_FILE, "summary_csv": out / SUMMARY_CSV, "predictions": out / PREDICTIONS_FILE}
    _write_csv(files["results"], result.rows, RESULT_COLUMNS)
    summary_columns = [k for k in result.summary[0] if not k.startswith("_")]
    _write_csv(files["summary_csv"], result.summary, summary_columns)
    with atomic_write(files["predictions"]) as f:
        np.savez_compressed(f, predicted=result.predicted, labels=result.test_labels,
                            clip_ids=np.array(result.test_clip_ids))
    if has_alpha_curve(result.summary):
        files["alpha_curve"] = out / ALPHA_CURVE_FILE
        with atomic_write(files["alpha_curve"]) as f:
            alpha_curve_plot(result.summary, f, len(result.test_labels))
    else:
        files["bars"] = out / BARS_FILE
        with atomic_write(files["bars"]) as f:
            bars_plot(result.summary, result.rows, f, len(result.test_labels))
    files["summary_json"] = out / SUMMARY_JSON
    payload = {
        "configs": [{k: v for k, v in s.items() if not k.startswith("_")} for s in result.summary],
        "best_alpha": result.best_alpha,
        "test_clips": len(result.test_labels), "runs": len(result.rows), "method": result.method,
        "jobs": result.jobs, "seconds": round(result.seconds, 3), "confidence": CONFIDENCE, "resamples": resamples,
        "intervals": INTERVALS_NOTE,
    }
    with atomic_write(files["summary_json"], "w") as f:
        json.dump(_json_safe(payload), f, indent=2)
    return files


INTERVALS_NOTE = (
    "*_low/*_high: 95% Student-t interval of the mean over seeds (undefined with one seed), cut to [0, 1] "
    "for accuracies and mAP; learned_alpha: geometric mean and interval, computed on log(alpha). "
    "vs_none_*: test top-1 minus the none baseline's, over the seeds both ran; the interval is a paired "
    "percentile bootstrap over test clips (per-clip correctness averaged over those seeds, clips resampled "
    "with replacement): it covers the choice of test clips, the t-interval the training noise.")


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})


def _csv_value(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# ----------------------------------------------------------------------------- plots

def has_alpha_curve(summary: Sequence[dict]) -> bool:
    """True when some transform was swept over two or more alphas on one target (the preset's
    pos_scalar 1.5 and neg_scalar 0.75 are two experiments, not a sweep)."""
    tried: dict[tuple, set] = {}
    for s in summary:
        if s["modalities"] == "both" and s["transform"] in SCALAR_TRANSFORMS:
            tried.setdefault((s["transform"], s["target"]), set()).add(s["alpha"])
    return any(len(alphas) >= 2 for alphas in tried.values())


def _curves(summary: Sequence[dict]) -> dict[str, list[dict]]:
    curves: dict[str, list[dict]] = {}
    for s in summary:
        if s["modalities"] == "both" and s["transform"] in SCALAR_TRANSFORMS:
            curves.setdefault(s["target"], []).append(s)
    # pos_scalar 1.5 and scale 1.5 are the same transform: keep one point per alpha.
    return {t: list({p["alpha"]: p for p in sorted(points, key=lambda p: p["alpha"])}.values())
            for t, points in curves.items()}


def alpha_curve_plot(summary: Sequence[dict], path, test_clips: int | None = None) -> None:
    """Test top-1 against alpha, one panel per target: mean over seeds with its 95% band, val
    top-1 dashed, the ``none`` baseline as a line with its band, the learned alpha as a star."""
    curves = {t: pts for t, pts in _curves(summary).items() if len(pts) >= 2}
    targets = [t for t in ("video", "audio") if t in curves]
    fig = Figure(figsize=(6 * len(targets), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    baseline = next((s for s in summary if s["modalities"] == "both" and s["transform"] == "none"), None)
    for ax, target in zip(axes, targets):
        pts = curves[target]
        x = [p["alpha"] for p in pts]
        ax.plot(x, [p["test_top1_mean"] for p in pts], marker="o", label="test top-1 (mean over seeds)")
        ax.fill_between(x, _nan_list(pts, "test_top1_low"), _nan_list(pts, "test_top1_high"), alpha=0.25,
                        label="95% interval over seeds")
        if any(p["val_top1_mean"] is not None for p in pts):
            ax.plot(x, _nan_list(pts, "val_top1_mean"), linestyle="--", marker=".", color="grey", label="val top-1")
        if baseline is not None:
            ax.axhline(baseline["test_top1_mean"], color="black", linewidth=1, label="none (plain concat)")
            if _finite(baseline["test_top1_low"]):
                ax.axhspan(baseline["test_top1_low"], baseline["test_top1_high"], color="black", alpha=0.07)
        learned = next((s for s in summary if s["transform"] == "learned" and s["target"] == target
                        and s["modalities"] == "both"), None)
        if learned is not None:
            a = learned["learned_alpha_mean"]
            ax.errorbar([a], [learned["test_top1_mean"]], xerr=_err(learned, "learned_alpha"),
                        yerr=_err(learned, "test_top1"), marker="*", markersize=12, color="tab:red", capsize=3,
                        linestyle="none", label=f"learned alpha {a:.2f}")
        ax.set(xlabel=f"alpha (scale on the {target} embedding)", ylabel="top-1 accuracy",
               title=f"{TARGET_NAMES[target]} scaled")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if test_clips:
        fig.suptitle(f"{test_clips} test clips: one clip = {100 / test_clips:.2g} points", fontsize=10)
    fig.savefig(path, format="png", dpi=100)


def bars_plot(summary: Sequence[dict], rows: Sequence[dict], path, test_clips: int | None = None) -> None:
    """One bar per configuration: mean test top-1 with its 95% interval over seeds, each seed a dot."""
    fig = Figure(figsize=(max(6.0, 0.8 * len(summary) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(summary))
    means = [s["test_top1_mean"] for s in summary]
    colours = ["grey" if s["transform"] == "none" else "tab:blue" for s in summary]
    ax.bar(x, means, color=colours, alpha=0.7)
    lows = [_num(s["test_top1_low"], m) for s, m in zip(summary, means)]
    highs = [_num(s["test_top1_high"], m) for s, m in zip(summary, means)]
    ax.errorbar(x, means, yerr=[np.subtract(means, lows), np.subtract(highs, means)], fmt="none", color="black",
                capsize=4, label="95% interval over seeds")
    for i, s in enumerate(summary):
        seeds = [r["test_top1"] for r in rows if r["_key"] == s["_key"]]
        ax.scatter(np.full(len(seeds), i) + np.linspace(-0.15, 0.15, len(seeds)), seeds, s=10, color="black",
                   zorder=3)
    ax.set_xticks(x, [s["config"] for s in summary], rotation=30, ha="right")
    ax.set(ylabel="test top-1 accuracy", ylim=(0, 1.05))
    clips = f", {test_clips} test clips" if test_clips else ""
    ax.set_title(f"test top-1 over {max(s['seeds'] for s in summary)} seeds (dots: seeds){clips}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=100)


def _nan_list(points, key):
    return [math.nan if p[key] is None else p[key] for p in points]


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _err(s: dict, metric: str):
    mean, low, high = s[f"{metric}_mean"], s[f"{metric}_low"], s[f"{metric}_high"]
    if not (_finite(low) and _finite(high)):
        return None
    return [[mean - low], [high - mean]]


# ----------------------------------------------------------------------------- table

def format_summary_table(summary: Sequence[dict], test_clips: int | None = None) -> str:
    """The summary as a plain-text table, then the best swept alpha beside the learned one."""
    header = ("config", "seeds", "val top-1", "test top-1 [95% CI]", "top-5", "mAP", "vs none [95% bootstrap]")
    lines = []
    for s in summary:
        if s["transform"] == "none" and s["modalities"] == "both":
            versus = "(baseline)"
        elif s["vs_none_diff"] is None:
            versus = "-"
        else:
            versus = f"{s['vs_none_diff']:+.3f} [{s['vs_none_low']:+.3f}, {s['vs_none_high']:+.3f}]"
        config = s["config"]
        if s["transform"] == "learned":
            config += f" ({_interval(s, 'learned_alpha', '.2f', 'alpha ')})"
        lines.append((config, str(s["seeds"]), _fmt(s["val_top1_mean"]), _interval(s, "test_top1"),
                      _fmt(s["test_top5_mean"]), _fmt(s["test_map_mean"]), versus))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    for b in best_alphas(summary):
        parts = []
        if "best_alpha" in b:
            parts.append(f"best alpha by val top-1 x{b['best_alpha']:g} ({b['best_transform']}, "
                         f"of {b['alphas_tried']}): test {_fmt(b['best_test_top1_mean'])}")
        if "learned_alpha_mean" in b:
            parts.append(f"learned alpha {_fmt(b['learned_alpha_mean'], '.2f')}"
                         f"{_bracket(b['learned_alpha_low'], b['learned_alpha_high'], '.2f')}: "
                         f"test {_fmt(b['learned_test_top1_mean'])}")
        out.append(f"{TARGET_NAMES[b['target']]}: " + "; ".join(parts))
    note = "intervals: t over seeds; vs none: paired bootstrap over test clips, seeds pooled"
    if test_clips:
        note += f"; {test_clips} test clips, one clip = {100 / test_clips:.2g} points"
    out.append(note)
    return "\n".join(out)


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _bracket(low, high, spec: str = ".3f") -> str:
    return "" if not (_finite(low) and _finite(high)) else f" [{low:{spec}}, {high:{spec}}]"


def _interval(s: dict, metric: str, spec: str = ".3f", prefix: str = "") -> str:
    return f"{prefix}{_fmt(s[f'{metric}_mean'], spec)}{_bracket(s[f'{metric}_low'], s[f'{metric}_high'], spec)}"
