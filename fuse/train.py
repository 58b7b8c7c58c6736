"""Train the fusion head on cached embeddings held in memory.

``train_head`` is a pure function of (features, config): it touches no global state that
outlives the call (the global torch RNG, which dropout draws from, is forked and restored), so
a sweep can call it thousands of times, one configuration per call.
"""
from __future__ import annotations

import copy
import logging
import math
import numbers
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

from cache import FeatureSplit, check_compatible

from .head import AlphaFuseHead
from .transforms import MODALITIES, resolve_target, validate_transform

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How to build and train one head. Defaults are the paper's.

    ``alpha=None`` is replaced by the transform's default on construction, so the config that
    is saved says which alpha was really used. ``target`` accepts timesformer/ast aliases and
    is stored as video/audio. ``alpha_lr`` is the learning rate of the ``learned`` transform's
    scale: at the head's 1e-4, 25 epochs of 13 steps could move it by at most ~3%.
    """

    transform: str = "none"
    target: str = "audio"
    alpha: float | None = None
    modalities: str = "both"
    hidden: tuple[int, ...] = (1024, 512)
    dropout: float = 0.5
    epochs: int = 25
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    alpha_lr: float = 1e-2

    def __post_init__(self):
        self.alpha = validate_transform(self.transform, self.alpha)
        self.target = resolve_target(self.target)
        if self.modalities not in MODALITIES:
            raise ValueError(f"unknown modalities {self.modalities!r}; choose one of {', '.join(MODALITIES)}")
        if not all(_is_int(h) and h > 0 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {self.hidden}")
        self.hidden = tuple(int(h) for h in self.hidden)
        if not (isinstance(self.dropout, numbers.Real) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("lr", "alpha_lr"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, least in (("epochs", 1), ("batch_size", 1), ("seed", None)):
            value = getattr(self, name)
            if not (_is_int(value) and (least is None or value >= least)):
                raise ValueError(f"{name} must be a{' positive' if least else 'n'} integer, got {value!r}")
            setattr(self, name, int(value))  # numpy integers from a sweep become plain ints
        self.dropout, self.lr, self.alpha_lr = float(self.dropout), float(self.lr), float(self.alpha_lr)
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"unknown device {self.device!r}; use cpu, cuda or cuda:N") from None

    def head_kwargs(self) -> dict:
        return {"transform": self.transform, "target": self.target, "alpha": self.alpha,
                "modalities": self.modalities, "hidden": self.hidden, "dropout": self.dropout}

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, options: dict) -> "TrainConfig":
        """Build from a plain dict (a --config file); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class TrainResult:
    """``model`` carries the weights of ``best_epoch`` (in eval mode); the last epoch's are kept too."""

    model: AlphaFuseHead
    best_state_dict: dict
    last_state_dict: dict
    history: list[dict]
    best_epoch: int
    config: TrainConfig
    seconds: float = field(default=0.0, compare=False)

    def last_model(self) -> AlphaFuseHead:
        model = AlphaFuseHead.from_config(self.model.config)
        model.load_state_dict(self.last_state_dict)
        return model.to(next(self.model.parameters()).device).eval()


def train_head(train: FeatureSplit, val: FeatureSplit | None = None,
               cfg: TrainConfig | None = None) -> TrainResult:
    """Train a fresh head on ``train``; validate on ``val`` after every epoch.

    The returned model is the best validation epoch (see :func:`select_best_epoch`); without
    ``val`` it is the last epoch. The same ``cfg.seed`` gives bit-identical numbers.
    """
    cfg = cfg if cfg is not None else TrainConfig()
    _check_splits(train, val)
    device = torch.device(cfg.device)
    video, audio, labels = _tensors(train, device)
    val_data = _tensors(val, device) if val is not None else None
    started = time.perf_counter()

    with _seeded(cfg.seed, device):  # weight init and dropout draw from the seeded global RNG
        model = AlphaFuseHead(video.shape[1], audio.shape[1], train.num_classes, **cfg.head_kwargs()).to(device)
        optimizer = make_optimizer(model, cfg, device)
        clip_order = torch.Generator().manual_seed(cfg.seed)
        history, best_row, best_state = [], None, None
        for epoch in range(1, cfg.epochs + 1):
            row = {"epoch": epoch, **train_epoch(model, optimizer, video, audio, labels, cfg.batch_size, clip_order)}
            if val_data is not None:
                row.update(_prefixed("val", evaluate(model, *val_data)))
                if best_row is None or _rank(row) > _rank(best_row):
                    best_row, best_state = row, _copy_state(model)
            history.append(row)
            log.debug("epoch %s", row)
        last_state = _copy_state(model)

    best_state = best_state if best_state is not None else last_state
    model.load_state_dict(best_state)
    best_epoch = best_row["epoch"] if best_row is not None else cfg.epochs
    return TrainResult(model.eval(), best_state, last_state, history, best_epoch, cfg,
                       time.perf_counter() - started)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam at ``cfg.lr``; a learned transform's scale (``*log_alpha``) gets ``cfg.alpha_lr``."""
    # The fused kernel halves the time of a batch-8 step on CPU (the step is memory-bound).
    fused = device.type in ("cpu", "cuda")
    named = list(model.named_parameters())
    scales = [p for name, p in named if name.endswith("log_alpha")]
    if not scales:
        return torch.optim.Adam([p for _, p in named], lr=cfg.lr, fused=fused)
    rest = [p for name, p in named if not name.endswith("log_alpha")]
    return torch.optim.Adam([{"params": rest}, {"params": scales, "lr": cfg.alpha_lr}], lr=cfg.lr, fused=fused)


def train_epoch(model: AlphaFuseHead, optimizer: torch.optim.Optimizer, video: torch.Tensor,
                audio: torch.Tensor, labels: torch.Tensor, batch_size: int,
                generator: torch.Generator, max_steps: int | None = None) -> dict:
    """One pass over the clips in a seeded random order; ``max_steps`` cuts it short (benchmarks).

    The train loss and top-1 are running means over the epoch's batches, with dropout on.
    """
    model.train()
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros((), dtype=torch.long, device=labels.device)
    seen = 0
    for step, start in enumerate(range(0, len(labels), batch_size)):
        if step == max_steps:
            break
        idx = order[start:start + batch_size]
        logits = model(video[idx], audio[idx])
        loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: .item() every step would stall a GPU.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == labels[idx]).sum()
        seen += len(idx)
    return {"train_loss": loss_sum.item() / seen, "train_top1": correct.item() / seen}


@torch.no_grad()
def predict_logits(model: AlphaFuseHead, video: torch.Tensor, audio: torch.Tensor,
                   chunk: int = 8192) -> torch.Tensor:
    """Eval-mode logits, in chunks so a 180k-clip split does not need 180k activations at once.

    On CPU they are computed on one thread. With more, MKL splits a matmul's sums differently
    (a 20-clip split's loss moved in the 9th digit between 1 and 2 threads), so the same head
    would score differently on machines with other core counts, and a grid's single-threaded
    workers would disagree with a fuse run. Training at the paper's batch of 8 is unaffected.
    """
    model.eval()
    with single_thread(video.device.type == "cpu"):
        return torch.cat([model(video[i:i + chunk], audio[i:i + chunk]) for i in range(0, len(video), chunk)])


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


def evaluate(model: AlphaFuseHead, video: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor) -> dict:
    """Loss and top-1 of ``model`` on one split (the per-epoch validation; full scores: metrics.score)."""
    logits = predict_logits(model, video, audio)
    return {"loss": F.cross_entropy(logits, labels).item(),
            "top1": (logits.argmax(1) == labels).sum().item() / len(labels)}


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


def _tensors(split: FeatureSplit, device: torch.device):
    return (torch.from_numpy(split.video).to(device), torch.from_numpy(split.audio).to(device),
            torch.from_numpy(split.labels).to(device))


def _check_splits(train: FeatureSplit, val: FeatureSplit | None) -> None:
    if len(train) == 0:
        raise ValueError(f"train split {train.path or train.split!r} has no clips; extract it first")
    if val is None:
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
