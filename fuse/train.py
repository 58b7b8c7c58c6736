"""Train a fusion head on cached embeddings: one loop for every head.

``train_head`` is a pure function of (features, config): it touches no global state that
outlives the call (the global torch RNG, which dropout draws from, is forked and restored), so
a sweep can call it thousands of times, one configuration per call. The loop follows MBT's
trainer (scenic/projects/mbt/trainer.py): a train step per batch, an evaluation on the
validation split after every epoch with loss, top-1 and top-5 logged for both, the best
validation checkpoint kept, and (``patience``) early stopping on validation.
"""
from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from alphafuse.cache import FeatureSplit, check_compatible

from .config import TrainConfig
from .heads import Head, create_head, head_from_config
from .inputs import HeadInputs, head_logits
from .metrics import mask_unseen, seen_in_train

log = logging.getLogger(__name__)

_EVAL_FLOATS = 1 << 24   # input floats per evaluation chunk

__all__ = ["TrainConfig", "TrainResult", "evaluate", "make_optimizer", "predict_logits", "select_best_epoch",
           "single_thread", "train_epoch", "train_head"]


@dataclass
class TrainResult:
    """``model`` carries the weights of ``best_epoch`` (in eval mode); the last epoch's are kept too."""

    model: Head
    best_state_dict: dict
    last_state_dict: dict
    history: list[dict]
    best_epoch: int
    config: TrainConfig
    seconds: float = field(default=0.0, compare=False)

    def last_model(self) -> Head:
        model = head_from_config(self.model.config)
        model.load_state_dict(self.last_state_dict)
        return model.to(next(self.model.parameters()).device).eval()


def train_head(train: FeatureSplit, val: FeatureSplit | None = None, cfg: TrainConfig | None = None) -> TrainResult:
    """Train a fresh head on ``train``; validate on ``val`` after every epoch.

    The returned model is the best validation epoch (see :func:`select_best_epoch`); without
    ``val`` it is the last epoch. The same ``cfg.seed`` gives bit-identical numbers.
    """
    cfg = cfg if cfg is not None else TrainConfig()
    _check_splits(train, val, cfg)
    device = torch.device(cfg.device)
    data = HeadInputs(train, cfg.needs(), device, head=cfg.head)          # views averaged (fuse/inputs.py)
    val_data = HeadInputs(val, cfg.needs(), device, pool_views=False, head=cfg.head) if val is not None else None
    allowed = seen_in_train(train)   # validation predicts as every later score does (metrics.mask_unseen)
    started = time.perf_counter()

    with _seeded(cfg.seed, device):  # weight init and dropout draw from the seeded global RNG
        model = create_head(cfg.head, data.shapes, train.num_classes, **cfg.head_kwargs()).to(device)
        optimizer = make_optimizer(model, cfg, device)
        clip_order = torch.Generator().manual_seed(cfg.seed)
        history, best_row, best_state, stale = [], None, None, 0
        for epoch in range(1, cfg.epochs + 1):
            row = {"epoch": epoch, **train_epoch(model, optimizer, data, cfg.batch_size, clip_order)}
            if val_data is not None:
                row.update(_prefixed("val", evaluate(model, val_data, allowed)))
                stale += 1
                if best_row is None or _rank(row) > _rank(best_row):
                    best_row, best_state, stale = row, _copy_state(model), 0
            history.append(row)
            log.debug("epoch %s", row)
            if cfg.patience is not None and stale >= cfg.patience:
                log.info("early stop after epoch %d: no better val score for %d epochs", epoch, stale)
                break
        last_state = _copy_state(model)

    best_state = best_state if best_state is not None else last_state
    model.load_state_dict(best_state)
    best_epoch = best_row["epoch"] if best_row is not None else len(history)
    return TrainResult(model.eval(), best_state, last_state, history, best_epoch, cfg,
                       time.perf_counter() - started)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam at ``cfg.lr``; parameters that scale or mix whole inputs (Head.mixing_parameters) get ``cfg.alpha_lr``."""
    # The fused kernel halves the time of a batch-8 step on CPU (the step is memory-bound).
    fused = device.type in ("cpu", "cuda")
    named = list(model.named_parameters())
    mixing = set(model.mixing_parameters()) if isinstance(model, Head) else set()
    scales = [p for name, p in named if name in mixing]
    if not scales:
        return torch.optim.Adam([p for _, p in named], lr=cfg.lr, fused=fused)
    rest = [p for name, p in named if name not in mixing]
    return torch.optim.Adam([{"params": rest}, {"params": scales, "lr": cfg.alpha_lr}], lr=cfg.lr, fused=fused)


def train_epoch(model: Head, optimizer: torch.optim.Optimizer, data: HeadInputs, batch_size: int,
                generator: torch.Generator, max_steps: int | None = None) -> dict:
    """One pass over the clips in a seeded random order; ``max_steps`` cuts it short (benchmarks).

    The train loss, top-1 and top-5 are running means over the epoch's batches, with dropout on.
    """
    model.train()
    labels = data.labels
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros(2, dtype=torch.long, device=labels.device)
    seen = 0
    for step, start in enumerate(range(0, len(labels), batch_size)):
        if step == max_steps:
            break
        idx = order[start:start + batch_size]
        loss, logits = model.training_loss(data.batch(idx), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: .item() every step would stall a GPU.
        loss_sum += loss.detach() * len(idx)
        correct += hits(logits.detach(), labels[idx])
        seen += len(idx)
    top1, top5 = correct.tolist()
    return {"train_loss": loss_sum.item() / seen, "train_top1": top1 / seen, "train_top5": top5 / seen}


def hits(logits: torch.Tensor, labels: torch.Tensor, allowed=None) -> torch.Tensor:
    """(top-1 hits, top-5 hits) of a batch; top-k with k = min(5, classes); top-1 is argmax's.
    With ``allowed``, over those classes only (metrics.mask_unseen): a masked label is never a hit."""
    logits = mask_unseen(logits, allowed)
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1, topk = logits.argmax(1) == labels, (ranked == labels[:, None]).any(dim=1)
    if allowed is not None:
        topk &= torch.from_numpy(np.asarray(allowed, bool)).to(labels.device)[labels]
    return torch.stack([top1.sum(), topk.sum()])


@torch.no_grad()
def predict_logits(model: Head, data, audio: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    """Eval-mode scores of every clip of ``data`` (HeadInputs; or, as before heads had names, the
    video and audio tensors), in chunks so a 180k-clip split does not need 180k activations at once.

    With views, the log of the mean per-view softmax (fuse/inputs.py). On CPU they are computed
    on one thread. With more, MKL splits a matmul's sums differently (a 20-clip split's loss
    moved in the 9th digit between 1 and 2 threads), so the same head would score differently
    on machines with other core counts, and a grid's single-threaded workers would disagree
    with a fuse run.
    """
    if not isinstance(data, HeadInputs):
        data = HeadInputs.from_tensors({"video": data, "audio": audio})
    # Token inputs are ~100x a pooled embedding: fewer clips per chunk (pooled ones keep 8192).
    chunk = max(1, min(chunk, _EVAL_FLOATS // data.clip_floats()))
    model.eval()
    with single_thread(data.device.type == "cpu"):
        return torch.cat([head_logits(model, data, torch.arange(i, min(i + chunk, len(data)), device=data.device))
                          for i in range(0, len(data), chunk)])


@contextmanager
def single_thread(active: bool = True):
    """Run the block with one torch thread (when ``active``), then restore the caller's count."""
    previous = torch.get_num_threads()
    if active and previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def evaluate(model: Head, data: HeadInputs, allowed=None) -> dict:
    """Loss, top-1 and top-5 of ``model`` on one split (the per-epoch validation; full scores: metrics.score);
    top-1 and top-5 over the ``allowed`` classes, the loss over all (as metrics.score)."""
    logits = predict_logits(model, data)
    top1, top5 = hits(logits, data.labels, allowed).tolist()
    return {"loss": F.cross_entropy(logits, data.labels).item(), "top1": top1 / len(data.labels),
            "top5": top5 / len(data.labels)}


def select_best_epoch(history: list[dict]) -> int:
    """The epoch to report: highest val top-1; ties go to the lower val loss, then the earlier
    epoch. Without validation scores in ``history``, the last epoch."""
    return max(history, key=_rank)["epoch"]


def _rank(row: dict) -> tuple:
    if row.get("val_top1") is None:
        return (row["epoch"],)
    return (row["val_top1"], -row["val_loss"], -row["epoch"])


def _prefixed(prefix: str, scores: dict) -> dict:
    return {f"{prefix}_{key}": value for key, value in scores.items()}


def _copy_state(model: torch.nn.Module) -> dict:
    return copy.deepcopy(model.state_dict())


def _check_splits(train: FeatureSplit, val: FeatureSplit | None, cfg: TrainConfig | None = None) -> None:
    if len(train) == 0:
        raise ValueError(f"train split {str(train.path or train.split)!r} has no clips; extract it first")
    if val is None:
        if cfg is not None and cfg.patience is not None:
            raise ValueError(f"patience={cfg.patience} stops on the val score: give a val split, or no patience")
        return
    if len(val) == 0:
        raise ValueError(f"val split {val.path or val.split!r} has no clips; pass no val split to "
                         f"train without validation (the last epoch is then reported)")
    check_compatible(train, val)


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed the global torch RNG for the block, then restore whatever state the caller had."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
