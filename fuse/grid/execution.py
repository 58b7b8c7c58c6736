"""Running a grid: every configuration and seed trained and scored, in parallel processes.

Concat heads (MLPs) can be trained K at a time as stacked tensors (fuse/stacked.py, the
``vectorized`` method); every other head, and concat heads that cannot be stacked (modality
dropout, early stopping, views, float16 or lazily read inputs), trains one configuration per
task with ``train_head``. Tasks run in single-threaded worker processes (joblib/loky).
"""
from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alphafuse.cache import FeatureSplit, check_compatible

from ..config import TrainConfig
from ..evaluation import learnable, predicted_classes, split_logits
from ..heads import MODALITY_NAMES
from ..inputs import require_embeddings
from ..metrics import score, seen_in_train
from ..folder import check_kind, claim, mark, remove_files
from ..provenance import cache_identity
from ..run import check_out_dir
from ..stacked import stack_key, stackable, train_heads_stacked
from ..train import TrainResult, single_thread, train_head
from .configs import config_key, describe
from .report import GRID_FILES, GRID_MARKERS, RESULT_COLUMNS, write_grid
from .resume import ROWS_DIR, check_same_settings, grid_settings, load_rows, save_row
from .summary import best_alphas, compare_heads, compare_pairs, summarize

log = logging.getLogger(__name__)

METHODS = ("auto", "joblib", "vectorized")

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


@dataclass
class GridResult:
    """A finished grid. ``rows`` follow the configurations' order (configuration, then seed);
    ``predicted[i]`` holds row i's predicted class for every test clip. ``ceiling``: how many
    test clips have a label seen in training (no head can get the others right)."""

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
    ceiling: dict = field(default_factory=dict)
    head_comparison: list[dict] = field(default_factory=list)
    # Row i's predicted class per test clip with that modality's inputs zeroed (the confusion rates).
    predicted_zeroed: dict[str, np.ndarray] = field(default_factory=dict)
    vggsounder: dict = field(default_factory=dict)   # grid/vggsounder.py: the labels and clips matched
    pair_comparison: list[dict] = field(default_factory=list)


def run_grid(train: FeatureSplit, val: FeatureSplit | None, test: FeatureSplit, configs: Sequence[TrainConfig],
             out_dir=None, *, jobs: int | None = None, method: str = "auto", progress: Progress | None = None,
             overwrite: bool = False, resamples: int = 2000, bootstrap_seed: int = 0,
             vggsounder=None, record: dict | None = None) -> GridResult:
    """Train and score every configuration; summarise; write ``out_dir`` when given.

    ``jobs``: single-threaded worker processes (None: one per core; 1: in this process).
    ``method``: ``joblib`` trains one configuration per task with ``train_head``;
    ``vectorized`` trains the stackable concat heads in stacks with batched matmuls
    (``train_heads_stacked``) and the others one per task; ``auto`` takes the faster for these
    head sizes (see STACKED_MAX_PARAMS). On CPU both give the very numbers of a single-threaded
    ``fuse_run`` of the same configuration and seed (tests/test_grid.py checks it).
    ``progress(done, total, row)`` is called as each configuration and seed finishes. Splits
    from other backbones, preprocessing or labels, or lacking an embedding a head reads, an
    existing grid in ``out_dir`` (unless ``overwrite``), a run folder, a folder another command
    is writing, and bad arguments are refused before any training or folder. With ``out_dir``,
    each row is saved as it finishes and a grid stopped midway resumes (fuse/grid/resume.py);
    ``record``: more to write into config.json. ``vggsounder``: the test split matched to
    VGGSounder (``fuse.vggsounder.match``), whose hit@1 and confusion rates then join the
    summary (grid/vggsounder.py).
    """
    configs = _check_configs(configs, method)
    _check_splits(train, val, test, configs)
    jobs = _resolve_jobs(jobs, len(configs))
    chosen = choose_method(configs, train) if method == "auto" else method
    if out_dir is None:
        return _grid(train, val, test, configs, jobs, chosen, progress, resamples, bootstrap_seed, None, {},
                     vggsounder)
    check_kind(out_dir, "grid")
    check_out_dir(out_dir, overwrite, GRID_MARKERS, "grid")
    identity = cache_identity({"train": train, "val": val, "test": test})
    settings = grid_settings(configs, identity, resamples, bootstrap_seed)
    with claim(out_dir, "grid", GRID_FILES) as folder:
        out = check_out_dir(out_dir, overwrite, GRID_MARKERS, "grid")   # again, under the lock
        if overwrite or folder.settings is None:
            remove_files(out, GRID_FILES)   # an overwritten grid, or one from before resumable grids
        else:
            check_same_settings(out, folder.settings, settings)
        mark(out, "grid", settings)
        done = load_rows(out, configs)
        config = {"command": "grid", "cache": identity, "configs": len(configs), "backbones": train.backbones,
                  "preprocessing": train.preprocessing, "extraction": train.attrs.get("extraction", {}),
                  **(record or {})}
        result = _grid(train, val, test, configs, jobs, chosen, progress, resamples, bootstrap_seed, out, done,
                       vggsounder)
        result.files = write_grid(out, result, resamples, config)
        remove_files(out, [ROWS_DIR])   # summary.json says it all now; the rows served resumption
    return result


def _grid(train, val, test, configs, jobs, chosen, progress, resamples, bootstrap_seed, out, done,
          vggsounder=None) -> GridResult:
    """Train the configurations not ``done`` (saving each row into ``out`` as it finishes), then summarise."""
    todo = [i for i in range(len(configs)) if i not in done]
    log.info("grid: %d trainings (%d configurations, %d done before), method %s, %d job(s)", len(todo),
             len({config_key(c) for c in configs}), len(done), chosen, jobs)
    scored: list = [done.get(i) for i in range(len(configs))]

    def finished(j, metrics, predicted):
        i = todo[j]
        scored[i] = (metrics, predicted)
        if out is not None:
            save_row(out, i, configs[i], metrics, predicted)

    started = time.perf_counter()
    if todo:
        _run(train, val, test, [configs[i] for i in todo], min(jobs, len(todo)), chosen, progress, finished,
             offset=len(done), total=len(configs))
    seconds = time.perf_counter() - started

    ids = _config_ids(configs)
    rows = [_result_row(cfg, metrics, ids) for cfg, (metrics, _) in zip(configs, scored)]
    return _finish(rows, np.stack([p for _, p in scored]), train, test, chosen, jobs, seconds, resamples,
                   bootstrap_seed, vggsounder)


def _finish(rows, every, train, test, method, jobs, seconds, resamples, bootstrap_seed,
            vggsounder=None) -> GridResult:
    """Summaries and comparisons of trained and scored rows (run_grid, run_pair_grid); ``every``:
    (rows, both / no video / no audio, clips) predicted classes."""
    predicted = every[:, 0]
    summary = summarize(rows, predicted, test.labels, resamples=resamples, seed=bootstrap_seed)
    comparison = compare_heads(summary, rows, predicted, test.labels, resamples=resamples, seed=bootstrap_seed)
    pairs = compare_pairs(summary, rows, predicted, test.labels, resamples=resamples, seed=bootstrap_seed)
    ceiling = learnable(train, test)
    for entry in summary:   # the table and plots read them from any summary row
        entry["_context"] = {"ceiling": ceiling, "head_comparison": comparison, "pair_comparison": pairs,
                             "test_clips": len(test)}
    result = GridResult(rows, summary, best_alphas(summary), predicted, test.labels.copy(), list(test.clip_ids),
                        method, jobs, seconds, ceiling=ceiling, head_comparison=comparison, pair_comparison=pairs,
                        predicted_zeroed={f"no_{m}": every[:, 1 + i] for i, m in enumerate(MODALITY_NAMES)})
    if vggsounder is not None:
        from .vggsounder import add_vggsounder
        add_vggsounder(result, vggsounder, resamples=resamples, seed=bootstrap_seed)
    log.info("grid done in %.1f s", seconds)
    return result


def run_pair_grid(pairs: dict, configs: Sequence[TrainConfig], out_dir=None, *, jobs: int | None = None,
                  method: str = "auto", progress: Progress | None = None, overwrite: bool = False,
                  resamples: int = 2000, bootstrap_seed: int = 0, record: dict | None = None) -> GridResult:
    """Encoder pairs as a grid axis. ``pairs`` maps a label (``"timesformer+ast"``) to that pair's
    (train, val, test), its stores combined (cache.open_split); every pair must hold the same
    test clips with the same labels, so that its rows are paired with the others'.

    Every pair trains ``configs`` under the same seeds (rows labelled ``"<pair>: <config>"``,
    with a ``pair`` column), except the unimodal ones (modalities video or audio), which depend
    on one encoder only: they run once per encoder, with the first pair that has it, labelled
    ``"<encoder>: video only"``. Each configuration is compared with its own pair's ``none``
    baseline (``vs_none``), each pair's heads with each other, and each pair's ``none`` with
    every other pair's (``pair_comparison``), all by the paired bootstrap over the test clips.
    """
    if not pairs:
        raise ValueError("no encoder pairs to compare")
    configs = _check_configs(configs, method)
    labels = list(pairs)
    first_train, _, first_test = pairs[labels[0]]
    for label in labels:
        train, val, test = pairs[label]
        _check_splits(train, val, test, configs)
        _check_same_test(labels[0], first_test, label, test)
    if out_dir is not None:
        check_kind(out_dir, "grid")
        check_out_dir(out_dir, overwrite, GRID_MARKERS, "grid")
    started = time.perf_counter()
    rows, predicted, seen, ids, used_jobs, methods = [], [], set(), {}, 1, set()
    for label in labels:
        train, val, test = pairs[label]
        encoders = _encoders(label, train)
        cfgs = [c for c in configs if c.modalities == "both" or encoders[c.modalities] not in seen]
        seen |= set(encoders.values())
        used_jobs = max(used_jobs, _resolve_jobs(jobs, len(cfgs)))
        chosen = choose_method(cfgs, train) if method == "auto" else method
        methods.add(chosen)
        scored: list = [None] * len(cfgs)
        _run(train, val, test, cfgs, _resolve_jobs(jobs, len(cfgs)), chosen, progress,
             lambda i, metrics, pred, scored=scored: scored.__setitem__(i, (metrics, pred)))
        for cfg, (metrics, pred) in zip(cfgs, scored):
            key = (("pair", label), *config_key(cfg))
            ids.setdefault(key, len(ids))
            shown = label if cfg.modalities == "both" else encoders[cfg.modalities][1]
            row = {**_labels(cfg), **metrics, "config_id": ids[key], "config": f"{shown}: {describe(cfg)}",
                   "pair": label}
            rows.append({**{k: row[k] for k in ("pair", *RESULT_COLUMNS)}, "_key": key})
            predicted.append(pred)
    result = _finish(rows, np.stack(predicted), first_train, first_test, "+".join(sorted(methods)), used_jobs,
                     time.perf_counter() - started, resamples, bootstrap_seed)
    if out_dir is not None:   # written whole at the end (a pairs grid does not resume row by row)
        with claim(out_dir, "grid", GRID_FILES):
            out = check_out_dir(out_dir, overwrite, GRID_MARKERS, "grid")   # again, under the lock
            remove_files(out, GRID_FILES)
            identities = {label: cache_identity(dict(zip(("train", "val", "test"), pairs[label]))) for label in labels}
            mark(out, "grid", {"pairs": labels})
            result.files = write_grid(out, result, resamples, {"command": "grid", "pairs": identities,
                                                               "configs": len(configs), **(record or {})})
    return result


def _encoders(label: str, train: FeatureSplit) -> dict:
    """{modality: (store id, shown name)} of a pair: its stores where the cache records them."""
    stores = train.attrs.get("stores") or {}
    names = label.split("+") if "+" in label else [label, label]
    return {m: (stores.get(m) or stores.get("audiovisual") or name, name) for m, name in zip(("video", "audio"), names)}


def _check_same_test(label_a: str, a: FeatureSplit, label_b: str, b: FeatureSplit) -> None:
    if a.clip_ids != b.clip_ids or not np.array_equal(a.labels, b.labels) or a.label_names != b.label_names:
        differ = next((x for x, y in zip(a.clip_ids, b.clip_ids) if x != y), None)
        if differ is None:
            differ = next((c for c in a.clip_ids + b.clip_ids if (c in a.clip_ids) != (c in b.clip_ids)), None)
        if differ is None and a.label_names == b.label_names:
            differ = a.clip_ids[int(np.flatnonzero(a.labels != b.labels)[0])]
        raise ValueError(f"pairs {label_a} and {label_b} have other test clips or labels (e.g. clip {differ}); "
                         f"their rows cannot be paired: extract every pair from one manifest")


def choose_method(configs: Sequence[TrainConfig], train: FeatureSplit) -> str:
    """``auto``'s choice: stacked heads for small concat heads on CPU, one process per head otherwise.

    On a GPU the heads are trained one after another in this process: the stacked path runs
    there too (method="vectorized") but has not been measured or checked on one.
    """
    if any(torch.device(c.device).type != "cpu" for c in configs):
        return "joblib"
    stacked = [c for c in configs if stackable(c, train)]
    if not stacked:
        return "joblib"
    biggest = max(head_parameters(c, train.video.shape[1], train.audio.shape[1], train.num_classes) for c in stacked)
    return "vectorized" if biggest <= STACKED_MAX_PARAMS else "joblib"


def head_parameters(cfg: TrainConfig, video_dim: int, audio_dim: int, num_classes: int) -> int:
    """Parameters of a concat head (its MLP) of this configuration."""
    in_dim = {"both": video_dim + audio_dim, "video": video_dim, "audio": audio_dim}[cfg.modalities]
    sizes = [in_dim, *cfg.hidden, num_classes]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _run(train, val, test, configs, jobs: int, method: str, progress, finished, offset: int = 0,
         total: int | None = None) -> None:
    """Spread the trainings over ``jobs`` single-threaded processes: one task per configuration,
    or per stack of configurations.

    Single-threaded workers rather than multi-threaded kernels: a head's steps are too small to
    split well across cores, and on a shared machine one descheduled thread stalls every
    parallel region of the others (measured: the same stacked grid took 1 s or 24 s).
    """
    tasks = _tasks(configs, jobs, train, method)
    if jobs == 1 or len(tasks) == 1 or torch.device(configs[0].device).type != "cpu":
        outcomes = (_task(members, stacked, train, val, test, [configs[i] for i in members])
                    for members, stacked in tasks)
    else:
        from joblib import Parallel, delayed

        # loky processes limited to one thread (set again in the task), so that a head trains
        # exactly as a single-threaded fuse_run would.
        parallel = Parallel(n_jobs=jobs, backend="loky", inner_max_num_threads=1, return_as="generator_unordered")
        outcomes = parallel(delayed(_task)(members, stacked, train, val, test, [configs[i] for i in members])
                            for members, stacked in tasks)
    done, total = offset, total or len(configs)
    for members, results in outcomes:
        for i, (metrics, predicted) in zip(members, results):
            finished(i, metrics, predicted)   # saved at once: a grid stopped later resumes after it
            done += 1
            if progress is not None:
                progress(done, total, {**_labels(configs[i]), **metrics})


def stack_size(params: int) -> int:
    """Heads per stack for heads of ``params`` parameters (see STACK_PARAM_BUDGET)."""
    return max(1, min(MAX_STACK, STACK_PARAM_BUDGET // max(1, params)))


def _tasks(configs: Sequence[TrainConfig], jobs: int, train: FeatureSplit, method: str) -> list[tuple[list[int], bool]]:
    """(members, stacked) tasks. With ``vectorized``, the configurations that can share a stack,
    cut into at least ``jobs`` stacks of at most stack_size heads; every other configuration
    alone. Heads other than concat first (the slowest), then the largest stacks, so that the
    last task to start is a short one."""
    groups: dict[tuple, list[int]] = {}
    singles = []
    for i, cfg in enumerate(configs):
        if method == "vectorized" and stackable(cfg, train):
            groups.setdefault(stack_key(cfg), []).append(i)
        else:
            singles.append(i)
    tasks = [([i], False) for i in singles]
    for members in groups.values():
        size = stack_size(head_parameters(configs[members[0]], train.video.shape[1], train.audio.shape[1],
                                          train.num_classes))
        parts = min(len(members), max(jobs, math.ceil(len(members) / size)))
        tasks += [([int(i) for i in chunk], True) for chunk in np.array_split(members, parts)]
    return sorted(tasks, key=lambda t: (configs[t[0][0]].head == "concat", -len(t[0])))


def _task(members: list[int], stacked: bool, train, val, test, cfgs: list[TrainConfig]):
    """Train and score some configurations on one thread (a joblib task, or in-process)."""
    with single_thread(), warnings.catch_warnings():
        # joblib hands large arrays over as read-only memory maps; training only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if stacked:   # the task is already one stack (see _tasks)
            results = train_heads_stacked(train, val, cfgs, max_stack=len(cfgs))
        else:
            results = [train_head(train, val, cfg) for cfg in cfgs]
        allowed = seen_in_train(train)
        return [int(i) for i in members], [_score(result, val, test, allowed) for result in results]


def _score(result: TrainResult, val: FeatureSplit | None, test: FeatureSplit, allowed) -> tuple[dict, np.ndarray]:
    """The val and test scores fuse_run reports for this head (its metrics.json), its test top-1
    with each modality zeroed, and its predicted class per test clip: (3, clips), with both
    modalities, then with each of MODALITY_NAMES zeroed (as missing_modality_top1 scores it), all
    over the ``allowed`` classes (those seen in training; metrics.mask_unseen)."""
    logits = split_logits(result.model, test)
    scores = score(logits, test.labels, test.num_classes, label_names=test.label_names, allowed=allowed)
    val_scores = {"top1": None, "loss": None}
    if val is not None:
        val_scores = score(split_logits(result.model, val), val.labels, val.num_classes, label_names=val.label_names,
                           allowed=allowed)
    zeroed = [predicted_classes(split_logits(result.model, test, zeroed=(m,)), allowed) for m in MODALITY_NAMES]
    missing = {f"no_{m}": float((p == test.labels).mean()) for m, p in zip(MODALITY_NAMES, zeroed)}
    trained = result.model.trained_values()
    metrics = {
        "val_top1": val_scores["top1"], "val_loss": val_scores["loss"],
        "test_top1": scores["top1"], "test_top5": scores["top5"], "test_map": scores["map"],
        "test_loss": scores["loss"], "test_top1_no_video": missing["no_video"],
        "test_top1_no_audio": missing["no_audio"], "best_epoch": result.best_epoch,
        "learned_alpha": trained.get("learned_alpha"), "learned_weight": trained.get("learned_weight"),
        "train_seconds": result.seconds,
    }
    return metrics, np.stack([predicted_classes(logits, allowed), *zeroed]).astype(np.int32)


def _resolve_jobs(jobs: int | None, tasks: int) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs is None or jobs == -1:
        jobs = available
    if not isinstance(jobs, (int, np.integer)) or jobs < 1:
        raise ValueError(f"jobs must be a positive number of processes (or -1 for all cores), got {jobs!r}")
    return int(min(jobs, tasks))


def _check_configs(configs: Sequence[TrainConfig], method: str) -> list[TrainConfig]:
    """The configurations as a list, refused when empty, repeated, or with an unknown ``method``."""
    configs = list(configs)
    if not configs:
        raise ValueError("no configurations to run")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_unique(configs)
    return configs


def _check_unique(configs: Sequence[TrainConfig]) -> None:
    seen = set()
    for cfg in configs:
        key = (config_key(cfg), cfg.seed)
        if key in seen:
            raise ValueError(f"configuration {describe(cfg)} with seed {cfg.seed} appears twice in the grid")
        seen.add(key)


def _check_splits(train: FeatureSplit, val: FeatureSplit | None, test: FeatureSplit | None, configs) -> None:
    if test is None or len(test) == 0:
        raise ValueError("a grid needs a test split with clips: its results are test scores")
    if len(train) == 0:
        raise ValueError(f"train split {str(train.path or train.split)!r} has no clips; extract it first")
    check_compatible(train, *(s for s in (val, test) if s is not None))
    for names, head in {cfg.needs(): cfg.head for cfg in configs}.items():
        for split in (s for s in (train, val, test) if s is not None):
            require_embeddings(split, names, head)
    if val is None and any(cfg.patience is not None for cfg in configs):
        raise ValueError("patience stops on the val score: give a val split, or no patience")


def _labels(cfg: TrainConfig) -> dict:
    # A target means nothing without a transform: leave it empty rather than print the default.
    return {"head": cfg.head, "modalities": cfg.modalities, "target": cfg.target if cfg.transform != "none" else "",
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
