"""Scoring heads and caches: per-split logits, the missing-modality test, the learnable ceiling,
and a cache's own classifier outputs (``evaluate_backbone_logits``)."""
from __future__ import annotations

import numpy as np
import torch

from alphafuse.cache import CacheError, FeatureSplit

from .heads import MODALITY_NAMES, Head
from .inputs import HeadInputs, view_counts, where
from .metrics import mask_unseen, score, seen_in_train
from .train import predict_logits

# Logits are read and softmaxed this many clips at a time (a lazily read 180k x 10 x 309 array).
_CHUNK = 4096


def split_logits(model: Head, split: FeatureSplit, device=None, zeroed=()) -> torch.Tensor:
    """Eval scores of ``model`` on every clip of ``split`` (views: the mean per-view softmax's log),
    on the CPU; ``zeroed`` modalities are fed as zeros."""
    device = device if device is not None else next(model.parameters()).device
    data = HeadInputs(split, model.input_names(), device, pool_views=False, head=model.name)
    for modality in zeroed:
        data = data.without(modality)
    return predict_logits(model, data).cpu()


def predicted_classes(logits: torch.Tensor, allowed) -> np.ndarray:
    """Each clip's predicted class: the argmax over the ``allowed`` classes."""
    return mask_unseen(logits, allowed).argmax(1).numpy()


def missing_modality_top1(model: Head, split: FeatureSplit, allowed=None) -> dict:
    """Test top-1 with each modality's inputs zeroed: ``{"no_video": ..., "no_audio": ...}``
    (predictions over the ``allowed`` classes, as every other score).

    How much the head leans on each modality, and what it does when one is missing (a clip
    without an audio stream). A head that never reads a modality scores the same without it.
    """
    return {f"no_{m}": float((predicted_classes(split_logits(model, split, zeroed=(m,)), allowed)
                              == split.labels).mean())
            for m in MODALITY_NAMES}


def learnable(train: FeatureSplit, split: FeatureSplit) -> dict:
    """How many clips of ``split`` have a label seen in training: no head can get the others right.

    (On the paper's 20-clip test split only 4 do, which caps its top-1 at 0.2.) The ceiling holds because every prediction masks the ``masked_classes`` (those absent from
    train, metrics.mask_unseen): no clip of them can be a hit, at top-1 or top-5.
    """
    seen = np.isin(split.labels, np.unique(train.labels))
    return {"clips": int(len(split)), "seen_label_clips": int(seen.sum()),
            "max_top1": float(seen.mean()) if len(split) else None,
            "masked_classes": int((~seen_in_train(train)).sum())}


def evaluate_backbone_logits(split: FeatureSplit, name: str = "logits", backbone_labels=None) -> dict:
    """Score a cache's own classifier outputs, as the backbone's reference evaluation does.

    ``split.embeddings[name]`` is (N, C) or, with embedding_info ``{"views": V}``, (N, V, C):
    each view's logits go through a softmax and the clip's prediction is the mean over views,
    as CAV-MAE's multi-frame evaluation (src/run_cavmae_ft.py: per-frame softmax, mean over the
    10 frames, argmax; ``metrics == 'acc'``, as for VGGSound). With info ``{"label_space":
    "backbone"}`` the C columns are the backbone's classes, named by ``backbone_labels`` (or the
    info's ``label_names``): each clip's label is mapped to its column by name, and top-1 is
    the argmax over all C classes, as the published figure (e.g. vgg_65.5.pth's 65.5%). The
    mapping is refused, in one line, unless every class name of the cache is one of the
    backbone's. Returns :func:`fuse.metrics.score`'s dict plus ``views`` and ``label_space``.
    """
    if name not in split.embeddings:
        raise CacheError(f"{where(split)} has no {name!r} embedding (it has: {', '.join(split.embeddings)}); "
                         f"extract with a fine-tuned backbone that writes its logits")
    info = split.embedding_info.get(name) or {}
    views = view_counts(split, [name]).get(name)
    array = split.embeddings[name]
    width = array.shape[-1]
    if array.ndim != (3 if views else 2):
        raise CacheError(f"{where(split)}: {name!r} has shape {tuple(array.shape)}; expected (N, C) or, with "
                         f"views info, (N, V, C)")
    probs = np.concatenate([_mean_softmax(array[i:i + _CHUNK], views) for i in range(0, len(split), _CHUNK)]) \
        if len(split) else np.zeros((0, width))
    space = info.get("label_space", "cache")
    if space == "backbone":
        names = list(backbone_labels if backbone_labels is not None else info.get("label_names") or [])
        if not names:
            raise CacheError(f"{where(split)}: {name!r} is in the backbone's label space but names no classes "
                             f"(embedding_info[{name!r}]['label_names']); pass backbone_labels")
        if len(names) != width:
            raise CacheError(f"{where(split)}: {len(names)} backbone class names for {width} logit columns")
        column = {n: i for i, n in enumerate(names)}
        unmatched = [n for n in split.label_names if n not in column]
        if unmatched:
            raise CacheError(f"{where(split)}: {len(unmatched)} of the cache's {split.num_classes} class names are "
                             f"not the backbone's (e.g. {unmatched[0]!r}); its logits cannot score these labels")
        labels = np.array([column[split.label_names[y]] for y in split.labels], dtype=np.int64)
        metrics = score(probs, labels, width, probs=True, label_names=names)
    elif width != split.num_classes:
        raise CacheError(f"{where(split)}: {name!r} has {width} columns but the cache has {split.num_classes} "
                         f"classes; a backbone's own label space needs embedding_info label_space 'backbone'")
    else:
        metrics = score(probs, split.labels, width, probs=True, label_names=split.label_names)
    return {**metrics, "views": views or 1, "label_space": space}


def _mean_softmax(logits, views: int | None) -> np.ndarray:
    probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)
    return (probs.mean(dim=1) if views else probs).double().numpy()
