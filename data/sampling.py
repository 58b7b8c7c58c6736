"""Temporal sampling rules: which frames of a clip a backbone sees, by name.

A rule maps the clip's frame count (and frame rate, for rules defined in seconds) to the
indices of the frames to feed, in display order. Rules are registered by name so that a
backbone's spec (``VideoConfig.sampling`` plus ``VideoConfig.sampling_options``) can ask for
its own reference protocol without data/ knowing which model it is::

    @register_sampling("my_rule")
    def my_rule(num_available, num_frames, *, fps=None, view=0, num_views=1, stride=2): ...

(the keyword parameters after ``num_views`` are the rule's options; a rule without a default
for ``fps`` needs the frame rate; one with a ``timing`` parameter gets the stream's timestamps).

Every rule takes ``view`` (0-based) and ``num_views``: the temporal view to produce out of
how many the protocol averages (TimeSformer's ``TEST.NUM_ENSEMBLE_VIEWS``), so that several
temporal views can be cached later; a rule that has only one view refuses ``num_views > 1``.

``num_available`` is the number of frames the clip shows, counted from its packets by
data/video.py (metadata frame counts are wrong for variable-rate clips and for mp4 edit lists);
``fps`` is the stream's average frame rate (PyAV ``stream.average_rate``, FFmpeg's
``avg_frame_rate``), what TimeSformer's PyAV loader and OpenCV's ``CAP_PROP_FPS`` read;
``timing`` (a :class:`StreamTiming`) the shown frames' timestamps and what the stream declares.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class StreamTiming:
    """Timestamps, for rules defined on them: the shown frames' pts in display order (stream
    time base), and the frame count and duration the stream declares (PyAV ``stream.frames``,
    0 when unknown, and ``stream.duration``, None when unknown)."""

    frame_pts: tuple[int, ...]
    declared_frames: int
    duration: int | None


@dataclass(frozen=True)
class SamplingRule:
    name: str
    fn: Callable
    options: dict = field(default_factory=dict)   # option -> default
    needs_fps: bool = False
    takes_timing: bool = False
    help: str = ""


SAMPLINGS: dict[str, SamplingRule] = {}


def register_sampling(name: str, *, help: str = ""):
    """Decorator: register ``fn(num_available, num_frames, *, fps, view, num_views, **options)``.

    The keyword-only parameters after ``num_views`` are the rule's options, their defaults the
    option defaults; a rule whose ``fps`` has no default needs the frame rate."""
    def decorator(fn: Callable) -> Callable:
        if name in SAMPLINGS and SAMPLINGS[name].fn is not fn:
            raise ValueError(f"sampling rule {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        fixed = {"num_available", "num_frames", "fps", "view", "num_views", "timing"}
        options = {k: p.default for k, p in params.items() if k not in fixed}
        needs_fps = params["fps"].default is inspect.Parameter.empty
        doc = help or (inspect.getdoc(fn) or "").split("\n")[0]
        SAMPLINGS[name] = SamplingRule(name, fn, options, needs_fps, "timing" in params, doc)
        return fn
    return decorator


def get_sampling(name: str) -> SamplingRule:
    try:
        return SAMPLINGS[name]
    except KeyError:
        raise ValueError(f"unknown sampling rule {name!r}; registered: "
                         f"{', '.join(sorted(SAMPLINGS))}") from None


def check_sampling_options(name: str, options: dict) -> dict:
    """The rule's options with ``options`` applied; unknown names are an error naming the rule."""
    rule = get_sampling(name)
    unknown = sorted(set(options) - set(rule.options))
    if unknown:
        allowed = ", ".join(sorted(rule.options)) or "none"
        raise ValueError(f"sampling rule {name!r} has no option {', '.join(unknown)}; "
                         f"its options: {allowed}")
    return {**rule.options, **options}


def sample_frames(name: str, num_available: int, num_frames: int, *, fps: float | None = None,
                  view: int = 0, num_views: int = 1, timing: StreamTiming | None = None,
                  **options) -> list[int]:
    """Indices (display order, 0-based, each in ``[0, num_available)``) chosen by rule ``name``.

    ``timing`` goes to the rules that take it (their fallback without it is documented)."""
    rule = get_sampling(name)
    if num_available < 1:
        raise ValueError(f"need at least one frame to sample from, got {num_available}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if not (isinstance(num_views, int) and num_views >= 1 and isinstance(view, int)
            and 0 <= view < num_views):
        raise ValueError(f"temporal view must be in 0..num_views-1, got view={view!r}, "
                         f"num_views={num_views!r}")
    if rule.needs_fps and (fps is None or not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"sampling rule {name!r} needs the clip's frame rate, got fps={fps!r}")
    kwargs = check_sampling_options(name, options)
    if rule.takes_timing:
        kwargs["timing"] = timing
    indices = [int(i) for i in rule.fn(num_available, num_frames, fps=fps, view=view,
                                       num_views=num_views, **kwargs)]
    if len(indices) != num_frames or not all(0 <= i < num_available for i in indices):
        raise ValueError(f"sampling rule {name!r} gave {len(indices)} indices {indices[:12]} for "
                         f"{num_frames} frames out of {num_available}")
    return indices


def _one_view(name: str, num_views: int) -> None:
    if num_views != 1:
        raise ValueError(f"sampling rule {name!r} has a single temporal view, got num_views={num_views}")


# --------------------------------------------------------------------------------------------
# Rules


@register_sampling("uniform")
def uniform(num_available, num_frames, *, fps=None, view=0, num_views=1):
    """``rint(linspace(0, n - 1, T))`` over the whole clip, first and last frame included
    (half to even, as ``numpy.rint``); repeats frames of a clip shorter than T. alphafuse's
    default (one view): it sees the whole 10 s VGGSound clip."""
    _one_view("uniform", num_views)
    return np.rint(np.linspace(0, num_available - 1, num_frames)).astype(np.int64).tolist()


@register_sampling("timesformer_window")
def timesformer_window(num_available, num_frames, *, fps, view=0, num_views=1,
                       sampling_rate=32, target_fps=30):
    """TimeSformer's test-time window (timesformer/datasets/decoder.py): a window of
    ``clip_size = sampling_rate * num_frames / target_fps * fps`` frames placed by
    ``get_start_end_idx(n, clip_size, view, num_views)`` (start ``max(n - clip_size, 0) * view
    / num_views``, end ``start + clip_size - 1``), then ``temporal_sampling``: ``T`` points of
    ``torch.linspace(start, end, T)`` (float32), clamped to ``[0, n - 1]``, truncated by
    ``.long()``. Defaults: DATA.SAMPLING_RATE 32 and DATA.TARGET_FPS 30 of
    configs/Kinetics/TimeSformer_divST_8x32_224.yaml (8 frames over 8.53 s)."""
    clip_size = sampling_rate * num_frames / target_fps * fps
    delta = max(num_available - clip_size, 0)
    start = delta * view / num_views
    end = start + clip_size - 1
    index = torch.linspace(start, end, num_frames)
    return torch.clamp(index, 0, num_available - 1).long().tolist()


@register_sampling("timesformer_pyav")
def timesformer_pyav(num_available, num_frames, *, fps, view=0, num_views=1, timing=None,
                     sampling_rate=32, target_fps=30):
    """TimeSformer's PyAV decoding exactly (timesformer/datasets/decoder.py, ``pyav_decode`` then
    ``decode``): the window is placed on the stream's *declared* frame count and duration:
    ``get_start_end_idx(stream.frames, clip_size, view, num_views)``, converted to timestamps
    with ``duration / stream.frames`` per frame (``int`` of each end); the frames shown in
    ``[start_pts, end_pts]`` plus the next one (``pyav_decode_stream``, buffer_size 0) are
    the decoded set, of which ``temporal_sampling`` takes ``linspace(0, clip_size - 1, T)``,
    clamped to its length. mp4s cut with an edit list declare their pre-roll frames too, so on
    them the window is shorter than clip_size frames. Where the reference decodes the whole
    clip (no declared duration) or fails (no declared frame count: a division by zero; no
    timestamps; an empty window), this is "timesformer_window" over the counted frames."""
    if (timing is None or timing.duration is None or timing.declared_frames <= 0
            or len(timing.frame_pts) != num_available):
        return timesformer_window(num_available, num_frames, fps=fps, view=view, num_views=num_views,
                                  sampling_rate=sampling_rate, target_fps=target_fps)
    clip_size = sampling_rate * num_frames / target_fps * fps
    start = max(timing.declared_frames - clip_size, 0) * view / num_views
    end = start + clip_size - 1
    per_frame = timing.duration / timing.declared_frames
    start_pts, end_pts = int(start * per_frame), int(end * per_frame)
    window = [i for i, pts in enumerate(timing.frame_pts) if start_pts <= pts <= end_pts]
    after = [i for i, pts in enumerate(timing.frame_pts) if pts > end_pts][:1]
    window += after
    if not window:
        return timesformer_window(num_available, num_frames, fps=fps, view=view, num_views=num_views,
                                  sampling_rate=sampling_rate, target_fps=target_fps)
    index = torch.clamp(torch.linspace(0, clip_size - 1, num_frames), 0, len(window) - 1).long()
    return [window[i] for i in index.tolist()]


@register_sampling("cavmae")
def cavmae(num_available, num_frames, *, fps, view=0, num_views=1, seconds=10.0, extracted=10,
           frame_use=-1):
    """CAV-MAE's frames. Extraction (src/preprocess/extract_video_frame.py, ``extract_frame``):
    of ``total = min(frame count, int(fps * seconds))`` frames, extracted frame ``i`` of
    ``extracted`` is read after ``CAP_PROP_POS_FRAMES = int(i * (total / extracted)) - 1``, so
    OpenCV returns frame ``max(int(i * (total / extracted)) - 1, 0)`` (a negative position
    seeks to the start). With ``num_frames == extracted`` all of them; with ``num_frames == 1``
    the one its eval dataloader reads (src/dataloader.py, ``randselect_img``): ``frame_use``,
    where -1 means the middle one, ``int(extracted / 2)``."""
    _one_view("cavmae", num_views)
    total = min(num_available, int(fps * seconds))
    frames = [max(int(i * (total / extracted)) - 1, 0) for i in range(extracted)]
    if num_frames == extracted:
        return frames
    if num_frames == 1 and -1 <= frame_use < extracted:
        return [frames[int(extracted / 2) if frame_use == -1 else frame_use]]
    raise ValueError(f"sampling rule 'cavmae' gives all {extracted} extracted frames or one of them "
                     f"(frame_use -1..{extracted - 1}): got num_frames={num_frames}, "
                     f"frame_use={frame_use}")


@register_sampling("tsn")
def tsn(num_available, num_frames, *, fps=None, view=0, num_views=1):
    """TSN/TSM's single-clip test sampling (temporal-shift-module ops/dataset.py,
    ``TSNDataSet._get_test_indices`` with new_length 1): the centre of each of T equal
    segments, ``int(tick / 2 + tick * i)`` with ``tick = n / T`` (the reference's 1-based
    image numbers minus one)."""
    _one_view("tsn", num_views)
    tick = num_available / float(num_frames)
    return [int(tick / 2.0 + tick * i) for i in range(num_frames)]
