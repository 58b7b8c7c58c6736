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


# -- stacked heads ---------------------------------------------------------------------------
#
# A grid trains many small heads on the same clips. ``train_heads_stacked`` trains K of them at
# once: each layer's weights are one (K, out, in) tensor and every matmul is a batched one
# (torch.baddbmm), so one Python step drives K heads. It reproduces ``train_head`` head by head:
# the same seeded initialisation, clip order and dropout masks (drawn from a generator that
# continues the head's seeded RNG stream exactly where ``train_head``'s dropout would), the same
# per-head losses, and Adam applied slice by slice. On CPU each head's results are then
# bit-identical to train_head's (tests/test_grid.py asserts it). On CUDA, train_head's dropout
# is a fused Philox kernel that this does not reproduce: the masks, hence the numbers, differ.

_EVAL_FLOATS = 1 << 24   # activations per evaluation chunk (64 MiB of float32)


def stack_key(cfg: TrainConfig) -> tuple:
    """Heads whose configs share this key have equal shapes and schedules: they can share a stack."""
    return (cfg.modalities, cfg.hidden, cfg.dropout, cfg.epochs, cfg.batch_size, cfg.lr, cfg.alpha_lr, cfg.device)


def train_heads_stacked(train: FeatureSplit, val: FeatureSplit | None, cfgs, max_stack: int = 48) -> list[TrainResult]:
    """Train one head per config, K at a time as stacked tensors; results in the order of ``cfgs``.

    Configs that differ in shapes or schedule (see :func:`stack_key`) go to separate stacks;
    ``max_stack`` bounds a stack's memory (about 6 copies of one head's parameters per head).
    """
    _check_splits(train, val)
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(stack_key(cfg), []).append(i)
    results: list[TrainResult | None] = [None] * len(cfgs)
    for members in groups.values():
        for start in range(0, len(members), max_stack):
            chunk = members[start:start + max_stack]
            for i, result in zip(chunk, _train_stack(train, val, [cfgs[i] for i in chunk])):
                results[i] = result
    return results


class _StackedFusion:
    """The per-head transforms of a stack, as (K, 1, 1) masks and scales applied to (K, B, D) batches."""

    def __init__(self, cfgs, device: torch.device):
        k = len(cfgs)
        self.modalities = cfgs[0].modalities
        self.log_alpha = None
        if any(c.transform == "learned" for c in cfgs):
            self.log_alpha = torch.zeros(k, device=device, requires_grad=True)
        self.parts = {}
        for modality in ("video", "audio"):
            mine = [c.target == modality for c in cfgs]
            sqrt = [m and c.transform == "sqrt" for m, c in zip(mine, cfgs)]
            learned = [m and c.transform == "learned" for m, c in zip(mine, cfgs)]
            scale = [c.alpha if m and c.alpha is not None else 1.0 for m, c in zip(mine, cfgs)]
            as_mask = lambda flags: torch.tensor(flags, device=device).view(k, 1, 1) if any(flags) else None
            self.parts[modality] = (
                as_mask(sqrt), as_mask(learned),
                torch.tensor(scale, dtype=torch.float32, device=device).view(k, 1, 1) if any(s != 1.0 for s in scale)
                else None)

    def _transform(self, x: torch.Tensor, modality: str, heads: slice) -> torch.Tensor:
        sqrt, learned, scale = (None if t is None else t[heads] for t in self.parts[modality])
        if sqrt is not None:
            x = torch.where(sqrt, torch.sqrt(torch.relu(x)), x)
        if learned is not None:
            alpha = self.log_alpha[heads].exp().view(-1, 1, 1)
            scale = torch.where(learned, alpha, scale if scale is not None else torch.ones_like(alpha))
            return _HeadScale.apply(x, scale)
        # x * 1.0 is x exactly, so heads without a scale are untouched (as in train_head).
        return x * scale if scale is not None else x

    def __call__(self, video: torch.Tensor, audio: torch.Tensor, heads: slice = slice(None)) -> torch.Tensor:
        if self.modalities != "audio":
            video = self._transform(video, "video", heads)
        if self.modalities != "video":
            audio = self._transform(audio, "audio", heads)
        if self.modalities == "video":
            return video
        if self.modalities == "audio":
            return audio
        return torch.cat([video, audio], dim=-1)


def _train_stack(train: FeatureSplit, val: FeatureSplit | None, cfgs) -> list[TrainResult]:
    cfg = cfgs[0]   # shapes and schedule are shared by the whole stack
    device = torch.device(cfg.device)
    video, audio, labels = _tensors(train, device)
    val_data = _tensors(val, device) if val is not None else None
    started = time.perf_counter()
    models, streams, stream_of = _init_stack(cfgs, video.shape[1], audio.shape[1], train.num_classes, device)
    linears = [m for m in models[0].head if isinstance(m, torch.nn.Linear)]
    weights = [torch.stack([_linear(m, i).weight.detach() for m in models]).requires_grad_()
               for i in range(len(linears))]
    biases = [torch.stack([_linear(m, i).bias.detach() for m in models]).requires_grad_()
              for i in range(len(linears))]
    fusion = _StackedFusion(cfgs, device)
    layers = list(zip(weights, biases))
    groups = [([t for pair in layers for t in pair], cfg.lr, list(range(len(cfgs))))]
    if fusion.log_alpha is not None:
        groups.append(([fusion.log_alpha], cfg.alpha_lr, [h for h, c in enumerate(cfgs) if c.transform == "learned"]))
    optimizer = _StackedAdam(groups, device)

    k = len(cfgs)
    histories: list[list[dict]] = [[] for _ in range(k)]
    best_rows: list[dict | None] = [None] * k
    best = [t.detach().clone() for t in _stack_params(layers, fusion)]
    for epoch in range(1, cfg.epochs + 1):
        train_scores = _stacked_epoch(layers, fusion, optimizer, video, audio, labels, cfg, streams, stream_of)
        val_scores = _stacked_evaluate(layers, fusion, *val_data) if val_data is not None else None
        improved = torch.zeros(k, dtype=torch.bool)
        for h in range(k):
            row = {"epoch": epoch, **train_scores[h]}
            if val_scores is not None:
                row.update(_prefixed("val", val_scores[h]))
                if best_rows[h] is None or _rank(row) > _rank(best_rows[h]):
                    best_rows[h] = row
                    improved[h] = True
            histories[h].append(row)
        if improved.any():
            mask = improved.to(device)
            for kept, now in zip(best, _stack_params(layers, fusion)):
                kept[mask] = now.detach()[mask]
    last = [t.detach() for t in _stack_params(layers, fusion)]
    best = best if val_data is not None else last
    seconds = (time.perf_counter() - started) / k

    results = []
    for h, (model, head_cfg) in enumerate(zip(models, cfgs)):
        best_state, last_state = _head_state(model, best, h), _head_state(model, last, h)
        model.load_state_dict(best_state)
        best_epoch = best_rows[h]["epoch"] if best_rows[h] is not None else cfg.epochs
        results.append(TrainResult(model.eval(), best_state, last_state, histories[h], best_epoch, head_cfg, seconds))
    return results


def _init_stack(cfgs, video_dim: int, audio_dim: int, num_classes: int, device: torch.device):
    """Each head initialised exactly as train_head does; one dropout and one clip-order stream per seed.

    Heads of one stack with the same seed have the same shapes, so their initialisation used
    the seeded RNG identically and their dropout streams coincide: one generator serves them all.
    """
    models, streams, seed_index, stream_of = [], [], {}, []
    for cfg in cfgs:
        with _seeded(cfg.seed, device):
            models.append(AlphaFuseHead(video_dim, audio_dim, num_classes, **cfg.head_kwargs()).to(device))
            if cfg.seed not in seed_index:
                dropout_gen = torch.Generator(device)
                dropout_gen.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda"
                                      else torch.get_rng_state())
                seed_index[cfg.seed] = len(streams)
                streams.append((dropout_gen, torch.Generator().manual_seed(cfg.seed)))
        stream_of.append(seed_index[cfg.seed])
    return models, streams, torch.tensor(stream_of, device=device)


def _linear(model: AlphaFuseHead, i: int) -> torch.nn.Linear:
    return [m for m in model.head if isinstance(m, torch.nn.Linear)][i]


def _stack_params(layers, fusion: _StackedFusion) -> list[torch.Tensor]:
    """The stacked tensors in the order of one head's state dict (see _state_names)."""
    tensors = [t for pair in layers for t in pair]
    return ([fusion.log_alpha] if fusion.log_alpha is not None else []) + tensors


def _head_state(model: AlphaFuseHead, stacked: list[torch.Tensor], h: int) -> dict:
    """Head ``h``'s state dict, cut from the stacked tensors (a stack that mixes learned and fixed
    transforms holds a log_alpha for every head; only the learned ones have it in their state)."""
    names = list(model.state_dict().keys())
    if len(stacked) > len(names):
        stacked = stacked[1:]
    return {name: t[h].clone() for name, t in zip(names, stacked)}


def _stacked_epoch(layers, fusion, optimizer, video, audio, labels, cfg: TrainConfig, streams, stream_of) -> list[dict]:
    """One epoch of every head in the stack: train_epoch, K heads per step."""
    k, n = len(stream_of), len(labels)
    orders = torch.stack([torch.randperm(n, generator=order_gen) for _, order_gen in streams]).to(labels.device)
    loss_sum = torch.zeros(k, device=labels.device)
    correct = torch.zeros(k, dtype=torch.long, device=labels.device)
    for start in range(0, n, cfg.batch_size):
        idx = _per_head(orders[:, start:start + cfg.batch_size], stream_of)     # (K, B)
        x = fusion(video[idx], audio[idx])
        for i, (weight, bias) in enumerate(layers):
            x = _StackedLinear.apply(x, weight, bias)
            if i < len(layers) - 1:
                x = _stacked_dropout(torch.relu(x), cfg.dropout, streams, stream_of)
        y = labels[idx]
        # One cross-entropy per head, as in train_head: a head's loss is the mean over its batch.
        losses = torch.stack([F.cross_entropy(x[h], y[h]) for h in range(k)])
        optimizer.zero_grad()
        losses.sum().backward()   # heads share no parameter: each gets exactly its own gradient
        optimizer.step()
        loss_sum += losses.detach() * idx.shape[1]
        correct += (x.detach().argmax(-1) == y).sum(1)
    return [{"train_loss": loss / n, "train_top1": c / n} for loss, c in zip(loss_sum.tolist(), correct.tolist())]


class _StackedAdam:
    """Adam on stacked heads, one head at a time: each head's slices go through the very fused
    kernel call that train_head's Adam makes on that head's own tensors.

    One fused call on a whole (K, ...) tensor would be shorter, but the kernel handles a
    tensor's last few elements (its size modulo the SIMD width) on a scalar path that can
    round differently, and which elements those are depends on the tensor's size.
    """

    def __init__(self, groups, device: torch.device):
        # groups: (stacked params, lr, the heads it updates); Adam's defaults as train_head uses them.
        self.groups = [(params, lr, heads, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params])
                       for params, lr, heads in groups]
        self.fused = device.type in ("cpu", "cuda")
        self.step_count = torch.zeros((), dtype=torch.float32, device=device)
        if not self.fused:   # other devices: plain Adam on the stacked tensors (not head-by-head exact)
            self.fallback = torch.optim.Adam([{"params": params, "lr": lr} for params, lr, _ in groups])

    def zero_grad(self) -> None:
        for params, *_ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if not self.fused:
            self.fallback.step()
            return
        self.step_count += 1
        for params, lr, heads, exp_avgs, exp_avg_sqs in self.groups:
            def per_head(tensors):
                return [t[h] for h in heads for t in tensors]
            views = per_head([p.detach() for p in params])
            torch._fused_adam_(views, per_head([p.grad for p in params]), per_head(exp_avgs), per_head(exp_avg_sqs),
                               [], [self.step_count] * len(views), amsgrad=False, lr=lr, beta1=0.9, beta2=0.999,
                               weight_decay=0.0, eps=1e-8, maximize=False, grad_scale=None, found_inf=None)


class _StackedLinear(torch.autograd.Function):
    """K linear layers at once, with the gradients computed by the very kernels nn.Linear's use.

    Per head these are the matmuls autograd runs for nn.Linear. The bias gradient is summed head
    by head, because one (K, B, out) reduction may add the B rows in another order than
    nn.Linear's (B, out) one and differ in the last bit.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad.bmm(weight) if ctx.needs_input_grad[0] else None
        # Computed straight into the weight's (out, in) layout, as autograd does for nn.Linear;
        # a transposed result would be copied into that layout, a slow strided copy.
        grad_weight = grad.transpose(1, 2).bmm(x)
        grad_bias = torch.stack([g.sum(0) for g in grad])
        return grad_x, grad_weight, grad_bias


class _HeadScale(torch.autograd.Function):
    """``x * scale`` with scale (K, 1, 1), its gradient summed head by head (see _StackedLinear)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(x, scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        grad_x = grad * scale if ctx.needs_input_grad[0] else None
        grad_scale = torch.stack([(g * xk).sum() for g, xk in zip(grad, x)]).view_as(scale)
        return grad_x, grad_scale


def _per_head(rows: torch.Tensor, stream_of: torch.Tensor) -> torch.Tensor:
    if rows.shape[0] == 1:
        return rows.expand(len(stream_of), *rows.shape[1:])
    return rows.index_select(0, stream_of)


def _stacked_dropout(x: torch.Tensor, p: float, streams, stream_of) -> torch.Tensor:
    # As ATen's CPU dropout: a Bernoulli(1 - p) mask scaled by 1 / (1 - p), drawn per head from
    # the head's own stream, so each head sees the mask train_head would have drawn.
    if p == 0:
        return x
    noise = torch.stack([torch.empty(x.shape[1:], device=x.device).bernoulli_(1 - p, generator=dropout_gen)
                         for dropout_gen, _ in streams])
    noise.div_(1 - p)
    return x * _per_head(noise, stream_of)


@torch.no_grad()
def _stacked_evaluate(layers, fusion, video, audio, labels) -> list[dict]:
    """evaluate() for every head; heads are taken a few at a time so activations stay bounded."""
    k, n = layers[0][0].shape[0], len(labels)
    widest = max(w.shape[1] for w, _ in layers)
    heads_per_chunk = max(1, min(k, _EVAL_FLOATS // max(1, n * widest)))
    rows = max(1, min(n, 8192, _EVAL_FLOATS // (heads_per_chunk * widest)))
    scores = []
    for h0 in range(0, k, heads_per_chunk):
        heads = slice(h0, min(k, h0 + heads_per_chunk))
        logits = torch.cat([_stacked_logits(layers, fusion, video[r:r + rows], audio[r:r + rows], heads)
                            for r in range(0, n, rows)], dim=1)
        for head_logits in logits:
            scores.append({"loss": F.cross_entropy(head_logits, labels).item(),
                           "top1": (head_logits.argmax(1) == labels).sum().item() / n})
    return scores


def _stacked_logits(layers, fusion, video, audio, heads: slice) -> torch.Tensor:
    count = len(range(*heads.indices(layers[0][0].shape[0])))
    x = fusion(video.expand(count, -1, -1), audio.expand(count, -1, -1), heads)
    for i, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias[heads].unsqueeze(1), x, weight[heads].transpose(1, 2))
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x
