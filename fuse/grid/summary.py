"""Grid statistics: per-configuration means and intervals, comparisons with the baseline and
between heads, and the best swept alpha.

* a 95% t-interval over seeds (how much training noise moves a result), and
* a paired bootstrap interval, over the test clips, of a difference in test top-1 (how much the
  choice of test clips moves it; the paper's 22% vs 11% is two clips out of 20): each
  configuration against the ``none`` baseline (the concat head, plain concatenation) trained
  with the same seeds, and each head of the heads axis against each other.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..heads import DEFAULT_HEAD
from ..stats import mean_interval, paired_bootstrap
from .configs import SCALAR_TRANSFORMS

SUMMARY_METRICS = ("val_top1", "test_top1", "test_top5", "test_map", "test_loss", "test_top1_no_video",
                   "test_top1_no_audio", "val_loss", "best_epoch", "learned_alpha", "learned_weight")
# Shares in [0, 1]: their intervals are cut to that range.
BOUNDED_METRICS = ("val_top1", "test_top1", "test_top5", "test_map", "test_top1_no_video", "test_top1_no_audio",
                   "learned_weight")
CONFIDENCE = 0.95


def summarize(rows: Sequence[dict], predicted: np.ndarray, labels: np.ndarray, *, resamples: int = 2000,
              seed: int = 0, confidence: float = CONFIDENCE) -> list[dict]:
    """One row per configuration: mean and t-interval over seeds of each metric, and the paired
    bootstrap interval of its test top-1 minus the ``none`` baseline's over the seeds both have.

    The baseline of a configuration is the concat head with transform ``none`` (both
    modalities) and the same training settings. Each row's per-clip correctness comes from
    ``predicted`` (one row per result row) against ``labels``.
    """
    correct = _correct(predicted, labels)
    groups = _groups(rows)
    baselines = {_baseline_key(key): members for key, members in groups.items() if is_baseline(dict(key))}
    summary = []
    for key, members in groups.items():
        first = rows[members[0]]
        entry = {"config_id": first["config_id"], "config": first["config"],
                 **{k: first.get(k, DEFAULT_HEAD if k == "head" else None)
                    for k in ("head", "modalities", "target", "transform")},
                 "alpha": first["alpha"], "seeds": len(members), **({"pair": first["pair"]} if "pair" in first else {})}
        for metric in SUMMARY_METRICS:
            values = [rows[i][metric] for i in members if rows[i].get(metric) is not None]
            mean, low, high = _metric_interval(metric, values, confidence) if values else (None, None, None)
            entry.update({f"{metric}_mean": mean, f"{metric}_low": low, f"{metric}_high": high})
        entry.update(_versus(rows, correct, members, baselines.get(_baseline_key(key)), resamples, seed,
                             confidence, "vs_none"))
        entry["_key"] = key
        summary.append(entry)
    return summary


def compare_heads(summary: Sequence[dict], rows: Sequence[dict], predicted: np.ndarray, labels: np.ndarray, *,
                  resamples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE) -> list[dict]:
    """Each pair of heads on the heads axis (configurations fusing both modalities without a
    transform, with the same training settings): test top-1 of ``a`` minus ``b`` over the seeds
    both ran, with its paired bootstrap interval. Empty when fewer than two heads ran."""
    correct = _correct(predicted, labels)
    groups = _groups(rows)
    axis = [s for s in summary if s["modalities"] == "both" and s["transform"] == "none"]
    out = []
    for i, b in enumerate(axis):
        for a in axis[i + 1:]:
            if _baseline_key(a["_key"]) != _baseline_key(b["_key"]):
                continue
            versus = _versus(rows, correct, groups[a["_key"]], groups[b["_key"]], resamples, seed, confidence, "")
            if versus["_seeds"]:
                out.append({"a": a["config"], "b": b["config"], "diff": versus["_diff"], "low": versus["_low"],
                            "high": versus["_high"], "seeds": versus["_seeds"]})
    return out


def compare_pairs(summary: Sequence[dict], rows: Sequence[dict], predicted: np.ndarray, labels: np.ndarray, *,
                  resamples: int = 2000, seed: int = 0, confidence: float = CONFIDENCE) -> list[dict]:
    """Each two encoder pairs of ``grid --pairs``: the ``none`` baseline (plain concatenation) of
    pair ``a`` minus pair ``b``'s in test top-1, over the seeds both ran, with its paired
    bootstrap interval over the same test clips. Empty without pairs."""
    correct = _correct(predicted, labels)
    groups = _groups(rows)
    axis = [s for s in summary if s.get("pair") and is_baseline(s)]
    out = []
    for i, b in enumerate(axis):
        for a in axis[i + 1:]:
            if _without_pair(a["_key"]) != _without_pair(b["_key"]):
                continue
            versus = _versus(rows, correct, groups[a["_key"]], groups[b["_key"]], resamples, seed, confidence, "")
            if versus["_seeds"]:
                out.append({"a": a["pair"], "b": b["pair"], "diff": versus["_diff"], "low": versus["_low"],
                            "high": versus["_high"], "seeds": versus["_seeds"]})
    return out


def _without_pair(key: tuple) -> tuple:
    return tuple(item for item in _baseline_key(key) if item[0] != "pair")


def is_baseline(options: dict) -> bool:
    """The plain concatenation: concat head, no transform, both modalities."""
    return (options.get("head") or DEFAULT_HEAD) == DEFAULT_HEAD and options["transform"] == "none" \
        and options["modalities"] == "both"


def _correct(predicted, labels) -> np.ndarray:
    return np.asarray(predicted) == np.asarray(labels)[None, :]


def _groups(rows: Sequence[dict]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["_key"], []).append(i)
    return groups


def _metric_interval(metric: str, values: list[float], confidence: float) -> tuple[float, float, float]:
    if metric == "learned_alpha":
        # The trained parameter is log(alpha): average there, so that the mean is the geometric
        # mean and the interval, mapped back, is a positive one like alpha itself.
        return tuple(math.exp(v) for v in mean_interval(np.log(values), confidence))
    mean, low, high = mean_interval(values, confidence)
    if metric in BOUNDED_METRICS:
        # A t-interval ignores that a share lies in [0, 1]; cutting it there loses no coverage.
        low, high = max(low, 0.0), min(high, 1.0)   # nan (one seed) stays nan
    return mean, low, high


def _baseline_key(key: tuple) -> tuple:
    # Settings that must match for a paired comparison: everything about training, nothing
    # about the fusion (the head and its options, the transform; alpha_lr only matters to
    # learned scalars, device not at all).
    ignored = {"head", "head_options", "transform", "target", "alpha", "modalities", "alpha_lr", "device"}
    return tuple(item for item in key if item[0] not in ignored)


def _versus(rows, correct, members, other_members, resamples, seed, confidence, prefix: str) -> dict:
    names = [f"{prefix}_{k}" for k in ("diff", "low", "high", "seeds")]
    empty = dict(zip(names, (None, None, None, 0)))
    if other_members is None:
        return empty
    other_by_seed = {rows[i]["seed"]: i for i in other_members}
    pairs = [(i, other_by_seed[rows[i]["seed"]]) for i in members if rows[i]["seed"] in other_by_seed]
    if not pairs:
        return empty
    mine, theirs = zip(*pairs)
    boot = paired_bootstrap(correct[list(mine)], correct[list(theirs)], resamples=resamples, seed=seed,
                            confidence=confidence)
    return dict(zip(names, (boot["diff"], boot["low"], boot["high"], boot["seeds"])))


def best_alphas(summary: Sequence[dict]) -> list[dict]:
    """Per target: the swept alpha with the best mean val top-1 (ties: lower mean val loss), beside
    the learned alpha. Chosen on validation, so its test score is an honest estimate."""
    out = []
    for target in ("video", "audio"):
        swept = [s for s in summary if s["modalities"] == "both" and s["target"] == target
                 and s["transform"] in SCALAR_TRANSFORMS]
        learned = [s for s in summary if s["modalities"] == "both" and s["target"] == target
                   and s["transform"] == "learned"]
        if not swept and not learned:
            continue
        entry = {"target": target}
        if swept:
            best = max(swept, key=lambda s: (_num(s["val_top1_mean"]), -_num(s["val_loss_mean"], math.inf)))
            entry.update({"best_alpha": best["alpha"], "best_transform": best["transform"],
                          "alphas_tried": len(swept), **_scores(best, "best")})
        if learned:
            s = learned[0]
            entry.update({"learned_alpha_mean": s["learned_alpha_mean"], "learned_alpha_low": s["learned_alpha_low"],
                          "learned_alpha_high": s["learned_alpha_high"], **_scores(s, "learned")})
        out.append(entry)
    return out


def _scores(s: dict, prefix: str) -> dict:
    return {f"{prefix}_{k}": s[k] for k in ("val_top1_mean", "test_top1_mean", "test_top1_low", "test_top1_high",
                                             "vs_none_diff", "vs_none_low", "vs_none_high")}


def _num(x, missing: float = -math.inf) -> float:
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
