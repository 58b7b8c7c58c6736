"""data.video: sampling, resize/crop/normalise, decoding of awkward and broken synthetic clips."""
import logging
import pickle
import re

import numpy as np
import pytest
import torch

import data.video as video_module
from data import ClipError, VideoConfig, load_video, preprocess_frames, sample_indices
from data.synth import write_clip
from tests.media import (CASES, build_corpus, corpus_folder, reference_clip_tensor, reference_indices,
                   reference_preprocess)

TOL = 1e-5
OK_CASES = [c for c in CASES if c.ok]
BAD_CASES = [c for c in CASES if not c.ok]
REFERENCE_CASES = [c for c in OK_CASES if "reference" in c.tags]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(corpus_folder(tmp_path_factory))


# --- temporal sampling --------------------------------------------------------------------------

@pytest.mark.parametrize("n,t", [(300, 8), (250, 8), (8, 8), (9, 8), (5, 8), (1, 8), (100, 1),
                                 (16, 4), (7, 16), (1000, 32)])
def test_sample_indices_match_a_hand_written_linspace(n, t):
    got = sample_indices(n, t)
    assert got == reference_indices(n, t)
    assert len(got) == t and got[0] == 0 and got[-1] == (n - 1 if t > 1 else 0)
    assert got == sorted(got) and all(0 <= i < n for i in got)


def test_sample_indices_repeat_frames_of_a_short_clip():
    got = sample_indices(3, 8)
    assert sorted(set(got)) == [0, 1, 2]
    assert len(got) == 8


@pytest.mark.parametrize("n,t", [(0, 8), (5, 0)])
def test_sample_indices_reject_nothing_to_sample(n, t):
    with pytest.raises(ValueError):
        sample_indices(n, t)


# --- spatial preprocessing -----------------------------------------------------------------------

SIZES = [(360, 480), (240, 320), (720, 1280), (360, 202), (352, 640), (13, 17), (12, 16),
         (224, 400), (225, 225), (1, 1), (2160, 3840), (720, 406)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("crops", [1, 3])
def test_preprocess_equals_whole_frame_interpolate(height, width, crops):
    rng = np.random.default_rng(height * 7919 + width)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    got = preprocess_frames(frames, VideoConfig(spatial_crops=crops))
    want = reference_preprocess(frames, crops=crops)
    assert got.shape == want.shape
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert (got - want).abs().max().item() <= TOL


def test_preprocess_uses_the_configured_size_mean_and_std():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(3)]
    cfg = VideoConfig(num_frames=3, img_size=64, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    got = preprocess_frames(frames, cfg)
    want = reference_preprocess(frames, size=64, mean=cfg.mean, std=cfg.std)
    assert got.shape == (3, 3, 64, 64)
    assert (got - want).abs().max().item() <= TOL


def test_three_crops_are_left_centre_right_for_landscape_and_top_centre_bottom_for_portrait():
    # A frame whose pixel value encodes its column (landscape) or row (portrait).
    land = np.repeat(np.repeat((np.arange(448) // 2).astype(np.uint8)[None, :, None], 224, 0), 3, 2)
    views = preprocess_frames([land], VideoConfig(spatial_crops=3))[:, 0, 0]  # (view, S, S)
    means = views.mean(dim=(1, 2))
    assert means[0] < means[1] < means[2]
    port = np.ascontiguousarray(land.transpose(1, 0, 2))
    views = preprocess_frames([port], VideoConfig(spatial_crops=3))[:, 0, 0]
    rows = views.mean(dim=2)  # each view's rows: increasing within and across views
    assert rows[0].mean() < rows[1].mean() < rows[2].mean()


def test_frame_sizes_may_change_within_a_clip():
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(48, 64, 3), (60, 40, 3)]]
    got = preprocess_frames(frames, VideoConfig(num_frames=2))
    for t, frame in enumerate(frames):
        assert (got[:, t] - reference_preprocess([frame])[:, 0]).abs().max().item() <= TOL


def test_preprocess_rejects_non_rgb_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames([np.zeros((10, 10), dtype=np.uint8)])
    with pytest.raises(ValueError, match="no frames"):
        preprocess_frames([])


# --- config -------------------------------------------------------------------------------------

def test_video_config_round_trips_through_json_and_validates():
    import json
    cfg = VideoConfig(num_frames=16, spatial_crops=3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert VideoConfig.from_dict(d) == cfg
    assert d["mean"] == [0.45, 0.45, 0.45] and d["std"] == [0.225, 0.225, 0.225]
    assert cfg.output_shape == (3, 3, 16, 224, 224)
    for bad in [dict(num_frames=0), dict(img_size=-1), dict(spatial_crops=2), dict(std=(0, 1, 1)),
                dict(mean=(0.5, 0.5))]:
        with pytest.raises(ValueError):
            VideoConfig(**bad)


# --- decoding the synthetic corpus --------------------------------------------------------------

@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda c: c.name)
def test_decoded_frames_equal_decode_everything_then_pick(corpus, case):
    got = load_video(corpus[case.name])
    want = reference_clip_tensor(corpus[case.name])
    assert got.shape == (3, 8, 224, 224)
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("case", OK_CASES, ids=lambda c: c.name)
def test_every_decodable_clip_gives_finite_tensors_of_the_right_shape(corpus, case):
    got = load_video(corpus[case.name], VideoConfig(num_frames=4, img_size=32))
    assert got.shape == (3, 4, 32, 32)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.name)
def test_broken_files_raise_a_clip_error_with_a_one_line_reason(corpus, case):
    path = corpus[case.name]
    with pytest.raises(ClipError) as info:
        load_video(path, clip_id="clip-42")
    err = info.value
    assert err.clip_id == "clip-42"
    assert re.search(case.error, err.reason), err.reason
    assert "\n" not in err.reason and "Traceback" not in err.reason
    assert str(path.parent) not in err.reason  # no temp folders in what the cache records
    assert str(err) == f"clip-42: {err.reason}"


def test_clip_error_defaults_to_the_file_stem_and_pickles(corpus):
    with pytest.raises(ClipError) as info:
        load_video(corpus["garbage.mp4"])
    err = pickle.loads(pickle.dumps(info.value))
    assert isinstance(err, ClipError)
    assert (err.clip_id, err.reason) == ("garbage", info.value.reason)


def test_short_clips_repeat_frames(corpus):
    one = load_video(corpus["one_frame.mp4"])
    assert all(torch.equal(one[:, 0], one[:, t]) for t in range(8))
    five = load_video(corpus["short.mp4"])
    distinct = {tuple(five[:, t].flatten()[:64].tolist()) for t in range(8)}
    assert len(distinct) == 5  # every frame used, some twice


def test_three_views_stack_in_front(corpus):
    path = corpus["portrait.mp4"]
    got = load_video(path, VideoConfig(spatial_crops=3))
    assert got.shape == (3, 3, 8, 224, 224)
    assert (got - reference_clip_tensor(path, crops=3)).abs().max().item() <= TOL
    assert torch.equal(got[1], load_video(path))  # the centre view is the 1-crop tensor


def test_variable_frame_rate_samples_by_frame_not_by_time(corpus):
    # 12 frames at irregular times: the protocol picks frame indices, as TimeSformer's loader does.
    frames = reference_clip_tensor(corpus["vfr.mkv"])
    assert (load_video(corpus["vfr.mkv"]) - frames).abs().max().item() <= TOL


def test_keyframe_skipping_decodes_fewer_packets_than_the_clip_has(corpus, monkeypatch):
    fed = []
    original = video_module._decode

    def counting(codec_context, packet):
        if packet is not None:
            fed.append(packet.pts)
        return original(codec_context, packet)

    monkeypatch.setattr(video_module, "_decode", counting)
    got = load_video(corpus["short_gop.mp4"])
    assert 0 < len(fed) < 100  # 100 frames, keyframe every 6: most groups are skipped
    assert (got - reference_clip_tensor(corpus["short_gop.mp4"])).abs().max().item() <= TOL


def test_long_videos_are_demuxed_again_instead_of_held_in_memory(corpus, monkeypatch, caplog):
    path = corpus["short_gop.mp4"]
    held = load_video(path)
    monkeypatch.setattr(video_module, "PACKET_BUDGET_BYTES", 2000)
    with caplog.at_level(logging.DEBUG, logger="data.video"):
        streamed = load_video(path)
    assert "demux again" in caplog.text
    assert torch.equal(held, streamed)


def test_threads_do_not_change_the_result(corpus):
    path = corpus["basic.mp4"]
    assert torch.equal(load_video(path, threads=1), load_video(path, threads=2))


def test_cover_art_is_not_a_video_stream(tmp_path):
    # An audio file with an attached picture (as m4a/mp3 files often have).
    import av
    audio = write_clip(tmp_path / "song.m4a", video=False)
    art = tmp_path / "with_art.m4a"
    with av.open(str(audio)) as src, av.open(str(art), "w", format="mp4") as dst:
        a_in = src.streams.audio[0]
        a_out = dst.add_stream_from_template(a_in)
        pic = dst.add_stream("mjpeg", rate=1)
        pic.width, pic.height, pic.pix_fmt = 16, 16, "yuvj420p"
        pic.disposition = av.stream.Disposition.attached_pic
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        frame.pts = 0
        for packet in pic.encode(frame):
            dst.mux(packet)
        for packet in pic.encode(None):
            dst.mux(packet)
        for packet in src.demux(a_in):
            if packet.size:
                packet.stream = a_out
                dst.mux(packet)
    with av.open(str(art)) as check:  # the picture is there, flagged as cover art
        assert [s.type for s in check.streams] == ["audio", "video"]
    with pytest.raises(ClipError, match="no video stream"):
        load_video(art)
