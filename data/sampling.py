"""Temporal sampling rules: which frames of a clip a backbone sees, by name.

This module is the registry and the generic rule ("uniform"); a backbone family registers its
reference protocol's rules in its own file of extract/ (timesformer_window and
timesformer_pyav in extract/timesformer.py, cavmae in extract/cavmae_inputs.py, tsn in
extract/tsm.py). A name not registered yet loads the families once (:func:`_load_families`),
so ``VideoConfig(sampling="cavmae")`` works from data/ alone, as a cache's spec does.

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

import contextlib
import contextvars
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


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


def _load_families() -> None:
    """Import extract/, whose family files register their rules (once; a no-op afterwards)."""
    importlib.import_module("alphafuse.extract")


def get_sampling(name: str) -> SamplingRule:
    if name not in SAMPLINGS:
        _load_families()
    try:
        return SAMPLINGS[name]
    except KeyError:
        raise ValueError(f"unknown sampling rule {name!r}; registered: "
                         f"{', '.join(sorted(SAMPLINGS))}") from None


# The frames a decoder chose for the clip being loaded, for ``Backbone.preprocess(with_info=True)``:
# the sampling functions report here as they pick, so no second pass can disagree with decoding.
_RECORDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("alphafuse_frames", default=None)


@contextlib.contextmanager
def recording_frames():
    """Within this block, the list it yields holds the 0-based frame positions the last pick
    chose (every temporal view, in order). A decoder that recounts and picks again replaces them."""
    frames: list[int] = []
    token = _RECORDING.set(frames)
    try:
        yield frames
    finally:
        _RECORDING.reset(token)


def note_frames(indices, view: int = 0) -> None:
    """Report picked frame positions (0-based) to an active :func:`recording_frames`; view 0
    starts a new pick. Sampling functions outside the registry (data/tsn.py) call this too."""
    frames = _RECORDING.get()
    if frames is None:
        return
    if view == 0:
        frames.clear()
    frames.extend(int(i) for i in indices)


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
    note_frames(indices, view)
    return indices


def check_single_view(name: str, num_views: int) -> None:
    """For rules of one temporal view: refuse ``num_views > 1`` naming the rule."""
    if num_views != 1:
        raise ValueError(f"sampling rule {name!r} has a single temporal view, got num_views={num_views}")


# --------------------------------------------------------------------------------------------
# Rules


@register_sampling("uniform")
def uniform(num_available, num_frames, *, fps=None, view=0, num_views=1):
    """``rint(linspace(0, n - 1, T))`` over the whole clip, first and last frame included
    (half to even, as ``numpy.rint``); repeats frames of a clip shorter than T. alphafuse's
    default (one view): it sees the whole 10 s VGGSound clip."""
    check_single_view("uniform", num_views)
    return np.rint(np.linspace(0, num_available - 1, num_frames)).astype(np.int64).tolist()
