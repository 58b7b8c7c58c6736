"""data/tsn.py: TSM's and TSAM's segment sampling, test transforms and frame extraction."""
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alphafuse.data.errors import ClipError
from alphafuse.extract.tsam_inputs import TSAMFrames
from alphafuse.extract.tsm import TSMFrames
from alphafuse.data.synth import write_clip
from alphafuse.data.tsn import (decode_tsam_frames, decode_tsm_frames, load_tsam_frames, load_tsm_frames, tsam_frame_tensor,
                      tsam_validation_indices, tsm_test_views, tsn_full_res_offsets, tsn_test_indices, tsn_val_indices)
from tests.media import _decode_all, decoded_rgb_references
from tests.tsm_reference import aa_resize

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


# ----------------------------------------------------------------------------- sampling

def test_tsn_test_indices_worked_examples():
    # 300 frames, 8 segments: tick 37.5, centres 18.75 + 37.5 k, truncated, then 1-based.
    assert tsn_test_indices(300, 8) == [19, 57, 94, 132, 169, 207, 244, 282]
    # twice_sample appends the segment starts int(37.5 k) + 1.
    assert tsn_test_indices(300, 8, twice_sample=True)[8:] == [1, 38, 76, 113, 151, 188, 226, 263]
    # Fewer frames than segments: tick 0.625, frames repeat.
    assert tsn_test_indices(5, 8) == [1, 1, 2, 3, 3, 4, 5, 5]
    # new_length 5 (flow stacks) shortens the span: tick = (300 - 5 + 1) / 8 = 37.
    assert tsn_test_indices(300, 8, new_length=5) == [19, 56, 93, 130, 167, 204, 241, 278]


@pytest.mark.parametrize("n, t", [(300, 8), (250, 16), (17, 8), (1, 4), (1001, 25)])
def test_tsn_test_indices_are_segment_centres(n, t):
    # Exact rational arithmetic: floor((2k + 1) n / 2t) + 1.
    assert tsn_test_indices(n, t) == [_floor(Fraction((2 * k + 1) * n, 2 * t)) + 1 for k in range(t)]
    assert tsn_val_indices(n, t) == (tsn_test_indices(n, t) if n > t else [1] * t)


def test_tsn_dense_sampling():
    # 300 frames: starts linspace(0, 236, 10) truncated; 8 frames 8 apart from each, clip after clip.
    starts = [0, 26, 52, 78, 104, 131, 157, 183, 209, 236]
    got = tsn_test_indices(300, 8, dense=True)
    assert got == [s + 8 * k + 1 for s in starts for k in range(8)]
    # 40 frames (< 64): ten identical clips that wrap around: 0, 8, ..., 32, then 40 % 40 = 0.
    assert tsn_test_indices(40, 8, dense=True) == [1, 9, 17, 25, 33, 1, 9, 17] * 10


def test_tsam_validation_indices_worked_examples():
    # 100 frames (10 s at 10 fps), 16 segments: tick 6.25, int(3.125 + 6.25 k) + 1.
    assert tsam_validation_indices(100, 16) == [4, 10, 16, 22, 29, 35, 41, 47, 54, 60, 66, 72, 79, 85, 91, 97]
    assert tsam_validation_indices(3, 8) == [1, 1, 1, 2, 2, 3, 3, 3]
    # Clamped to [k // 2, n - 1 - k // 2] before the +1: 10 frames, 4 segments, 5 frames a segment.
    assert tsam_validation_indices(10, 4) == [2, 4, 7, 9]
    assert tsam_validation_indices(10, 4, k_frames=5) == [3, 4, 7, 8]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_sampling_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="num_frames must be a positive integer"):
        tsn_test_indices(bad, 8)
    with pytest.raises(ValueError, match="num_segments must be a positive integer"):
        tsam_validation_indices(10, bad)


# ----------------------------------------------------------------------------- transforms

def _frames(t, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(t)]


def _tsm_reference(frames, crops):
    """GroupScale(256) + crop(s) + /255 + normalise, with PIL and NumPy directly."""
    h, w = frames[0].shape[:2]
    new = (int(256 * w / h), 256) if w >= h else (256, int(256 * h / w))   # torchvision Resize(int)
    views = []
    for x, y in crops(*new):
        stack = [np.asarray(Image.fromarray(f).resize(new, Image.BILINEAR).crop((x, y, x + 224, y + 224)))
                 for f in frames]
        views.append(((np.stack(stack).astype(np.float32) / 255 - MEAN) / STD).transpose(3, 0, 1, 2))
    return np.stack(views)


@pytest.mark.parametrize("h, w", [(331, 589), (331, 186), (240, 320)])
def test_tsm_centre_crop_matches_pil(h, w):
    frames = _frames(3, h, w)
    ours = tsm_test_views(frames)
    centre = lambda W, H: [(int(round((W - 224) / 2.0)), int(round((H - 224) / 2.0)))]
    ref = _tsm_reference(frames, centre)[0]
    assert ours.shape == (3, 3, 224, 224)
    assert np.abs(ours.numpy() - ref).max() < 1e-6


def test_tsm_three_full_resolution_crops():
    frames = _frames(2, 331, 589, seed=1)
    ours = tsm_test_views(frames, test_crops=3)
    assert tsn_full_res_offsets(455, 256, 224) == [(0, 16), (228, 16), (114, 16)]  # steps 57 and 8
    ref = _tsm_reference(frames, lambda W, H: [(0, 16), (228, 16), (114, 16)])
    assert ours.shape == (3, 3, 2, 224, 224)
    assert np.abs(ours.numpy() - ref).max() < 1e-6
    assert tsm_test_views(frames, full_res=True).shape == (3, 2, 256, 256)
    with pytest.raises(ValueError, match="test_crops must be 1 or 3, got 5"):
        tsm_test_views(frames, test_crops=5)


@pytest.mark.parametrize("h, w", [(256, 455), (256, 144), (224, 224)])
def test_tsam_frames_centre_square_then_antialiased_resize(h, w):
    frames = _frames(2, h, w, seed=2)
    ours = tsam_frame_tensor(frames).numpy()
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    ref = np.stack([[aa_resize(f[top:top + s, left:left + s, c].astype(np.float32) / np.float32(255), (224, 224))
                     for f in frames] for c in range(3)])
    assert ours.shape == (3, 2, 224, 224)
    assert np.abs(ours - ref).max() < 2e-6
    if s > 224:  # shrinking: the comparison tells antialiasing (torchvision >= 0.17) from plain bilinear
        crop = torch.from_numpy(np.stack([f[top:top + s, left:left + s] for f in frames])).permute(0, 3, 1, 2)
        plain = torch.nn.functional.interpolate(crop.float() / 255, size=(224, 224), mode="bilinear")
        assert (plain.transpose(0, 1).numpy() - ours).__abs__().max() > 1e-3


# ----------------------------------------------------------------------------- extraction

@pytest.fixture(scope="module")
def flat_clip(tmp_path_factory):
    """40 flat grey frames at 25 fps, frame i at level 8 + 6 i, lossless video (FFV1)."""
    path = tmp_path_factory.mktemp("tsn") / "flat.nut"
    write_clip(path, duration=1.6, fps=25, size=(64, 48),
               frame_fn=lambda i: np.full((48, 64, 3), 8 + 6 * i, dtype=np.uint8))
    return path


def _which(frame) -> int:
    return int(round((float(np.median(frame)) - 8) / 6))


def test_tsm_frames_are_the_sampled_decoded_frames(flat_clip):
    count, frames = _decode_all(flat_clip, keep=set(range(40)))
    assert count == 40
    numbers = tsn_test_indices(40, 8)
    # At the clip's own height FFmpeg's scale filter passes frames through untouched ...
    ours = decode_tsm_frames(flat_clip, 8, height=48, yuv_matrix="stream")
    assert all(np.array_equal(o, frames[k - 1]) for o, k in zip(ours, numbers))
    # ... and ffmpeg's JPEG range step (limited to full, then BT.601) only rounds grey levels.
    jpeg_like = decode_tsm_frames(flat_clip, 8, height=48)
    assert max(np.abs(o.astype(int) - frames[k - 1]).max() for o, k in zip(jpeg_like, numbers)) <= 1
    scaled = decode_tsm_frames(flat_clip, 8)                 # vid2img_kinetics: height 331
    assert scaled[0].shape == (331, 441, 3)                  # width round(331 * 64 / 48)
    assert [_which(f) for f in scaled] == [k - 1 for k in numbers]


def test_tsam_frames_follow_the_fps_filter(flat_clip):
    # fps=10 over 25 fps, 1.6 s: 16 output frames; output n shows the last input frame i whose
    # timestamp rounds to n tenths or less (round half up): i with round(0.4 i) <= n.
    def source(n):
        return max(i for i in range(40) if _floor(Fraction(4 * i, 10) + Fraction(1, 2)) <= n)
    numbers = tsam_validation_indices(16, 4)
    ours = decode_tsam_frames(flat_clip, num_segments=4)
    assert ours[0].shape == (256, 341, 3)                    # scale=-1:256
    assert [_which(f) for f in ours] == [source(k - 1) for k in numbers]
    x = load_tsam_frames(flat_clip, num_segments=4)
    assert x.shape == (3, 4, 224, 224) and 0 <= x.min() and x.max() <= 1 + 1e-6


# ----------------------------------------------------------------------------- colours

# Saturated colours, where BT.601 and BT.709 disagree by 10 to 30 levels (grey: not at all).
PALETTE = [(200, 30, 60), (30, 60, 220), (20, 200, 40), (240, 240, 20), (90, 20, 160), (250, 120, 10),
           (10, 160, 170), (180, 180, 180)]
# Flat frames leave only rounding between swscale (range step, 8-bit lookup tables) and the
# matrix written out in float64; a matrix mix-up costs 10 levels or more on this palette.
LEVELS = 3


@pytest.fixture(scope="module")
def colour_clips(tmp_path_factory):
    """16 flat frames at 10 fps (so TSAM's fps=10 keeps every one), tagged BT.709 (and coded
    with it), and the same untagged (coded with swscale's default, BT.601)."""
    folder = tmp_path_factory.mktemp("colour")
    return {tag: write_clip(folder / f"{tag}.mp4", fps=10, duration=1.6, size=(64, 48), colorspace=tag,
                            audio=False, frame_fn=lambda i: np.full((48, 64, 3), PALETTE[i % 8], np.uint8))
            for tag in ("bt709", None)}


def _worst(frames, refs, numbers, matrix) -> float:
    return max(np.abs(f.astype(float) - refs[k - 1][matrix]).max() for f, k in zip(frames, numbers))


@pytest.mark.parametrize("tag", ["bt709", None])
def test_tsm_and_tsam_convert_the_streams_yuv_with_bt601_as_pillow_reads_ffmpegs_jpegs(colour_clips, tag):
    refs = decoded_rgb_references(colour_clips[tag])
    assert len(refs) == 16
    tsm = decode_tsm_frames(colour_clips[tag], 8, height=48)
    tsam = decode_tsam_frames(colour_clips[tag], 4, height=48)
    assert tsm[0].shape == tsam[0].shape == (48, 64, 3)
    for frames, numbers in ((tsm, tsn_test_indices(16, 8)), (tsam, tsam_validation_indices(16, 4))):
        assert _worst(frames, refs, numbers, "bt601") <= LEVELS
        if tag == "bt709":   # the test can tell the matrices apart
            assert _worst(frames, refs, numbers, "bt709") > 10


def test_the_stream_rule_gives_the_tagged_colours_and_untagged_clips_barely_change(colour_clips):
    refs = decoded_rgb_references(colour_clips["bt709"])
    numbers = tsn_test_indices(16, 8)
    # Two roundings: the scale filter converts BT.709 YUV to BT.601 YUV, then to RGB.
    assert _worst(decode_tsm_frames(colour_clips["bt709"], 8, height=48, yuv_matrix="stream"), refs, numbers,
                  "bt709") <= LEVELS + 2
    # Untagged: the matrix is BT.601 either way; only ffmpeg's JPEG range step rounds.
    stream, bt601 = (decode_tsm_frames(colour_clips[None], 8, height=48, yuv_matrix=m) for m in ("stream", "bt601"))
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(stream, bt601)) <= 2
    with pytest.raises(ValueError, match="yuv_matrix must be one of stream, bt601"):
        decode_tsm_frames(colour_clips[None], 8, yuv_matrix="bt709")


def test_specs_record_the_matrix_so_older_caches_are_told_apart():
    for spec in (TSMFrames(), TSAMFrames()):
        assert spec.yuv_matrix == "bt601" and spec.to_dict()["yuv_matrix"] == "bt601"
        assert type(spec).from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="TSMFrames.yuv_matrix"):
        TSMFrames(yuv_matrix="709")
    with pytest.raises(ValueError, match="TSAMFrames.yuv_matrix"):
        TSAMFrames(yuv_matrix=None)


# ----------------------------------------------------------------------------- frame count

@pytest.fixture(scope="module")
def end_gap_clip(tmp_path_factory):
    """40 grey frames at 25 fps (level 8 + 6 i), the last one 1.6 frame durations after the one
    before: ffmpeg 5.1 writes it twice (delta = 1.6 > 1.1, lrintf(1.6) = 2 images)."""
    times = [i / 25 for i in range(39)] + [38 / 25 + 1.6 / 25]
    path = tmp_path_factory.mktemp("gap") / "end_gap.mp4"
    return write_clip(path, frame_times=times, fps=25, size=(64, 48),
                      frame_fn=lambda i: np.full((48, 64, 3), 8 + 6 * i, dtype=np.uint8))


def test_tsm_numbers_the_images_ffmpeg_writes_after_an_end_gap(end_gap_clip):
    count, _ = _decode_all(end_gap_clip)
    assert count == 40
    numbers = tsn_test_indices(41, 8)                # 41 images: the last frame twice
    assert numbers != tsn_test_indices(40, 8)          # segments 4..7 move by one frame
    got = decode_tsm_frames(end_gap_clip, 8, height=48)
    assert [_which(f) for f in got] == [min(k - 1, 39) for k in numbers]
    dense = decode_tsm_frames(end_gap_clip, 8, height=48, dense=True)
    assert [_which(f) for f in dense] == [min(k - 1, 39) for k in tsn_test_indices(41, 8, dense=True)]


def test_clip_errors_name_the_clip(tmp_path):
    with pytest.raises(ClipError, match="nothing.mp4|file not found"):
        load_tsm_frames(tmp_path / "nothing.mp4")
    write_clip(tmp_path / "sound.m4a", video=False)
    with pytest.raises(ClipError, match="no video stream"):
        decode_tsam_frames(tmp_path / "sound.m4a")


def test_real_clips(subset_dir):
    path = next(Path(subset_dir).glob("*/*.mp4"))
    tsm = load_tsm_frames(path)
    assert tsm.shape == (3, 8, 224, 224) and tsm.std() > 0.1
    tsam = load_tsam_frames(path)
    assert tsam.shape == (3, 16, 224, 224) and 0 <= tsam.min() and tsam.max() <= 1 + 1e-6
    assert not torch.equal(tsam[:, 0], tsam[:, -1])
