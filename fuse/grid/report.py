"""Grid output: results.csv, summary.csv/json, predictions.npz, the plot, and the text table.

Output directory: results.csv (one row per configuration and seed), summary.csv and
summary.json (one row per configuration; summary.json is written last and marks a finished
grid), predictions.npz (each row's predicted class per test clip, to recompute any interval;
predicted_no_video/no_audio: the same with that modality's inputs zeroed),
alpha_curve.png (when some target was swept over several alphas) or preset_bars.png.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alphafuse.data.atomic import atomic_write

from ..metrics import masked_note
from .plots import TARGET_NAMES, _finite, alpha_curve_plot, bars_plot, has_alpha_curve
from .summary import CONFIDENCE, best_alphas, is_baseline

RESULTS_FILE = "results.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
PREDICTIONS_FILE = "predictions.npz"
ALPHA_CURVE_FILE = "alpha_curve.png"
BARS_FILE = "preset_bars.png"
GRID_MARKERS = (SUMMARY_JSON,)   # a finished grid: summary.json is written last
RESULT_COLUMNS = ("head", "modalities", "target", "transform", "alpha", "seed", "val_top1", "test_top1", "test_top5",
                  "test_map", "test_loss", "test_top1_no_video", "test_top1_no_audio", "best_epoch",
                  "learned_alpha", "learned_weight", "val_loss", "train_seconds", "config_id", "config")
CONFIG_FILE = "config.json"
# Every file a grid writes, the finished-grid marker first: an overwrite removes them all
# (rows/: each configuration's scores as it finished, fuse/grid/resume.py).
GRID_FILES = (SUMMARY_JSON, RESULTS_FILE, SUMMARY_CSV, PREDICTIONS_FILE, ALPHA_CURVE_FILE, BARS_FILE, CONFIG_FILE,
              "rows")


def write_grid(out: Path, result, resamples: int, config: dict | None = None) -> dict[str, Path]:
    """Write results, summary, predictions, plots and config.json into ``out``; summary.json goes last."""
    out = Path(out)
    files = {"results": out / RESULTS_FILE, "summary_csv": out / SUMMARY_CSV, "predictions": out / PREDICTIONS_FILE}
    paired = any("pair" in r for r in result.rows)   # grid --pairs: which encoders each row used
    _write_csv(files["results"], result.rows, ("pair", *RESULT_COLUMNS) if paired else RESULT_COLUMNS)
    summary_columns = [k for k in result.summary[0] if not k.startswith("_")]
    _write_csv(files["summary_csv"], result.summary, summary_columns)
    with atomic_write(files["predictions"]) as f:
        np.savez_compressed(f, predicted=result.predicted, labels=result.test_labels,
                            clip_ids=np.array(result.test_clip_ids),
                            **{f"predicted_{k}": v for k, v in result.predicted_zeroed.items()})
    if has_alpha_curve(result.summary):
        files["alpha_curve"] = out / ALPHA_CURVE_FILE
        with atomic_write(files["alpha_curve"]) as f:
            alpha_curve_plot(result.summary, f, len(result.test_labels))
    else:
        files["bars"] = out / BARS_FILE
        with atomic_write(files["bars"]) as f:
            bars_plot(result.summary, result.rows, f, len(result.test_labels))
    if config is not None:
        files["config"] = out / CONFIG_FILE
        with atomic_write(files["config"], "w") as f:
            json.dump(_json_safe(config), f, indent=2, default=str)
    files["summary_json"] = out / SUMMARY_JSON
    payload = {
        "configs": [{k: v for k, v in s.items() if not k.startswith("_")} for s in result.summary],
        "best_alpha": result.best_alpha,
        "head_comparison": result.head_comparison,
        **({"pair_comparison": result.pair_comparison} if paired else {}),
        "learnable_ceiling": result.ceiling,
        "test_clips": len(result.test_labels), "runs": len(result.rows), "method": result.method,
        "jobs": result.jobs, "seconds": round(result.seconds, 3), "confidence": CONFIDENCE, "resamples": resamples,
        "intervals": INTERVALS_NOTE,
        **({"vggsounder": result.vggsounder} if result.vggsounder else {}),
    }
    with atomic_write(files["summary_json"], "w") as f:
        json.dump(_json_safe(payload), f, indent=2)
    return files


INTERVALS_NOTE = (
    "*_low/*_high: 95% Student-t interval of the mean over seeds (undefined with one seed), cut to [0, 1] "
    "for accuracies and mAP; learned_alpha: geometric mean and interval, computed on log(alpha). "
    "vs_none_*: test top-1 minus the none baseline's, over the seeds both ran; the interval is a paired "
    "percentile bootstrap over test clips (per-clip correctness averaged over those seeds, clips resampled "
    "with replacement): it covers the choice of test clips, the t-interval the training noise. head_comparison: "
    "the same paired bootstrap between two heads; pair_comparison (grid --pairs): between two encoder pairs' none "
    "baselines, each configuration's vs_none being against its own pair's. test_top1_no_video/no_audio: test top-1 "
    "with that modality's inputs zeroed. learnable_ceiling: test clips whose label occurs in training; no head gets "
    "the others right: the masked_classes (absent from train) are masked in every prediction, so no head ever "
    "predicts them.")


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})


def _csv_value(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def format_summary_table(summary, test_clips: int | None = None) -> str:
    """The summary as a plain-text table, then the best swept alpha beside the learned one, the
    head-vs-head comparisons, and the learnable ceiling. ``summary``: a GridResult or its summary."""
    if hasattr(summary, "summary"):   # a GridResult
        test_clips = test_clips or len(summary.test_labels)
        summary = summary.summary
    context = summary[0].get("_context", {}) if summary else {}
    test_clips = test_clips or context.get("test_clips")
    header = ("config", "seeds", "val top-1", "test top-1 [95% CI]", "top-5", "mAP", "no video", "no audio",
              "vs none [95% bootstrap]")
    lines = []
    for s in summary:
        if is_baseline(s):
            versus = "(baseline)"
        elif s["vs_none_diff"] is None:
            versus = "-"
        else:
            versus = f"{s['vs_none_diff']:+.3f} [{s['vs_none_low']:+.3f}, {s['vs_none_high']:+.3f}]"
        config = s["config"]
        if s["transform"] == "learned":
            config += f" ({_interval(s, 'learned_alpha', '.2f', 'alpha ')})"
        if s.get("learned_weight_mean") is not None:
            config += f" ({_interval(s, 'learned_weight', '.2f', 'w ')})"
        lines.append((config, str(s["seeds"]), _fmt(s["val_top1_mean"]), _interval(s, "test_top1"),
                      _fmt(s["test_top5_mean"]), _fmt(s["test_map_mean"]), _fmt(s.get("test_top1_no_video_mean")),
                      _fmt(s.get("test_top1_no_audio_mean")), versus))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    for b in best_alphas(summary):
        parts = []
        if "best_alpha" in b:
            parts.append(f"best alpha by val top-1 x{b['best_alpha']:g} ({b['best_transform']}, "
                         f"of {b['alphas_tried']}): test {_fmt(b['best_test_top1_mean'])}")
        if "learned_alpha_mean" in b:
            parts.append(f"learned alpha {_fmt(b['learned_alpha_mean'], '.2f')}"
                         f"{_bracket(b['learned_alpha_low'], b['learned_alpha_high'], '.2f')}: "
                         f"test {_fmt(b['learned_test_top1_mean'])}")
        out.append(f"{TARGET_NAMES[b['target']]}: " + "; ".join(parts))
    for c in context.get("head_comparison", []):
        out.append(f"{c['a']} vs {c['b']}: test top-1 {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] "
                   f"(paired bootstrap, {c['seeds']} seed(s))")
    for c in context.get("pair_comparison", []):
        out.append(f"encoders {c['a']} vs {c['b']} (none): test top-1 {c['diff']:+.3f} [{c['low']:+.3f}, "
                   f"{c['high']:+.3f}] (paired bootstrap, {c['seeds']} seed(s))")
    ceiling = context.get("ceiling")
    if ceiling:
        out.append(f"learnable ceiling: {ceiling['seen_label_clips']} of {ceiling['clips']} test clips have a label "
                   f"seen in training (top-1 at most {_fmt(ceiling['max_top1'])})" + masked_note(ceiling))
    note = "intervals: t over seeds; vs none: paired bootstrap over test clips, seeds pooled; no video/audio: " \
           "test top-1 with that modality zeroed"
    if test_clips:
        note += f"; {test_clips} test clips, one clip = {100 / test_clips:.2g} points"
    out.append(note)
    return "\n".join(out)


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _bracket(low, high, spec: str = ".3f") -> str:
    return "" if not (_finite(low) and _finite(high)) else f" [{low:{spec}}, {high:{spec}}]"


def _interval(s: dict, metric: str, spec: str = ".3f", prefix: str = "") -> str:
    return f"{prefix}{_fmt(s[f'{metric}_mean'], spec)}{_bracket(s[f'{metric}_low'], s[f'{metric}_high'], spec)}"
