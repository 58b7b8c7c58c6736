"""Stacked heads: a grid's many small heads trained together, K at a time.

A grid trains many small heads on the same clips. ``train_heads_stacked`` trains K of them at
once: each layer's weights are one (K, out, in) tensor and every matmul is a batched one
(torch.baddbmm), so one Python step drives K heads. It reproduces ``train_head`` head by head:
the same seeded initialisation, clip order and dropout masks (drawn from a generator that
continues the head's seeded RNG stream exactly where ``train_head``'s dropout would), the same
per-head losses, and Adam applied slice by slice. On CPU each head's results are then
bit-identical to train_head's (tests/test_grid.py asserts it). On CUDA, train_head's dropout
is a fused Philox kernel that this does not reproduce: the masks, hence the numbers, differ.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from alphafuse.cache import FeatureSplit
from alphafuse.data.memory import check_fits, module_bytes

from .config import TrainConfig
from .heads.concat import AlphaFuseHead
from .metrics import seen_in_train
from .train import TrainResult, _check_splits, _prefixed, _rank, _seeded, hits
from .transforms import rectified_sqrt, transform_ops

_EVAL_FLOATS = 1 << 24   # activations per evaluation chunk (64 MiB of float32)


def stackable(cfg: TrainConfig, split: FeatureSplit) -> bool:
    """Whether ``train_heads_stacked`` can train this head: a concat head (an MLP) without modality
    dropout or early stopping, on pooled float32 embeddings held in memory without views."""
    if cfg.head != "concat" or cfg.modality_dropout or cfg.patience is not None:
        return False
    return all(isinstance(split.embeddings.get(n), np.ndarray) and split.embeddings[n].dtype == np.float32
               and split.embeddings[n].ndim == 2 and not (split.embedding_info.get(n) or {}).get("views")
               for n in ("video", "audio"))


def stack_key(cfg: TrainConfig) -> tuple:
    """Heads whose configs share this key have equal shapes and schedules: they can share a stack."""
    return (cfg.modalities, cfg.hidden, cfg.dropout, cfg.epochs, cfg.batch_size, cfg.lr, cfg.alpha_lr, cfg.device)


def train_heads_stacked(train: FeatureSplit, val: FeatureSplit | None, cfgs, max_stack: int = 48) -> list[TrainResult]:
    """Train one head per config, K at a time as stacked tensors; results in the order of ``cfgs``.

    Configs that differ in shapes or schedule (see :func:`stack_key`) go to separate stacks;
    ``max_stack`` bounds a stack's memory (about 6 copies of one head's parameters per head).
    """
    _check_splits(train, val)
    refused = [cfg for cfg in cfgs if not stackable(cfg, train)]
    if refused:
        raise ValueError(f"{len(refused)} config(s) cannot be stacked (head {refused[0].head}); see stackable()")
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
            # The transforms as fuse/transforms.py defines them, one (sqrt, scale, learned) per head.
            ops = [transform_ops(c.transform, c.alpha) if c.target == modality else (False, None, False)
                   for c in cfgs]
            sqrt, learned = [o[0] for o in ops], [o[2] for o in ops]
            scale = [o[1] if o[1] is not None else 1.0 for o in ops]
            as_mask = lambda flags: torch.tensor(flags, device=device).view(k, 1, 1) if any(flags) else None
            self.parts[modality] = (
                as_mask(sqrt), as_mask(learned),
                torch.tensor(scale, dtype=torch.float32, device=device).view(k, 1, 1) if any(s != 1.0 for s in scale)
                else None)

    def _transform(self, x: torch.Tensor, modality: str, heads: slice) -> torch.Tensor:
        sqrt, learned, scale = (None if t is None else t[heads] for t in self.parts[modality])
        if sqrt is not None:
            x = torch.where(sqrt, rectified_sqrt(x), x)
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
    allowed = seen_in_train(train)   # validation over the classes seen in training, as train_head's
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
        val_scores = _stacked_evaluate(layers, fusion, *val_data, allowed) if val_data is not None else None
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
    # Sized on the meta device first, as create_head does: weights, gradients, Adam's moments.
    needed = sum(4 * module_bytes(AlphaFuseHead, video_dim, audio_dim, num_classes, **cfg.head_kwargs())
                 for cfg in cfgs)
    hidden = sorted({",".join(map(str, cfg.hidden)) for cfg in cfgs})
    check_fits(needed, f"a stack of {len(cfgs)} concat heads (hidden={' / '.join(hidden)}) on inputs "
                       f"video ({video_dim},), audio ({audio_dim},): training it")
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


def _tensors(split: FeatureSplit, device: torch.device):
    return (torch.from_numpy(split.video).to(device), torch.from_numpy(split.audio).to(device),
            torch.from_numpy(split.labels).to(device))


def _linear(model: AlphaFuseHead, i: int) -> torch.nn.Linear:
    return [m for m in model.head if isinstance(m, torch.nn.Linear)][i]


def _stack_params(layers, fusion: _StackedFusion) -> list[torch.Tensor]:
    """The stacked tensors in the order of one head's state dict (see _head_state)."""
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
    correct5 = torch.zeros(k, dtype=torch.long, device=labels.device)
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
        correct5 += (x.detach().topk(min(5, x.shape[-1]), dim=-1).indices == y[..., None]).any(-1).sum(1)
    return [{"train_loss": loss / n, "train_top1": c / n, "train_top5": c5 / n}
            for loss, c, c5 in zip(loss_sum.tolist(), correct.tolist(), correct5.tolist())]


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
def _stacked_evaluate(layers, fusion, video, audio, labels, allowed=None) -> list[dict]:
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
            top1, top5 = hits(head_logits, labels, allowed).tolist()
            scores.append({"loss": F.cross_entropy(head_logits, labels).item(), "top1": top1 / n, "top5": top5 / n})
    return scores


def _stacked_logits(layers, fusion, video, audio, heads: slice) -> torch.Tensor:
    count = len(range(*heads.indices(layers[0][0].shape[0])))
    x = fusion(video.expand(count, -1, -1), audio.expand(count, -1, -1), heads)
    for i, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias[heads].unsqueeze(1), x, weight[heads].transpose(1, 2))
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x