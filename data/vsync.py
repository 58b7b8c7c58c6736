"""Which decoded frame each image of ``ffmpeg -i clip ... img_%05d.jpg`` shows (ffmpeg 5.1).

The image2 muxer declares no variable frame rate, so ffmpeg's CLI writes its output at a
constant frame rate (``-vsync cfr``; ``vscfr`` when the input file holds a single stream):
every decoded frame is placed on the output's frame grid by its timestamp, and a frame that
lands more than 1.1 frames late is written again (a gap in the timestamps, at the end of a
clip too), one that lands more than 1.1 frames early is dropped. The image count is then not
the decoded frame count, and TSM's segments (``ops/dataset.py``), computed on the image count,
move.

:func:`cfr_frame_map` replays that rule on the frames' timestamps, following FFmpeg 5.1's
``fftools/ffmpeg.c``:

* input: each frame's ``best_effort_timestamp`` shifted by ``-start_time`` of the input file
  (``process_input``: ``ts_offset`` rescaled to the stream's time base);
* the output frame rate is the filter graph's, ``av_guess_frame_rate`` of the stream for a
  ``scale`` filter (``configure_input_video_filter``); the encoder's time base is its inverse
  (``init_output_stream_encode``) and a frame lasts 1 tick (``do_video_out``'s ``duration``);
* ``adjust_frame_pts_to_encoder_tb``: the timestamp in encoder ticks with ``extra_bits`` of
  fraction, plus ``FFSIGN(pts) / 2**17`` (so a timestamp of 0 becomes -2**-17);
* ``do_video_out``: ``delta0 = pts - frames_written``, ``delta = delta0 + duration``; a frame
  that starts in the past but ends in the future is clipped to one frame; otherwise, CFR:
  ``delta < -1.1`` drops it, ``delta > 1.1`` writes it ``lrintf(delta)`` times, of which the
  first ``llrintf(delta0 - 0.6)`` (when ``delta0 > 1.1``) repeat the previous frame; VSCFR
  skips the duplication of the first frame when it starts late; at the end of the stream the
  previous frame is written again ``mid_pred`` of the last three repeat counts times.

The timestamps and the file's start time are the ones the installed libavformat reports. They
agree with ffmpeg 5.1's on mp4 (the image counts of all 122 clips of the VGGSound subset, 9 of
which get a repeated image), but not everywhere: ffmpeg 5.1 starts AAC in Matroska 23 ms early
(its codec delay), libavformat 62 at 0, which moves the grid by that much.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import numpy as np

AV_TIME_BASE = Fraction(1, 1_000_000)


def rescale(value: int, src: Fraction, dst: Fraction) -> int:
    """``av_rescale_q``: ``value * src / dst`` rounded to the nearest integer, halves away from 0."""
    exact = Fraction(value) * src / dst
    whole = (abs(exact.numerator) * 2 + exact.denominator) // (2 * exact.denominator)
    return whole if exact >= 0 else -whole


def encoder_pts(pts: int, time_base: Fraction, encoder_tb: Fraction) -> float:
    """``adjust_frame_pts_to_encoder_tb``'s ``float_pts``: ``pts`` in encoder ticks as a double."""
    extra_bits = min(max(29 - (encoder_tb.denominator.bit_length() - 1), 0), 16)
    fine = Fraction(encoder_tb.numerator, encoder_tb.denominator << extra_bits)
    value = float(rescale(pts, time_base, fine)) / (1 << extra_bits)
    # FFSIGN(x) is -1 for x == 0: ffmpeg nudges away from exact midpoints that way.
    return value + (1.0 if value > 0 else -1.0) / (1 << 17)


def _lrintf(x: float) -> int:
    """C's lrintf: to float, then to the nearest integer, halves to even."""
    return int(np.rint(np.float32(x)))


def cfr_frame_map(pts: Sequence[int], time_base: Fraction, frame_rate: Fraction | None,
                  start_time: int | None = 0, single_stream: bool = False) -> list[int]:
    """For each image ffmpeg 5.1 writes at constant ``frame_rate``, the index of the input
    frame it shows (frames in display order, ``pts`` in ``time_base`` units).

    ``start_time``: the input file's start time in microseconds (``AVFormatContext.start_time``,
    PyAV's ``container.start_time``); ``single_stream``: the input file has one stream only
    (ffmpeg then uses VSCFR). ``frame_rate`` None or 0 (none known): ffmpeg's fallback, 25 fps,
    with frames of no duration.
    """
    if any(p is None for p in pts):
        raise ValueError("every frame needs a timestamp to place it on ffmpeg's output grid")
    known = frame_rate is not None and frame_rate > 0
    rate = Fraction(frame_rate) if known else Fraction(25)
    encoder_tb = 1 / rate
    duration_ticks = 1 / (float(rate) * float(encoder_tb)) if known else 0.0
    offset = rescale(-(start_time or 0), AV_TIME_BASE, Fraction(time_base))
    out: list[int] = []
    sync = 0                       # ost->sync_opts: the next output frame's tick
    repeats = [0, 0, 0]            # ost->last_nb0_frames
    last = None                    # ost->last_frame
    for i, p in enumerate(pts):
        ipts = encoder_pts(p + offset, Fraction(time_base), encoder_tb)
        duration = duration_ticks
        delta0 = ipts - sync
        delta = delta0 + duration
        count, repeat = 1, 0
        if delta0 < 0 < delta:     # starts before the grid point it fills: clipped, one frame
            duration += delta0
            delta0 = 0.0
        if single_stream and not out and delta0 >= 0.5:   # VSCFR: no initial duplicates
            delta, delta0 = duration, 0.0
            sync = int(np.rint(ipts))
        if delta < -1.1:
            count = 0
        elif delta > 1.1:
            count = _lrintf(delta)
            if delta0 > 1.1:
                repeat = _lrintf(delta0 - 0.6)
        repeat = min(repeat, count)
        repeats = [repeat] + repeats[:2]
        out += [last if k < repeat and last is not None else i for k in range(count)]
        sync += count
        last = i
    if last is not None:
        out += [last] * sorted(repeats)[1]
    return out
