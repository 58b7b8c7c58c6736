"""Stage 1: run the frozen backbones once per clip and write each one's embeddings to its store.

Each backbone (in its role) has its own store in the cache folder, ``<cache dir>/<store id>/``
(cache/stores.py). A store already finished for this split and manifest is reused untouched;
the missing ones share one DataLoader: decoding happens in its worker processes, once per clip,
for the union of the inputs those stores read. Each batch goes through each missing store's
backbone and is written as one crash-safe part per store (see ``cache/parts.py``), so a run
killed at any moment and started again skips what is done. Several processes (torchrun, or
``shard=(k, n)``) each take a disjoint shard; the last one to finish merges each store's parts
into ``<store>/<split>.h5``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from alphafuse.cache import SplitWriter, ensure_store, is_finished, source_stamp, split_path, store_identity
from alphafuse.data import ClipDataset, Manifest, VideoConfig
from alphafuse.data._container import open_input
from alphafuse.data.audio import load_fbank
from alphafuse.data.clip import LoadedClip
from alphafuse.data.dataset import dataset_for_specs
from alphafuse.data.memory import check_fits
from alphafuse.data.video import open_video_stream
from alphafuse.settings import resolve_device

from .checkpoint import describe
from .embed import PRECISIONS, Roles, embed_batch
from .registry import Extras

log = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    """How one extraction runs, validated once, here. ``tokens`` / ``layers`` ("all" or block
    indices) also cache token sequences and per-block pooled embeddings (``token_dtype``:
    float16, or float32 for exact parity checks); ``spatial_crops`` (1 or 3) and
    ``temporal_views`` (K) cache one embedding per view, (N, K * crops, ...); ``sampling``
    replaces the video backbone's rule; ``limit`` keeps the first clips of the split;
    ``overwrite`` discards this run's stores of the split; ``shard`` (k, n) takes every n-th clip
    from the k-th."""
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    precision: str = "fp32"
    tokens: bool = False
    layers: object = None            # None, "all", "i,j", a tuple of block indices, or an Extras
    token_dtype: str = "float16"
    spatial_crops: int = 1
    temporal_views: int = 1
    sampling: str | None = None
    limit: int | None = None
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name, least in (("batch_size", 1), ("workers", 0), ("temporal_views", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name.replace('_', ' ')} must be an integer >= {least}, got {value!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive number of clips, got {self.limit!r}")
        if self.spatial_crops not in (1, 3):
            raise ValueError(f"spatial crops must be 1 or 3, got {self.spatial_crops!r}")
        k, n = self.shard
        if not 0 <= k < n:
            raise ValueError(f"shard index must be in 0..{n - 1}, got {k}")
        self.extras   # parses layers and token_dtype now, so a bad value fails before any work

    @property
    def extras(self) -> Extras:
        return self.layers if isinstance(self.layers, Extras) else Extras.parse(self.tokens, self.layers,
                                                                                   self.token_dtype)


@dataclass
class StoreResult:
    """What one run did with one store of the split: ``reused`` (finished, untouched), ``written``
    (merged by this run), ``pending`` (other shards still running) or ``interrupted``."""
    id: str
    role: str
    backbone: str
    path: Path
    status: str
    embedded: int = 0                # clips this run ran through the backbone


@dataclass
class ExtractionSummary:
    split: str
    cache_path: Path | None          # <cache dir>/<split>.h5 for read_split once every store is finished, else None
    total: int                       # clips this shard was responsible for
    skipped: int                     # already done by an earlier run (in every store)
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    without_audio: int = 0
    wall_s: float = 0.0
    data_wait_s: float = 0.0         # time the models waited for decoded batches
    model_s: float = 0.0
    interrupted: bool = False
    stores: list[StoreResult] = field(default_factory=list)

    @property
    def clips_per_s(self) -> float:
        done = self.written + len(self.failed)
        return done / self.wall_s if self.wall_s > 0 else 0.0


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def cache_signature(split, label_names, roles: Roles, specs: dict, extras: Extras = Extras(),
                    precision: str = "fp32") -> dict:
    """What the embeddings depend on (SIGNATURE_KEYS of cache/parts.py), plus labels and sources."""
    return {
        "split": split,
        "label_names": list(label_names),
        "backbones": {role: describe(model) for role, model in roles.items()},
        "preprocessing": {slot: spec.to_dict() for slot, spec in specs.items()},
        "embeddings": roles.embedding_info(extras, roles.views(specs)),
        # fp32 and bf16 embeddings differ by more than noise: never mixed in one file.
        "extraction": {"precision": precision, **extras.to_dict()},
        "sources": {role: model.checkpoint for role, model in roles.items()},
    }


def extract_split(manifest: Manifest, split: str, cache_dir, video_model=None, audio_model=None, *,
                  backbone=None, config: ExtractConfig | None = None,
                  on_batch: Callable[[int, ExtractionSummary], None] | None = None, **options) -> ExtractionSummary:
    """Extract one split of ``manifest`` into the cache folder ``cache_dir``, one store per backbone
    (``<cache_dir>/<store id>/<split>.h5``, cache/stores.py); resumable, shardable.

    Backbones: ``video_model`` and/or ``audio_model``, or one audio-visual ``backbone``. How it
    runs: ``config`` (an :class:`ExtractConfig`), or its fields as keyword ``options``. A store
    already finished for this manifest is reused untouched; the missing ones share one decode of
    each clip, and a clip is decoded only for the inputs those stores read. ``on_batch(clips_in_batch,
    summary)`` is called after each batch is safely written (a progress bar hook). The first
    SIGINT (Ctrl-C) stops after the batch in hand; a second one aborts.
    """
    if config is None:
        config = ExtractConfig(**options)
    elif options:
        raise TypeError(f"give the extraction's config or its options ({', '.join(options)}), not both")
    roles = Roles.of(video_model, audio_model, backbone)
    extras = config.extras
    dev = resolve_device(config.device)
    if config.precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 precision needs a CUDA device (use fp32 or bf16 on CPU)")
    k, n = config.shard
    clips = manifest.split(split)[:config.limit] if config.limit else manifest.split(split)
    specs = roles.specs(config.spatial_crops, config.temporal_views, config.sampling)
    check_input_fits(roles, specs, config.batch_size, config.workers)
    label_index = {name: i for i, name in enumerate(manifest.label_names)}
    rows = [(c.clip_id, label_index[c.label], source_stamp(c.path)) for c in clips]
    plans = [_plan(cache_dir, split, manifest.label_names, role, model, specs, extras, config, rows)
             for role, model in roles.items()]
    try:
        for plan in plans:
            if plan.status != "reused":
                plan.writer = SplitWriter(plan.path.parent, split, plan.meta, rows, shard=config.shard,
                                          overwrite=config.overwrite)
        return _run(plans, clips[k::n], manifest, split, specs, extras, dev, config, on_batch,
                    Path(cache_dir))
    finally:
        for plan in plans:
            if plan.writer is not None:
                plan.writer.close()


@dataclass
class _Plan:
    role: str
    model: object
    path: Path                       # the store's split file
    meta: dict
    slots: tuple[str, ...]           # the inputs its backbone reads
    status: str
    writer: SplitWriter | None = None
    embedded: int = 0

    @property
    def id(self) -> str:
        return self.path.parent.name


def _plan(cache_dir, split, label_names, role, model, specs, extras, config, rows) -> _Plan:
    """The store of ``model`` in ``role``: its signature, folder, and whether it is finished."""
    declared = (model.input_specs(role, spatial_crops=config.spatial_crops) if role == "video"
                else model.input_specs(role))
    own = {slot: specs[slot] for slot in declared}
    single = Roles({role: model})
    meta = cache_signature(split, label_names, single, own, extras, config.precision)
    folder = ensure_store(cache_dir, store_identity(meta))
    meta["store_id"] = folder.name
    finished = not config.overwrite and is_finished(folder, split, meta, rows)
    return _Plan(role, model, split_path(folder, split), meta, tuple(own), "reused" if finished else "todo")


def check_input_fits(roles: Roles, specs: dict, batch_size: int, workers: int) -> None:
    """Refuse, before any clip is decoded, options whose input batches the machine cannot hold:
    each float32 batch, as many as are in flight (the one embedded, one per loader worker)."""
    import math

    per_clip = sum(math.prod(spec.output_shape) for spec in specs.values()) * 4
    in_flight = batch_size * (1 + workers)
    shapes = ", ".join(f"{slot} {tuple(spec.output_shape)}" for slot, spec in specs.items())
    options = "; ".join(f"{getattr(m, 'backbone_name', role)} " + ", ".join(f"{k}={v!r}" for k, v in
                                                                               getattr(m, "options", {}).items()
                                                                               if k not in ("seed", "arch"))
                        for role, m in roles.items())
    check_fits(per_clip * in_flight, f"input of {options} with batch_size={batch_size} and workers={workers} "
                                     f"({in_flight} clips in flight of {shapes} each)")


class _AudioOnly(ClipDataset):
    """Decodes a clip's audio input only (a run whose missing stores read no video); the video
    stream is still opened, so a file without one is the same error in every store."""

    def _load(self, clip) -> LoadedClip:
        with open_input(clip.path, clip.clip_id) as container:
            open_video_stream(container, clip.clip_id)
        spec = self.audio_cfg
        audio, has_audio = (spec.load(clip.path, clip.clip_id) if hasattr(spec, "load")
                            else load_fbank(clip.path, spec, clip.clip_id))
        return LoadedClip(torch.zeros(0), audio, has_audio)


def _run(plans, mine, manifest, split, specs, extras, dev, config, on_batch, cache_dir) -> ExtractionSummary:
    k, n = config.shard
    active = [p for p in plans if p.writer is not None]
    done = {p.id: p.writer.done_ids() for p in active}
    todo = [c for c in mine if any(c.clip_id not in done[p.id] for p in active)]
    summary = ExtractionSummary(split=split, cache_path=None, total=len(mine), skipped=len(mine) - len(todo))
    log.info("%s: %d clips for shard %d/%d, %d already done, %d to extract on %s (stores: %s)", split, len(mine),
             k, n, summary.skipped, len(todo), dev, ", ".join(f"{p.id} {p.status}" for p in plans))
    for plan in active:
        plan.model.to(dev)
    slots = {slot for p in active for slot in p.slots}
    # The dataset Backbone.preprocess builds too (one clip's tensors are the same); audio alone
    # when the missing stores read no video.
    dataset = (_AudioOnly(todo, manifest.label_names, VideoConfig(), specs["audio"]) if slots == {"audio"}
               else dataset_for_specs(todo, manifest.label_names, specs))
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers if todo else 0,
                        collate_fn=dataset.collate, pin_memory=dev.type == "cuda",
                        worker_init_fn=_quiet_worker, persistent_workers=False)
    start = time.perf_counter()
    with _stop_after_batch() as stop:
        batches = iter(loader)
        while active and not stop.is_set():
            wait = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            summary.data_wait_s += time.perf_counter() - wait
            _write_batch(active, done, batch, dev, config.precision, extras, summary)
            if on_batch:
                on_batch(len(batch["clip_id"]) + len(batch["failed"]), summary)
        summary.interrupted = stop.is_set()
    summary.wall_s = time.perf_counter() - start
    for plan in plans:
        if plan.writer is not None and not summary.interrupted:
            plan.status = "written" if plan.writer.finish() is not None else "pending"
        elif plan.writer is not None:
            plan.status = "interrupted"
        summary.stores.append(StoreResult(plan.id, plan.role, plan.meta["backbones"][plan.role]["name"], plan.path,
                                          plan.status, plan.embedded))
    if all(p.status in ("reused", "written") for p in plans):
        summary.cache_path = split_path(cache_dir, split)
    return summary


def _write_batch(active, done, batch, dev, precision, extras, summary) -> None:
    """One decoded batch through every store that still needs its clips; a clip any backbone
    embeds as NaN or infinite is an error in each of them (a NaN must never reach a head)."""
    ids = batch["clip_id"]
    tick = time.perf_counter()
    results = {}
    for plan in active:
        rows = [i for i, c in enumerate(ids) if c not in done[plan.id]]
        index = slice(None) if len(rows) == len(ids) else torch.tensor(rows, dtype=torch.long)
        sub = {"clip_id": [ids[i] for i in rows], "video": batch["video"][index], "fbank": batch["fbank"][index]}
        results[plan.id] = (rows, embed_batch(Roles({plan.role: plan.model}), sub, dev, precision, extras,
                                              plan.meta["embeddings"]))
        plan.embedded += len(rows)
    summary.model_s += time.perf_counter() - tick
    finite = np.ones(len(ids), dtype=bool)
    for rows, embeddings in results.values():
        for value in embeddings.values():
            finite[rows] &= np.isfinite(value).all(axis=tuple(range(1, value.ndim)))
    hint = " (try --precision fp32)" if precision != "fp32" else ""
    labels, has_audio = batch["label"].numpy(), batch["has_audio"].numpy()
    for plan in active:
        rows, embeddings = results[plan.id]
        keep = [j for j, i in enumerate(rows) if finite[i]]
        failed = [(c, r) for c, r in batch["failed"] if c not in done[plan.id]]
        failed += [(ids[i], f"the backbones gave NaN or infinite embeddings{hint}") for i in rows if not finite[i]]
        picked = [rows[j] for j in keep]
        plan.writer.write_batch([ids[i] for i in picked], labels[picked],
                                {name: e[keep] for name, e in embeddings.items()}, has_audio[picked], failed)
    written = [i for i in range(len(ids)) if finite[i]]
    summary.written += len(written)
    summary.failed += list(batch["failed"]) + [(ids[i], f"the backbones gave NaN or infinite embeddings{hint}")
                                               for i in range(len(ids)) if not finite[i]]
    summary.without_audio += int((~has_audio[written]).sum())


def _finite_rows(batch, embeddings: dict, precision: str):
    """Clips whose embeddings are finite, and the others as errors (a NaN must never reach a head)."""
    finite = np.ones(len(batch["clip_id"]), dtype=bool)
    for value in embeddings.values():
        finite &= np.isfinite(value).all(axis=tuple(range(1, value.ndim)))
    ids = [c for c, ok in zip(batch["clip_id"], finite) if ok]
    hint = " (try --precision fp32)" if precision != "fp32" else ""
    failed = list(batch["failed"]) + [(c, f"the backbones gave NaN or infinite embeddings{hint}")
                                      for c, ok in zip(batch["clip_id"], finite) if not ok]
    return ids, np.flatnonzero(finite), failed


def _quiet_worker(_worker_id: int) -> None:
    # Ctrl-C goes to the whole process group; workers keep decoding so the main process can
    # finish its batch and stop cleanly. One torch thread each: the workers are the parallelism.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


@contextlib.contextmanager
def _stop_after_batch():
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("interrupted: stopping after the current batch (Ctrl-C again to abort now)")
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
