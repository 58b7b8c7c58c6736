"""Scores of a classifier's outputs on one split: top-1, top-5, mAP, loss, per class.

A head trained on a split that lacks some classes has output columns for them all the same (the
vocabulary is the cache's); left in, their untrained logits win by chance and a score can
exceed the learnable ceiling. Every prediction alphafuse makes from a trained head (fuse,
evaluate, grid, predict, and the per-epoch validation that picks the best epoch) therefore goes
through :func:`mask_unseen`: the classes absent from the training split get a logit of -inf, so
a head never predicts a class it never saw.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def masked_note(ceiling: dict) -> str:
    """Why a learnable ceiling holds, for reports: the classes absent from train are never predicted."""
    count = ceiling.get("masked_classes")
    return f"; the {count} class(es) absent from train are masked in prediction" if count else ""


def mask_unseen(logits, allowed):
    """``logits`` (N, C; a tensor or an array) with the columns where ``allowed`` (C booleans) is
    False set to -inf; ``allowed=None`` leaves them as they are. The one place that masks."""
    if allowed is None:
        return logits
    allowed = _as_numpy(allowed).astype(bool).reshape(-1)
    if allowed.shape[0] != logits.shape[1]:
        raise ValueError(f"a mask of {allowed.shape[0]} classes for outputs of {logits.shape[1]} columns")
    if not allowed.any():
        raise ValueError("no class is allowed: the head saw no class in training")
    if isinstance(logits, torch.Tensor):
        return logits.masked_fill(~torch.from_numpy(allowed).to(logits.device), float("-inf"))
    out = np.array(logits, dtype=np.float64, copy=True)
    out[:, ~allowed] = -np.inf
    return out


def seen_in_train(train) -> np.ndarray:
    """The mask of :func:`mask_unseen` for a head trained on ``train`` (a FeatureSplit): True for
    each class of its vocabulary that it holds clips of."""
    return np.isin(np.arange(train.num_classes), np.asarray(train.labels))


def allowed_classes(label_names: Sequence[str], seen: Sequence[str]) -> np.ndarray:
    """The mask of :func:`mask_unseen`: True for each of ``label_names`` in ``seen`` (the names of
    the classes the training split holds)."""
    seen = set(seen)
    return np.array([name in seen for name in label_names], dtype=bool)


def score(outputs, labels, num_classes: int, *, probs: bool = False,
          label_names: Sequence[str] | None = None, allowed=None) -> dict:
    """Score ``outputs`` (N, C) logits, or probabilities with ``probs=True``, against ``labels``.

    Returns ``top1``, ``top5`` (top-k with k = min(5, C); tied scores rank the lower class index
    first, like argmax, so top-1 agrees with the predicted class; sklearn's
    ``top_k_accuracy_score`` ranks the higher index first), ``map`` (mean over the classes present in ``labels``
    of sklearn's ``average_precision_score`` on the softmax probabilities; a class with no clip
    has no defined AP and is left out), ``loss`` (mean cross-entropy), ``num_clips``,
    ``map_classes`` (how many classes the mAP averages) and ``per_class``: for each class name,
    its ``support``, ``top1`` (its recall) and ``ap`` (None where the class has no clip).

    ``allowed`` (logits only): the classes the head saw in training; the others are masked
    (:func:`mask_unseen`) for top-1, top-5, mAP and per class, so no clip of a masked class is
    ever a hit and such a class's AP is 0 (the head ranks no clip for it; sklearn would credit
    the constant score with the class's prevalence). ``masked_classes`` says how many. The
    loss stays the cross-entropy of the unmasked logits (the training objective; masked, it
    would be infinite on every clip of a masked class).
    """
    raw = _as_numpy(outputs).astype(np.float64, copy=False)
    labels = _as_numpy(labels).astype(np.int64, copy=False).reshape(-1)
    _check_inputs(raw, labels, num_classes, label_names)
    if allowed is not None and probs:
        raise ValueError("masking applies to logits, not probabilities")
    scores = mask_unseen(raw, allowed)
    p = scores if probs else _softmax(scores)
    masked = np.zeros(num_classes, bool) if allowed is None else ~np.asarray(allowed, bool)

    k = min(5, num_classes)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    hit1 = ranked[:, 0] == labels
    # A masked class sits at -inf and is no guess, even where fewer than k classes are allowed.
    hitk = ((ranked[:, :k] == labels[:, None]) & ~masked[labels][:, None]).any(axis=1)

    names = list(label_names) if label_names is not None else [str(c) for c in range(num_classes)]
    support = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels, weights=hit1, minlength=num_classes)
    from sklearn.metrics import average_precision_score   # here: sklearn takes a second to import

    ap = {c: 0.0 if masked[c] else float(average_precision_score(labels == c, p[:, c]))
          for c in np.flatnonzero(support)}
    per_class = {
        names[c]: {
            "support": int(support[c]),
            "top1": float(correct[c] / support[c]) if support[c] else None,
            "ap": ap.get(c),
        }
        for c in range(num_classes)
    }
    return {
        "top1": float(hit1.mean()),
        "top5": float(hitk.mean()),
        "map": float(np.mean(list(ap.values()))),
        "loss": _cross_entropy(raw, labels, probs),
        "num_clips": int(len(labels)),
        "masked_classes": int(masked.sum()),
        "map_classes": len(ap),
        "per_class": per_class,
    }


def _check_inputs(scores: np.ndarray, labels: np.ndarray, num_classes: int, label_names) -> None:
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"outputs must have shape (N, {num_classes}), got {scores.shape}")
    if scores.shape[0] != len(labels):
        raise ValueError(f"{scores.shape[0]} rows of outputs but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("cannot score an empty split (no clips)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label names for {num_classes} classes")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _cross_entropy(scores: np.ndarray, labels: np.ndarray, probs: bool) -> float:
    if probs:
        # Clip so that one confidently wrong probability of exactly 0 gives a large, finite loss.
        picked = scores[np.arange(len(labels)), labels]
        return float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return float(F.cross_entropy(torch.from_numpy(scores), torch.from_numpy(labels)))
