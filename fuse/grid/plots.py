"""Grid plots: test top-1 against alpha (a sweep), or one bar per configuration."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .configs import SCALAR_TRANSFORMS
from .summary import _num, is_baseline

TARGET_NAMES = {"video": "TimeSformer (video)", "audio": "AST (audio)"}


def has_alpha_curve(summary: Sequence[dict]) -> bool:
    """True when some transform was swept over two or more alphas on one target (the preset's
    pos_scalar 1.5 and neg_scalar 0.75 are two experiments, not a sweep)."""
    tried: dict[tuple, set] = {}
    for s in summary:
        if s["modalities"] == "both" and s["transform"] in SCALAR_TRANSFORMS:
            tried.setdefault((s["transform"], s["target"]), set()).add(s["alpha"])
    return any(len(alphas) >= 2 for alphas in tried.values())


def _curves(summary: Sequence[dict]) -> dict[str, list[dict]]:
    curves: dict[str, list[dict]] = {}
    for s in summary:
        if s["modalities"] == "both" and s["transform"] in SCALAR_TRANSFORMS:
            curves.setdefault(s["target"], []).append(s)
    # pos_scalar 1.5 and scale 1.5 are the same transform: keep one point per alpha.
    return {t: list({p["alpha"]: p for p in sorted(points, key=lambda p: p["alpha"])}.values())
            for t, points in curves.items()}


def alpha_curve_plot(summary: Sequence[dict], path, test_clips: int | None = None) -> None:
    """Test top-1 against alpha, one panel per target: mean over seeds with its 95% band, val
    top-1 dashed, the ``none`` baseline as a line with its band, the learned alpha as a star."""
    curves = {t: pts for t, pts in _curves(summary).items() if len(pts) >= 2}
    targets = [t for t in ("video", "audio") if t in curves]
    fig = Figure(figsize=(6 * len(targets), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    baseline = next((s for s in summary if is_baseline(s)), None)
    for ax, target in zip(axes, targets):
        pts = curves[target]
        x = [p["alpha"] for p in pts]
        ax.plot(x, [p["test_top1_mean"] for p in pts], marker="o", label="test top-1 (mean over seeds)")
        ax.fill_between(x, _nan_list(pts, "test_top1_low"), _nan_list(pts, "test_top1_high"), alpha=0.25,
                        label="95% interval over seeds")
        if any(p["val_top1_mean"] is not None for p in pts):
            ax.plot(x, _nan_list(pts, "val_top1_mean"), linestyle="--", marker=".", color="grey", label="val top-1")
        if baseline is not None:
            ax.axhline(baseline["test_top1_mean"], color="black", linewidth=1, label="none (plain concat)")
            if _finite(baseline["test_top1_low"]):
                ax.axhspan(baseline["test_top1_low"], baseline["test_top1_high"], color="black", alpha=0.07)
        learned = next((s for s in summary if s["transform"] == "learned" and s["target"] == target
                        and s["modalities"] == "both"), None)
        if learned is not None:
            a = learned["learned_alpha_mean"]
            ax.errorbar([a], [learned["test_top1_mean"]], xerr=_err(learned, "learned_alpha"),
                        yerr=_err(learned, "test_top1"), marker="*", markersize=12, color="tab:red", capsize=3,
                        linestyle="none", label=f"learned alpha {a:.2f}")
        ax.set(xlabel=f"alpha (scale on the {target} embedding)", ylabel="top-1 accuracy",
               title=f"{TARGET_NAMES[target]} scaled")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if test_clips:
        fig.suptitle(f"{test_clips} test clips: one clip = {100 / test_clips:.2g} points", fontsize=10)
    fig.savefig(path, format="png", dpi=100)


def bars_plot(summary: Sequence[dict], rows: Sequence[dict], path, test_clips: int | None = None) -> None:
    """One bar per configuration: mean test top-1 with its 95% interval over seeds, each seed a dot."""
    fig = Figure(figsize=(max(6.0, 0.8 * len(summary) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(summary))
    means = [s["test_top1_mean"] for s in summary]
    colours = ["grey" if is_baseline(s) else "tab:blue" if s.get("head", "concat") == "concat" else "tab:green"
               for s in summary]
    ax.bar(x, means, color=colours, alpha=0.7)
    lows = [_num(s["test_top1_low"], m) for s, m in zip(summary, means)]
    highs = [_num(s["test_top1_high"], m) for s, m in zip(summary, means)]
    ax.errorbar(x, means, yerr=[np.subtract(means, lows), np.subtract(highs, means)], fmt="none", color="black",
                capsize=4, label="95% interval over seeds")
    for i, s in enumerate(summary):
        seeds = [r["test_top1"] for r in rows if r["_key"] == s["_key"]]
        ax.scatter(np.full(len(seeds), i) + np.linspace(-0.15, 0.15, len(seeds)), seeds, s=10, color="black",
                   zorder=3)
    ax.set_xticks(x, [s["config"] for s in summary], rotation=30, ha="right")
    ax.set(ylabel="test top-1 accuracy", ylim=(0, 1.05))
    clips = f", {test_clips} test clips" if test_clips else ""
    ax.set_title(f"test top-1 over {max(s['seeds'] for s in summary)} seeds (dots: seeds){clips}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png", dpi=100)


def _nan_list(points, key):
    return [math.nan if p[key] is None else p[key] for p in points]


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _err(s: dict, metric: str):
    mean, low, high = s[f"{metric}_mean"], s[f"{metric}_low"], s[f"{metric}_high"]
    if not (_finite(low) and _finite(high)):
        return None
    return [[mean - low], [high - mean]]
