"""Intervals for grid results: over training seeds, and over the test clips.

Two sources of noise sit behind one accuracy figure, and each interval here covers one:

* ``mean_interval``: the spread between heads trained with different seeds (initialisation,
  clip order, dropout), as a t-interval of the mean over seeds.
* ``paired_bootstrap``: which clips happened to land in the test split. The paper's 22% vs
  11% rests on 20 test clips, a difference of two clips; resampling those clips says how
  much such a difference means. The comparison is paired: both configurations are scored on
  the same clips, so the clip-to-clip difficulty cancels.
"""
from __future__ import annotations

import math

import numpy as np

# Resampled clips held in memory at once (int64 indices): bounds memory on a 180k-clip test split.
_BOOTSTRAP_BLOCK = 1 << 22


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its two-sided Student-t interval.

    With one value the spread is unknown and the interval is ``(nan, nan)``; with none,
    everything is nan. Equal values give a zero-width interval.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) == 1:
        return mean, math.nan, math.nan
    from scipy import stats   # here, not at import: scipy.stats takes a second to load

    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_bootstrap(correct, baseline_correct, *, resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> dict:
    """Percentile bootstrap of the accuracy difference ``correct - baseline_correct``.

    Both are 0/1 (or boolean) arrays of shape (seeds, clips), row ``s`` of each coming from
    the same seed and column ``i`` from the same test clip; 1-d arrays are one seed. Per clip
    the difference in correctness is first averaged over the seeds (pooling the seeds into
    one paired comparison per clip), then the clips are resampled with replacement
    ``resamples`` times with a ``numpy`` Generator seeded by ``seed``.

    Returns ``diff`` (the observed mean difference: mean accuracy minus the baseline's over
    these seeds), ``low``, ``high``, ``clips``, ``seeds`` and ``resamples``.
    """
    a = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    b = np.atleast_2d(np.asarray(baseline_correct, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same seeds and clips on both sides, got shapes "
                         f"{a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired bootstrap needs at least one seed and one clip")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    per_clip = (a - b).mean(axis=0)
    n = len(per_clip)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, _BOOTSTRAP_BLOCK // n)
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        means[start:start + count] = per_clip[rng.integers(0, n, size=(count, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"diff": float(per_clip.mean()), "low": float(low), "high": float(high), "clips": n,
            "seeds": int(a.shape[0]), "resamples": int(resamples)}
