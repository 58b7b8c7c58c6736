"""data.sampling: the temporal sampling rules against the reference projects' own formulas."""
import pytest
import torch

import alphafuse.data.sampling as sampling_module
from alphafuse.data import ClipError, VideoConfig, load_video, register_sampling, sample_frames
from alphafuse.data.synth import write_clip
from alphafuse.data.sampling import StreamTiming
from alphafuse.data.video import frame_positions
from tests.media import (cavmae_indices, reference_clip_tensor, reference_indices, reference_preprocess,
                         timesformer_indices, timesformer_pyav_frames, tsn_indices, video_fps)

# (frames available, frames wanted, fps): 10 s clips at VGGSound's rates, short and long ones.
GRID = [(300, 8, 30.0), (250, 8, 25.0), (120, 8, 12.0), (299, 8, 29.97), (240, 16, 24.0),
        (100, 8, 30.0), (8, 8, 30.0), (5, 8, 25.0), (1, 8, 30.0), (1000, 32, 30.0), (3, 1, 30.0),
        (301, 10, 30.0), (150, 10, 15.0), (95, 10, 10.0), (600, 10, 60.0), (7, 10, 29.97)]


@pytest.mark.parametrize("n,t,fps", GRID)
def test_uniform_is_the_rounded_linspace(n, t, fps):
    assert sample_frames("uniform", n, t, fps=fps) == reference_indices(n, t)


@pytest.mark.parametrize("n,t,fps", GRID)
def test_timesformer_window_is_its_decoders_window(n, t, fps):
    got = sample_frames("timesformer_window", n, t, fps=fps)
    assert got == timesformer_indices(n, t, fps)
    # 8 frames at 32 frames per step and 30 fps span 8.53 s: a 10 s clip's last 1.5 s are unused.
    if n == 300 and t == 8:
        assert got == [0, 36, 72, 109, 145, 182, 218, 255]


@pytest.mark.parametrize("n,fps", [(300, 30.0), (120, 12.0), (1000, 25.0), (40, 30.0)])
@pytest.mark.parametrize("num_views", [1, 2, 3, 10])
def test_timesformer_temporal_views_split_the_clip(n, fps, num_views):
    views = [sample_frames("timesformer_window", n, 8, fps=fps, view=v, num_views=num_views)
             for v in range(num_views)]
    assert views == [timesformer_indices(n, 8, fps, clip_idx=v, num_clips=num_views)
                     for v in range(num_views)]
    firsts = [v[0] for v in views]
    assert firsts == sorted(firsts)
    if n == 1000 and num_views > 1:  # room to move: the views start at different frames
        assert len(set(firsts)) == num_views


def test_timesformer_window_options_change_the_window():
    got = sample_frames("timesformer_window", 300, 8, fps=30.0, sampling_rate=8, target_fps=30)
    assert got == timesformer_indices(300, 8, 30.0, sampling_rate=8)
    assert got[-1] == 63  # 8 x 8 frames


@pytest.mark.parametrize("n,t,fps", [(n, 10, fps) for n, _, fps in GRID])
def test_cavmae_frames_are_its_opencv_reads(n, t, fps):
    assert sample_frames("cavmae", n, t, fps=fps) == cavmae_indices(n, fps)


def test_cavmae_single_frame_is_the_middle_one_its_eval_uses():
    ten = sample_frames("cavmae", 300, 10, fps=30.0)
    assert ten == [0, 29, 59, 89, 119, 149, 179, 209, 239, 269]
    assert sample_frames("cavmae", 300, 1, fps=30.0) == [ten[5]]
    assert sample_frames("cavmae", 300, 1, fps=30.0, frame_use=2) == [ten[2]]
    # A 60 s clip: only the first 10 s are used.
    assert sample_frames("cavmae", 1800, 10, fps=30.0) == ten


@pytest.mark.parametrize("n,t,fps", GRID)
def test_tsn_takes_segment_centres(n, t, fps):
    assert sample_frames("tsn", n, t) == tsn_indices(n, t)


def test_rules_validate_their_inputs():
    with pytest.raises(ValueError, match="unknown sampling rule 'random'"):
        sample_frames("random", 10, 8)
    with pytest.raises(ValueError, match="needs the clip's frame rate"):
        sample_frames("timesformer_window", 10, 8)
    with pytest.raises(ValueError, match="single temporal view"):
        sample_frames("uniform", 10, 8, view=1, num_views=2)
    with pytest.raises(ValueError, match="view must be in"):
        sample_frames("timesformer_window", 10, 8, fps=30.0, view=3, num_views=3)
    with pytest.raises(ValueError, match="has no option stride; its options: sampling_rate, target_fps"):
        sample_frames("timesformer_window", 10, 8, fps=30.0, stride=2)
    with pytest.raises(ValueError, match="cavmae"):
        sample_frames("cavmae", 300, 4, fps=30.0)
    for n, t in [(0, 8), (5, 0)]:
        with pytest.raises(ValueError):
            sample_frames("uniform", n, t)


def test_a_registered_rule_is_usable_from_a_config(monkeypatch):
    monkeypatch.setattr(sampling_module, "SAMPLINGS", dict(sampling_module.SAMPLINGS))

    @register_sampling("every_other")
    def every_other(num_available, num_frames, *, fps=None, view=0, num_views=1, offset=0):
        return [min(offset + 2 * i, num_available - 1) for i in range(num_frames)]

    cfg = VideoConfig(num_frames=3, sampling="every_other", sampling_options={"offset": 1})
    assert frame_positions(cfg, 10, None, "x") == [1, 3, 5]
    with pytest.raises(ValueError, match="registered twice"):
        register_sampling("every_other")(lambda num_available, num_frames, *, fps, view, num_views: [])


def test_a_rule_that_needs_the_frame_rate_fails_the_clip_without_one():
    cfg = VideoConfig(sampling="timesformer_window")
    with pytest.raises(ClipError, match="needs the frame rate"):
        frame_positions(cfg, 100, None, "clip-7")


@pytest.fixture(scope="module")
def twelve_fps(tmp_path_factory):
    # 10 s at 12 fps (VGGSound has such clips): TimeSformer's window is 102.4 of 120 frames.
    return write_clip(tmp_path_factory.mktemp("fps") / "twelve.mp4", fps=12, duration=10.0,
                      size=(40, 30), audio=False)


@pytest.mark.parametrize("rule,pick", [
    ("timesformer_window", lambda n, fps: timesformer_indices(n, 8, fps)),
    ("uniform", lambda n, fps: reference_indices(n, 8)),
    ("tsn", lambda n, fps: tsn_indices(n, 8)),
])
def test_load_video_decodes_the_frames_the_rule_picks(twelve_fps, rule, pick):
    fps = video_fps(twelve_fps)
    assert fps == 12.0
    got = load_video(twelve_fps, VideoConfig(sampling=rule, img_size=32))
    want = reference_clip_tensor(twelve_fps, pick=lambda n: pick(n, fps), size=32)
    assert (got - want).abs().max().item() <= 1e-5


def test_the_rules_pick_different_frames_of_the_same_clip():
    picks = {rule: tuple(sample_frames(rule, 120, 8, fps=12.0)) for rule in ("uniform", "tsn",
                                                                               "timesformer_window")}
    assert len(set(picks.values())) == 3, picks


def test_timesformer_pyav_places_its_window_on_the_declared_frame_count():
    # 301 frames shown, 433 declared (an mp4 whose edit list hides 132 pre-roll frames), 30 fps.
    pts = tuple(3000 * i for i in range(301))
    timing = StreamTiming(pts, 433, 903060)
    got = sample_frames("timesformer_pyav", 301, 8, fps=30.0, timing=timing)
    per_frame = 903060 / 433  # the reference's duration / frames_length
    end_pts = int(255 * per_frame)
    window = [i for i, p in enumerate(pts) if p <= end_pts]
    window.append(len(window))  # the first frame past the window is decoded too
    want = torch.clamp(torch.linspace(0, 255, 8), 0, len(window) - 1).long().tolist()
    assert got == [window[i] for i in want]
    assert got != sample_frames("timesformer_window", 301, 8, fps=30.0)
    # Declared and shown agree: the same frames as the window on the counted frames.
    honest = StreamTiming(pts, 301, 903000)
    assert sample_frames("timesformer_pyav", 301, 8, fps=30.0, timing=honest) == \
        sample_frames("timesformer_window", 301, 8, fps=30.0)
    # Nothing declared (mkv) or no timestamps: the reference decodes everything.
    for timing in (None, StreamTiming(pts, 0, None), StreamTiming(pts, 433, None)):
        assert sample_frames("timesformer_pyav", 301, 8, fps=30.0, timing=timing) == \
            sample_frames("timesformer_window", 301, 8, fps=30.0)


@pytest.mark.parametrize("fps,duration", [(12, 10.0), (30, 10.0), (25, 3.0)])
def test_load_video_timesformer_pyav_equals_its_decoder_on_synthetic_clips(tmp_path, fps, duration):
    path = write_clip(tmp_path / "c.mp4", fps=fps, duration=duration, size=(40, 30), audio=False)
    pts, kept = timesformer_pyav_frames(path)
    want = reference_preprocess([kept[p] for p in pts], size=32)
    got = load_video(path, VideoConfig(sampling="timesformer_pyav", img_size=32))
    assert (got - want).abs().max().item() <= 1e-5
