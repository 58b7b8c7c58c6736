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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from alphafuse.cache import SplitWriter, source_stamp
from alphafuse.data import Manifest, VideoConfig
from alphafuse.data.dataset import dataset_for_specs
from alphafuse.data.memory import check_fits

from .checkpoint import describe
from .registry import Extras

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
        raise ValueError(f"device {device}: CUDA is not available on this machine (use cpu or auto)")
    return torch.device(device)


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Roles(dict):
    """Which backbone encodes what in one extraction: {"video": model, "audio": model}, or
    {"audiovisual": model} for one model of both (CAV-MAE, TSAM). A model registered as
    audiovisual may also serve one modality only (CAV-MAE's audio tower beside TimeSformer)."""

    @classmethod
    def of(cls, video_model=None, audio_model=None, backbone=None) -> "Roles":
        if backbone is not None:
            if video_model is not None or audio_model is not None:
                raise ValueError("give either one audio-visual backbone or video and audio backbones, not both")
            return cls(audiovisual=backbone)
        roles = cls({k: m for k, m in (("video", video_model), ("audio", audio_model)) if m is not None})
        if not roles:
            raise ValueError("no backbone to extract with")
        return roles

    def specs(self, spatial_crops: int = 1, temporal_views: int = 1, sampling: str | None = None) -> dict:
        """The data/ specs of each input slot ("video": VideoConfig, "audio": AudioConfig), with
        the views asked for: a video backbone declares its own crop protocol (input_specs's
        spatial_crops); temporal views and another sampling rule apply to any video spec."""
        several = spatial_crops != 1 or temporal_views != 1
        if several and "video" not in self:
            raise ValueError("several views are for a video backbone; an audio-visual backbone takes its own frames")
        specs = {}
        for modality, model in self.items():
            declared = (model.input_specs(modality, spatial_crops=spatial_crops) if modality == "video"
                        else model.input_specs(modality))
            for slot, spec in declared.items():
                if slot in specs and specs[slot] != spec:
                    raise ValueError(f"two backbones need different {slot} preprocessing; use one audio-visual "
                                     f"backbone alone or backbones of one modality each")
                specs[slot] = spec
        if "video" in specs and (temporal_views != 1 or sampling):
            if not isinstance(specs["video"], VideoConfig):
                name = next(m.backbone_name for m in self.values() if hasattr(m, "backbone_name"))
                if sampling or not hasattr(specs["video"], "temporal_views"):
                    raise ValueError(f"the {name} backbone samples its frames by its own reference rule: "
                                     + ("no other sampling rule" if sampling else "no temporal views"))
                specs["video"] = replace(specs["video"], temporal_views=temporal_views)
                return specs
            changes = {"temporal_views": temporal_views, **({"sampling": sampling, "sampling_options": {}}
                                                           if sampling else {})}
            specs["video"] = replace(specs["video"], **changes)
        return specs

    def views(self, specs: dict) -> int:
        video = specs.get("video")
        return video.views if video is not None and "video" in self else 1

    def embedding_info(self, extras: Extras, views: int = 1) -> dict:
        """name -> {"shape", "dtype", "role"[, "views"]} of every embedding the extraction writes."""
        info = {}
        for modality, model in self.items():
            for name, shape in model.embedding_shapes(modality, extras).items():
                if name in info:
                    raise ValueError(f"two backbones both produce a {name!r} embedding")
                # A backbone may declare views of its own (CAV-MAE's 10 frames): {"shape", "views"}.
                declared = dict(shape) if isinstance(shape, dict) else {"shape": list(shape)}
                per_view = views > 1 and modality == "video"
                pooled = "_" not in name      # tokens and layers: fp16 on disk, they are big
                if per_view:
                    declared.update(shape=[views, *declared["shape"]], views=views)
                info[name] = {"dtype": "float32" if pooled else extras.dtype, "role": modality, **declared,
                              "shape": list(declared["shape"])}
        return info


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
                  backbone=None, tokens: bool = False, layers=None, token_dtype: str = "float16",
                  temporal_views: int = 1,
                  sampling: str | None = None,
                  batch_size: int = 8, workers: int = 2, device: str = "auto", precision: str = "fp32",
                  spatial_crops: int = 1, limit: int | None = None, overwrite: bool = False,
                  shard: tuple[int, int] = (0, 1),
                  on_batch: Callable[[int, ExtractionSummary], None] | None = None) -> ExtractionSummary:
    """Extract one split of ``manifest`` into ``<cache_dir>/<split>.h5``; resumable, shardable.

    Backbones: ``video_model`` and/or ``audio_model``, or one audio-visual ``backbone``.
    ``tokens`` / ``layers`` ("all" or block indices) also cache token sequences and per-block
    pooled embeddings (``token_dtype``: float16 by default, float32 for exact parity checks). ``spatial_crops`` (1 or 3) and ``temporal_views`` (K) cache one
    embedding per view, (N, K * crops, ...); ``sampling`` replaces the video backbone's rule. ``on_batch(clips_in_batch, summary)`` is called after each
    batch is safely written (a progress bar hook). The first SIGINT (Ctrl-C) stops after the
    batch in hand; a second one aborts.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of clips, got {limit!r}")
    if spatial_crops not in (1, 3):
        raise ValueError(f"spatial crops must be 1 or 3, got {spatial_crops!r}")
    if isinstance(temporal_views, bool) or not isinstance(temporal_views, int) or temporal_views < 1:
        raise ValueError(f"temporal views must be a positive integer, got {temporal_views!r}")
    roles = Roles.of(video_model, audio_model, backbone)
    extras = layers if isinstance(layers, Extras) else Extras.parse(tokens, layers, token_dtype)
    dev = resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 precision needs a CUDA device (use fp32 or bf16 on CPU)")
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard index must be in 0..{n - 1}, got {k}")

    clips = manifest.split(split)[:limit] if limit else manifest.split(split)
    specs = roles.specs(spatial_crops, temporal_views, sampling)
    check_input_fits(roles, specs, batch_size, workers)
    meta = cache_signature(split, manifest.label_names, roles, specs, extras, precision)
    label_index = {name: i for i, name in enumerate(manifest.label_names)}
    writer = SplitWriter(cache_dir, split, meta, [(c.clip_id, label_index[c.label], source_stamp(c.path)) for c in clips],
                         shard=shard, overwrite=overwrite)
    try:
        return _run(writer, clips[k::n], manifest, split, roles, specs, meta["embeddings"], extras, dev,
                    batch_size, workers, precision, shard, on_batch)
    finally:
        writer.close()


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


def _run(writer, mine, manifest, split, roles, specs, info, extras, dev, batch_size, workers, precision, shard,
         on_batch) -> ExtractionSummary:
    k, n = shard
    done = writer.done_ids()
    todo = [c for c in mine if c.clip_id not in done]
    summary = ExtractionSummary(split=split, cache_path=None, total=len(mine), skipped=len(mine) - len(todo))
    log.info("%s: %d clips for shard %d/%d, %d already done, %d to extract on %s",
             split, len(mine), k, n, summary.skipped, len(todo), dev)

    for model in roles.values():
        model.to(dev)
    dataset = dataset_for_specs(todo, manifest.label_names, specs)
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
            embeddings = embed_batch(roles, batch, dev, precision, extras, info)
            summary.model_s += time.perf_counter() - tick
            ids, keep, failed = _finite_rows(batch, embeddings, precision)
            writer.write_batch(ids, batch["label"].numpy()[keep], {name: e[keep] for name, e in embeddings.items()},
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


def embed_batch(roles: Roles, batch: dict, device: torch.device, precision: str = "fp32",
                extras: Extras = Extras(), info: dict | None = None) -> dict[str, np.ndarray]:
    """Every backbone on one collated batch -> {embedding name: (B, ...) numpy array}, in the
    dtypes ``info`` gives (float32 unless said otherwise)."""
    info = info if info is not None else roles.embedding_info(extras)
    if not batch["clip_id"]:
        return {name: np.zeros((0, *i["shape"]), np.dtype(i["dtype"])) for name, i in info.items()}
    inputs = {"video": batch["video"].to(device, non_blocking=True),
              "audio": batch["fbank"].to(device, non_blocking=True)}
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        out = embed_inputs(roles, inputs, extras)
    return {name: value.float().cpu().numpy().astype(info[name]["dtype"], copy=False) for name, value in out.items()}


def embed_inputs(roles: Roles, inputs: dict, extras: Extras = Extras()) -> dict[str, torch.Tensor]:
    """Every backbone on batched inputs {"video": ..., "audio": ...} -> {embedding name: tensor}.

    The one embedding path: extraction (embed_batch) and the end-to-end model both use it."""
    out = {}
    for modality, model in roles.items():
        out.update(_extract_views(model, modality, inputs, extras))
    return out


def _extract_views(model, modality: str, inputs: dict, extras: Extras) -> dict:
    """model.extract, once per view when the video input has a views axis (B, V, 3, T, H, W):
    every output then gets that axis, (B, V, ...)."""
    video = inputs["video"]
    if modality != "video" or video.ndim != 6:
        return model.extract(modality, inputs, extras)
    views = video.shape[1]
    out = model.extract(modality, {**inputs, "video": video.flatten(0, 1)}, extras)
    return {name: value.unflatten(0, (-1, views)) for name, value in out.items()}


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
