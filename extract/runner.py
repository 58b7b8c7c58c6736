"""Stage 1: run both frozen backbones once per clip and write their embeddings to the cache.

Decoding happens in DataLoader worker processes; each batch goes through both backbones and is
written as one crash-safe part (see ``cache/parts.py``), so a run killed at any moment and
started again skips what is done. Several processes (torchrun, or ``shard=(k, n)``) each take
a disjoint shard; the last one to finish merges the parts into ``<cache dir>/<split>.h5``.
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

from cache import SplitWriter, source_stamp
from data import AudioConfig, ClipDataset, Manifest, VideoConfig

from .checkpoint import describe

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExtractionSummary:
    split: str
    cache_path: Path | None          # the merged split file; None while other shards are still running
    total: int                       # clips this shard was responsible for
    skipped: int                     # already done by an earlier run
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    without_audio: int = 0
    wall_s: float = 0.0
    data_wait_s: float = 0.0         # time the models waited for decoded batches
    model_s: float = 0.0
    interrupted: bool = False

    @property
    def clips_per_s(self) -> float:
        done = self.written + len(self.failed)
        return done / self.wall_s if self.wall_s > 0 else 0.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return torch.device(device)


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def preprocessing_for(video_model, audio_model, spatial_crops: int = 1) -> tuple[VideoConfig, AudioConfig]:
    """The preprocessing the backbones' inputs need: frames and image size, fbank length."""
    vc, ac = video_model.config, audio_model.config
    return (VideoConfig(num_frames=vc["num_frames"], img_size=vc["img_size"], spatial_crops=spatial_crops),
            AudioConfig(target_length=ac["input_tdim"]))


def cache_signature(split, label_names, video_model, audio_model, video_cfg, audio_cfg,
                    precision: str = "fp32") -> dict:
    """What the embeddings depend on (SIGNATURE_KEYS of cache/parts.py), plus labels and sources."""
    views = video_cfg.spatial_crops
    video_shape = [views, video_model.embed_dim] if views > 1 else [video_model.embed_dim]
    return {
        "split": split,
        "label_names": list(label_names),
        "backbones": {"video": describe(video_model), "audio": describe(audio_model)},
        "preprocessing": {"video": video_cfg.to_dict(), "audio": audio_cfg.to_dict()},
        "embeddings": {
            "video": {"shape": video_shape, "dtype": "float32", **({"views": views} if views > 1 else {})},
            "audio": {"shape": [audio_model.embed_dim], "dtype": "float32"},
        },
        # fp32 and bf16 embeddings differ by more than noise: never mixed in one file.
        "extraction": {"precision": precision},
        "sources": {"video": video_model.checkpoint, "audio": audio_model.checkpoint},
    }


def extract_split(manifest: Manifest, split: str, cache_dir, video_model, audio_model, *,
                  batch_size: int = 8, workers: int = 2, device: str = "auto", precision: str = "fp32",
                  spatial_crops: int = 1, limit: int | None = None, overwrite: bool = False,
                  shard: tuple[int, int] = (0, 1),
                  on_batch: Callable[[int, ExtractionSummary], None] | None = None) -> ExtractionSummary:
    """Extract one split of ``manifest`` into ``<cache_dir>/<split>.h5``; resumable, shardable.

    ``on_batch(clips_in_batch, summary)`` is called after each batch is safely written (a progress
    bar hook). The first SIGINT (Ctrl-C) stops after the batch in hand; a second one aborts.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size}, {workers}")
    dev = resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard index must be in 0..{n - 1}, got {k}")

    clips = manifest.split(split)[:limit] if limit else manifest.split(split)
    video_cfg, audio_cfg = preprocessing_for(video_model, audio_model, spatial_crops)
    meta = cache_signature(split, manifest.label_names, video_model, audio_model, video_cfg, audio_cfg, precision)
    label_index = {name: i for i, name in enumerate(manifest.label_names)}
    writer = SplitWriter(cache_dir, split, meta, [(c.clip_id, label_index[c.label], source_stamp(c.path)) for c in clips],
                         shard=shard, overwrite=overwrite)
    try:
        return _run(writer, clips[k::n], manifest, split, video_model, audio_model, video_cfg, audio_cfg, dev,
                    batch_size, workers, precision, shard, on_batch)
    finally:
        writer.close()


def _run(writer, mine, manifest, split, video_model, audio_model, video_cfg, audio_cfg, dev, batch_size, workers,
         precision, shard, on_batch) -> ExtractionSummary:
    k, n = shard
    done = writer.done_ids()
    todo = [c for c in mine if c.clip_id not in done]
    summary = ExtractionSummary(split=split, cache_path=None, total=len(mine), skipped=len(mine) - len(todo))
    log.info("%s: %d clips for shard %d/%d, %d already done, %d to extract on %s",
             split, len(mine), k, n, summary.skipped, len(todo), dev)

    video_model.to(dev)
    audio_model.to(dev)
    dataset = ClipDataset(todo, manifest.label_names, video_cfg, audio_cfg)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=dataset.collate,
                        pin_memory=dev.type == "cuda",
                        worker_init_fn=_quiet_worker, persistent_workers=False)
    start = time.perf_counter()
    with _stop_after_batch() as stop:
        batches = iter(loader)
        while not stop.is_set():
            wait = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            summary.data_wait_s += time.perf_counter() - wait
            tick = time.perf_counter()
            video_emb, audio_emb = embed_batch(video_model, audio_model, batch, dev, precision)
            summary.model_s += time.perf_counter() - tick
            ids, keep, failed = _finite_rows(batch, video_emb, audio_emb, precision)
            writer.write_batch(ids, batch["label"].numpy()[keep], {"video": video_emb[keep], "audio": audio_emb[keep]},
                               batch["has_audio"].numpy()[keep], failed)
            summary.written += len(ids)
            summary.failed += failed
            summary.without_audio += int((~batch["has_audio"].numpy()[keep]).sum())
            if on_batch:
                on_batch(len(batch["clip_id"]) + len(batch["failed"]), summary)
        summary.interrupted = stop.is_set()
    summary.wall_s = time.perf_counter() - start
    if not summary.interrupted:
        summary.cache_path = writer.finish()
    return summary


def _finite_rows(batch, video_emb, audio_emb, precision):
    """Clips whose embeddings are finite, and the others as errors (a NaN must never reach a head)."""
    finite = np.isfinite(video_emb.reshape(len(video_emb), -1)).all(1) & np.isfinite(audio_emb).all(1)
    ids = [c for c, ok in zip(batch["clip_id"], finite) if ok]
    hint = " (try --precision fp32)" if precision != "fp32" else ""
    failed = list(batch["failed"]) + [(c, f"the backbones gave NaN or infinite embeddings{hint}")
                                      for c, ok in zip(batch["clip_id"], finite) if not ok]
    return ids, np.flatnonzero(finite), failed


def embed_batch(video_model, audio_model, batch: dict, device: torch.device, precision: str = "fp32"):
    """Both backbones on one collated batch -> (video (B, Dv), audio (B, Da)) float32 numpy arrays."""
    if not batch["clip_id"]:
        return (np.zeros((0, video_model.embed_dim), np.float32), np.zeros((0, audio_model.embed_dim), np.float32))
    video = batch["video"].to(device, non_blocking=True)
    fbank = batch["fbank"].to(device, non_blocking=True)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        video_emb = embed_video(video_model, video).float()
        audio_emb = audio_model(fbank).float()
    return video_emb.cpu().numpy(), audio_emb.cpu().numpy()


def embed_video(video_model, video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B, D); (B, views, 3, T, H, W) -> one embedding per view, (B, views, D).

    Views are kept apart: evaluation averages the views' scores (TimeSformer's multi-view test).
    """
    if video.ndim == 6:
        views = video.shape[1]
        return video_model(video.flatten(0, 1)).unflatten(0, (-1, views))
    return video_model(video)


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
