"""data/vsync.py: ffmpeg 5.1's constant-frame-rate output rule (which frame each image shows).

The worked examples are traced by hand through fftools/ffmpeg.c do_video_out (ffmpeg 5.1); the
last test runs the real ffmpeg 5.1 where it is installed and compares image counts and contents
(mp4 clips: ffmpeg 5.1 and PyAV's libavformat agree on their start times; see data/vsync.py).
"""
import os
import re
import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from alphafuse.data.synth import write_clip
from alphafuse.data.vsync import cfr_frame_map, encoder_pts, rescale

TB = Fraction(1, 25)   # one tick per frame at 25 fps


def test_rescale_rounds_halves_away_from_zero():
    assert rescale(3, Fraction(1, 2), Fraction(1)) == 2 and rescale(-3, Fraction(1, 2), Fraction(1)) == -2
    assert rescale(1001, Fraction(1, 30000), Fraction(1, 90000)) == 3003
    assert rescale(-1_000_000, Fraction(1, 1_000_000), Fraction(1, 90000)) == -90000


def test_encoder_pts_nudges_away_from_midpoints():
    # FFSIGN(0) is -1: a frame at 0 lands just before the first grid point.
    assert encoder_pts(0, TB, TB) == -2.0 ** -17
    assert encoder_pts(3, TB, TB) == 3 + 2.0 ** -17
    assert encoder_pts(1001, Fraction(1, 30000), Fraction(1001, 30000)) == 1 + 2.0 ** -17


def test_regular_timestamps_give_one_image_per_frame():
    assert cfr_frame_map(range(10), TB, Fraction(25)) == list(range(10))
    # 29.97 fps in a 1/90000 time base, the output grid at 30000/1001.
    pts = [3003 * i for i in range(30)]
    assert cfr_frame_map(pts, Fraction(1, 90000), Fraction(30000, 1001)) == list(range(30))


def test_a_gap_repeats_the_late_frame_and_a_long_one_the_previous_too():
    # End gap of 0.6 frame: the last frame lands at 9.6 with 9 written, delta = 1.6 -> 2 images.
    pts = [i * 1000 for i in range(9)] + [9600]
    tb = Fraction(1, 25000)
    assert cfr_frame_map(pts, tb, Fraction(25)) == list(range(10)) + [9]
    # 0.4 frame late: delta 1.4 -> lrintf(1.4) = 1 image, nothing repeated.
    assert cfr_frame_map(pts[:-1] + [9400], tb, Fraction(25)) == list(range(10))
    # One missing frame (0, 1, 2, 4): delta0 = 1, delta = 2 -> the frame at 4 twice.
    assert cfr_frame_map([0, 1, 2, 4, 5], TB, Fraction(25)) == [0, 1, 2, 3, 3, 4]
    # Three missing (0, 1, 2, 6): delta0 = 3, delta = 4 -> llrintf(2.4) = 2 repeats of frame 2, then 6 twice.
    assert cfr_frame_map([0, 1, 2, 6], TB, Fraction(25)) == [0, 1, 2, 2, 2, 3, 3]


def test_end_of_stream_repeats_the_median_of_the_last_three_repeat_counts():
    # Frames every 3 ticks: each writes 1 repeat of its predecessor and itself twice; at the
    # end mid_pred(1, 1, 1) = 1 more image of the last frame.
    assert cfr_frame_map([0, 3, 6, 9], TB, Fraction(25)) == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_frames_too_early_are_dropped():
    # 50 fps into a 25 fps grid: frame k at k/2 ticks. Drift grows until delta < -1.1.
    pts = list(range(12))                                  # time base 1/50
    got = cfr_frame_map(pts, Fraction(1, 50), Fraction(25))
    # k = 0..4 written (delta -> 1, 0.5, 0, -0.5, -1.0), k = 5 at 2.5 vs 5 written: delta -1.5 dropped;
    # then k = 6 (delta -1.0) written, k = 7 dropped, and so on.
    assert got == [0, 1, 2, 3, 4, 6, 8, 10]


def test_a_late_start_is_filled_unless_the_file_has_one_stream():
    # First frame at tick 3 (after the file's start): CFR writes it 4 times (no previous frame
    # to repeat); VSCFR, ffmpeg's choice for a one-stream file, starts the grid there.
    assert cfr_frame_map([3, 4, 5], TB, Fraction(25)) == [0, 0, 0, 0, 1, 2]
    assert cfr_frame_map([3, 4, 5], TB, Fraction(25), single_stream=True) == [0, 1, 2]
    # The file's start time (microseconds) is subtracted first, as ffmpeg's ts_offset does.
    assert cfr_frame_map([3, 4, 5], TB, Fraction(25), start_time=120_000) == [0, 1, 2]


def test_missing_timestamps_are_refused():
    with pytest.raises(ValueError, match="timestamp"):
        cfr_frame_map([0, None, 2], TB, Fraction(25))


def _ffmpeg_51():
    path = shutil.which("ffmpeg")
    if path is None:
        return None
    version = subprocess.run([path, "-version"], capture_output=True, text=True).stdout
    return path if re.match(r"ffmpeg version (n)?5\.1", version) else None


@pytest.mark.skipif(_ffmpeg_51() is None, reason="needs ffmpeg 5.1 on PATH (the version the rule follows)")
@pytest.mark.parametrize("name, kwargs", [
    ("end_gap.mp4", dict(frame_times=[i / 25 for i in range(29)] + [28 / 25 + 1.7 / 25])),
    ("gaps.mp4", dict(frame_times=[0, 0.04, 0.08, 0.2, 0.24, 0.4, 0.44, 0.45, 0.46, 0.6])),
    ("late_video.mp4", dict(frame_times=[0.2 + i / 25 for i in range(10)])),
    ("late_video_only.mp4", dict(frame_times=[0.2 + i / 25 for i in range(10)], audio=False)),
])
def test_the_rule_numbers_images_as_ffmpeg_writes_them(tmp_path, name, kwargs):
    levels = lambda i: np.full((48, 64, 3), 8 + 6 * i, dtype=np.uint8)
    clip = write_clip(tmp_path / name, fps=25, size=(64, 48), frame_fn=levels, **kwargs)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        pts = [f.pts for f in container.decode(stream)]
        want = cfr_frame_map(pts, stream.time_base, stream.guessed_rate, container.start_time,
                             single_stream=len(container.streams) == 1)
    out = tmp_path / "images"
    out.mkdir()
    subprocess.run([_ffmpeg_51(), "-v", "error", "-i", str(clip), "-threads", "1", "-vf", "scale=-1:48",
                    "-q:v", "0", str(out / "img_%05d.jpg")], check=True)
    from PIL import Image
    images = sorted(os.listdir(out))
    shown = [int(round((float(np.median(np.asarray(Image.open(out / f)))) - 8) / 6)) for f in images]
    assert shown == want
