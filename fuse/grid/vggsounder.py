"""VGGSounder columns of a grid summary: hit@1 and the modality-confusion rates of each
configuration, from each row's predictions (those predictions.npz keeps), with the grid's
statistics: a 95% t-interval over seeds, and the paired bootstrap of hit@1 against the ``none``
baseline over the matched test clips (summary.py's pairing: same seeds, same training settings).

Columns added to every summary entry (``*_mean``, ``*_low``, ``*_high``):
``vggsounder_hit1`` (top-1 is one of the clip's VGGSounder labels), ``vggsounder_confusion_a``,
``_v``, ``_av`` (fuse/vggsounder.py: the package's compute_modality_confusion on the top-1 with
both modalities, video zeroed and audio zeroed), and ``vggsounder_vs_none_diff``, ``_low``,
``_high``, ``_seeds``.
"""
from __future__ import annotations

import math

import numpy as np

from ..stats import mean_interval
from ..vggsounder import Targets, confusion_top1, hits_top1
from .summary import CONFIDENCE, _baseline_key, _groups, _versus, is_baseline

PREFIX = "vggsounder"
ROW_METRICS = ("hit1", "confusion_a", "confusion_v", "confusion_av")


def add_vggsounder(result, targets: Targets, *, resamples: int = 2000, seed: int = 0,
                   confidence: float = CONFIDENCE) -> None:
    """Add the VGGSounder columns to ``result.summary`` (a GridResult) and describe the match in
    ``result.vggsounder`` (summary.json's ``vggsounder``)."""
    rows = result.rows
    hits = hits_top1(targets, result.predicted)                      # (rows, matched clips)
    per_row = []
    for r in range(len(rows)):
        confusion = confusion_top1(targets, result.predicted[r], result.predicted_zeroed["no_video"][r],
                                   result.predicted_zeroed["no_audio"][r])
        per_row.append({"hit1": float(hits[r].mean()), **{f"confusion_{k}": v for k, v in confusion.items()}})
    groups = _groups(rows)
    baselines = {_baseline_key(key): members for key, members in groups.items() if is_baseline(dict(key))}
    for entry in result.summary:
        members = groups[entry["_key"]]
        for metric in ROW_METRICS:
            mean, low, high = mean_interval([per_row[i][metric] for i in members], confidence)
            low, high = max(low, 0.0), min(high, 1.0)   # shares: cut to [0, 1] as summary.py does (nan stays)
            entry.update({f"{PREFIX}_{metric}_mean": mean, f"{PREFIX}_{metric}_low": low,
                          f"{PREFIX}_{metric}_high": high})
        entry.update(_versus(rows, hits, members, baselines.get(_baseline_key(entry["_key"])), resamples, seed,
                             confidence, f"{PREFIX}_vs_none"))
    result.vggsounder = {"clips": len(targets.ids), "unmatched": targets.unmatched, "labels": targets.labels,
                         "rows": per_row, "note": NOTE}


NOTE = ("vggsounder_*: the test clips that VGGSounder annotates (clips of the VGGSound test set). hit1: the top-1 "
        "is one of the clip's labels (labels outside the head's classes are never hit); confusion_a/v/av: "
        "vggsounder's compute_modality_confusion from the top-1 with both modalities, with video zeroed (a) and "
        "with audio zeroed (v): the share of clips one modality alone gets right and both together wrong; "
        "vs_none: hit@1 minus the none baseline's, paired bootstrap over the matched clips.")


def format_vggsounder_table(result) -> str:
    """The VGGSounder columns of a grid as a short text table."""
    info = result.vggsounder
    header = ("config", "hit@1 [95% CI]", "vs none [95% bootstrap]", "confusion a", "v", "av")
    lines = []
    for s in result.summary:
        if is_baseline(s):
            versus = "(baseline)"
        elif s[f"{PREFIX}_vs_none_diff"] is None:
            versus = "-"
        else:
            versus = (f"{s[f'{PREFIX}_vs_none_diff']:+.3f} [{s[f'{PREFIX}_vs_none_low']:+.3f}, "
                      f"{s[f'{PREFIX}_vs_none_high']:+.3f}]")
        lines.append((s["config"], _interval(s, "hit1"), versus,
                      *(_fmt(s[f"{PREFIX}_confusion_{k}_mean"]) for k in ("a", "v", "av"))))
    widths = [max(len(r[i]) for r in (header, *lines)) for i in range(len(header))]
    out = [f"VGGSounder: {info['clips']} test clips matched, {info['unmatched']} not in VGGSounder "
           f"(labels version {info['labels']['version']})"]
    out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in (header, *lines)]
    return "\n".join(out)


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _interval(s: dict, metric: str) -> str:
    mean, low, high = (s[f"{PREFIX}_{metric}_{k}"] for k in ("mean", "low", "high"))
    bracket = f" [{low:.3f}, {high:.3f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return _fmt(mean) + bracket
