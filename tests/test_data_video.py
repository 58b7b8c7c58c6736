"""data.video: sampling, resize/crop/normalise, decoding of awkward and broken synthetic clips."""
import logging
import pickle
import re

import numpy as np
import pytest
import torch

import alphafuse.data.video as video_module
from alphafuse.data import ClipError, VideoConfig, load_video, preprocess_frames, sample_indices
from alphafuse.data.synth import write_clip
from tests.media import (CASES, build_corpus, corpus_folder, cavmae_indices, cavmae_preprocess, decoded_rgb_references,
                         reference_clip_tensor, reference_indices, reference_preprocess,
                         reference_sampled_frames, video_fps)

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
@pytest.mark.parametrize("crops,resize", [(1, None), (3, None), (1, 256)])
def test_preprocess_equals_timesformers_whole_frame_transform(height, width, crops, resize):
    # (1, 256): TimeSformer's one-crop test, short side TRAIN_JITTER_SCALES[0], centre 224.
    rng = np.random.default_rng(height * 7919 + width)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    got = preprocess_frames(frames, VideoConfig(spatial_crops=crops, resize=resize))
    want = reference_preprocess(frames, crops=crops, scale=resize)
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


def test_one_crop_at_256_is_not_the_centre_of_the_three_crop_view():
    frame = np.random.default_rng(5).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    at_224 = preprocess_frames([frame], VideoConfig())
    at_256 = preprocess_frames([frame], VideoConfig(resize=256))
    assert torch.equal(at_224, preprocess_frames([frame], VideoConfig(spatial_crops=3))[1])
    assert (at_224 - at_256).abs().max().item() > 0.1


PIL_SIZES = [(360, 480), (360, 202), (240, 321), (225, 401), (720, 1280), (13, 17), (224, 224)]


@pytest.mark.parametrize("height,width", PIL_SIZES)
@pytest.mark.parametrize("jpeg", [True, False])
def test_pil_backend_equals_cavmaes_torchvision_transforms(height, width, jpeg):
    # CAV-MAE: Resize(224) + CenterCrop + ToTensor, saved as JPEG, reloaded, the dataloader's
    # Resize(224, BICUBIC) (a no-op on 224 x 224 images), Normalize with ImageNet statistics.
    rng = np.random.default_rng(height * 31 + width)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    cfg = VideoConfig(num_frames=2, resize_backend="pil", mean=(0.4850, 0.4560, 0.4060),
                      std=(0.2290, 0.2240, 0.2250), jpeg_quality=75 if jpeg else None)
    got = preprocess_frames(frames, cfg)
    want = cavmae_preprocess(frames, jpeg=jpeg)
    assert got.shape == want.shape == (3, 2, 224, 224)
    assert (got - want).abs().max().item() <= 1e-6


def test_pil_backend_bicubic_and_its_own_resize_are_torchvisions():
    import torchvision.transforms as T
    frame = np.random.default_rng(8).integers(0, 256, (241, 321, 3), dtype=np.uint8)
    cfg = VideoConfig(num_frames=1, img_size=112, resize=128, resize_backend="pil",
                      interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1))
    from PIL import Image
    want = T.Compose([T.Resize(128, T.InterpolationMode.BICUBIC), T.CenterCrop(112),
                      T.ToTensor()])(Image.fromarray(frame))
    got = preprocess_frames([frame], cfg)[:, 0]
    assert (got - want).abs().max().item() <= 1e-6
    # Not the torch path: Pillow's antialiased resampling on uint8 differs from interpolate.
    torch_path = preprocess_frames([frame], VideoConfig(num_frames=1, img_size=112, resize=128,
                                                        mean=(0, 0, 0), std=(1, 1, 1)))[:, 0]
    assert (got - torch_path).abs().max().item() > 1e-2


def test_zero_mean_unit_std_gives_plain_unit_range_pixels():
    # TSAM feeds [0, 1] pixels: mean 0 and std 1 express it.
    frame = np.random.default_rng(6).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    got = preprocess_frames([frame], VideoConfig(num_frames=1, mean=(0, 0, 0), std=(1, 1, 1)))
    assert torch.allclose(got[:, 0].permute(1, 2, 0), torch.from_numpy(frame).float() / 255, atol=1e-6)


# --- config -------------------------------------------------------------------------------------

def test_video_config_round_trips_through_json_and_validates():
    import json
    cfg = VideoConfig(num_frames=16, spatial_crops=3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert VideoConfig.from_dict(d) == cfg
    assert d["mean"] == [0.45, 0.45, 0.45] and d["std"] == [0.225, 0.225, 0.225]
    assert cfg.output_shape == (3, 3, 16, 224, 224)
    every = VideoConfig(num_frames=10, img_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        resize=256, interpolation="bicubic", resize_backend="pil", jpeg_quality=75,
                        sampling="cavmae", sampling_options={"seconds": 10.0, "frame_use": -1}, yuv_matrix="bt601")
    d = json.loads(json.dumps(every.to_dict()))
    assert d["sampling_options"] == {"frame_use": -1, "seconds": 10.0}
    assert VideoConfig.from_dict(d) == every and hash(VideoConfig.from_dict(d)) == hash(every)
    assert set(d) == {f for f in VideoConfig.__dataclass_fields__}
    for bad in [dict(num_frames=0), dict(img_size=-1), dict(spatial_crops=2), dict(std=(0, 1, 1)),
                dict(mean=(0.5, 0.5)), dict(resize=200), dict(resize=2.5), dict(interpolation="nearest"),
                dict(interpolation="bicubic"), dict(resize_backend="cv2"),
                dict(resize_backend="pil", spatial_crops=3), dict(jpeg_quality=75),
                dict(resize_backend="pil", jpeg_quality=101), dict(sampling="random"),
                dict(sampling="timesformer_window", sampling_options={"stride": 2}),
                dict(sampling="cavmae", num_frames=4), dict(sampling_options={"x": [1]}),
                dict(yuv_matrix="bt709")]:
        with pytest.raises(ValueError, match="VideoConfig"):
            VideoConfig(**bad)
    with pytest.raises(ValueError, match="no field crop"):
        VideoConfig.from_dict({**cfg.to_dict(), "crop": 1})


def test_video_config_of_an_older_cache_keeps_its_behaviour():
    old = {"num_frames": 8, "img_size": 224, "mean": [0.45] * 3, "std": [0.225] * 3, "spatial_crops": 1}
    cfg = VideoConfig.from_dict(old)
    assert cfg == VideoConfig() and cfg.short_side == 224 and cfg.sampling == "uniform"
    assert cfg.resize_backend == "torch" and cfg.interpolation == "bilinear"
    assert cfg.yuv_matrix == "stream"     # the tagged matrix: what PyAV's conversion always gave


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
    with caplog.at_level(logging.DEBUG, logger="alphafuse.data.video"):
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


def test_cavmae_pipeline_on_a_clip_equals_its_extraction_and_dataloader(tmp_path):
    path = write_clip(tmp_path / "c.mp4", fps=15, duration=12.0, size=(96, 72), audio=False)
    fps = video_fps(path)
    cfg = VideoConfig(num_frames=10, resize_backend="pil", mean=(0.4850, 0.4560, 0.4060),
                      std=(0.2290, 0.2240, 0.2250), jpeg_quality=75, sampling="cavmae")
    got = load_video(path, cfg)
    indices, kept = reference_sampled_frames(path, pick=lambda n: cavmae_indices(n, fps))
    assert indices[-1] < 150  # the first 10 s of 12
    want = cavmae_preprocess([kept[i] for i in indices])
    assert (got - want).abs().max().item() <= 1e-6
    one = load_video(path, VideoConfig(num_frames=1, resize_backend="pil", mean=cfg.mean, std=cfg.std,
                                       jpeg_quality=75, sampling="cavmae"))
    assert torch.equal(one[:, 0], got[:, 5])  # the eval dataloader's middle frame


# Saturated flat colours: BT.601 and BT.709 disagree by 10 to 30 levels on them.
PALETTE = [(200, 30, 60), (30, 60, 220), (20, 200, 40), (240, 240, 20), (90, 20, 160), (250, 120, 10)]


@pytest.mark.parametrize("tag", ["bt709", None])
def test_bt601_rule_converts_the_decoded_yuv_with_bt601_whatever_the_tag(tmp_path, tag):
    # CAV-MAE's OpenCV 4.6 converts with BT.601 always (data/colour.py). Flat frames at the
    # output size leave only rounding (swscale's 8-bit tables) against the matrix written out.
    path = write_clip(tmp_path / "c.mp4", fps=10, duration=0.6, size=(64, 48), colorspace=tag, audio=False,
                      frame_fn=lambda i: np.full((48, 64, 3), PALETTE[i], np.uint8))
    refs = decoded_rgb_references(path)
    cfg = VideoConfig(num_frames=6, img_size=48, mean=(0, 0, 0), std=(1, 1, 1), yuv_matrix="bt601")
    got = (load_video(path, cfg) * 255).permute(1, 2, 3, 0).numpy()          # (T, S, S, 3)
    centre = slice(8, 56)                                                      # the 48 x 48 crop
    for frame, ref in zip(got, refs):
        assert np.abs(frame - ref["bt601"][:, centre]).max() <= 3
    if tag == "bt709":
        assert max(np.abs(f - r["bt709"][:, centre]).max() for f, r in zip(got, refs)) > 10
        stream = load_video(path, VideoConfig(num_frames=6, img_size=48, mean=(0, 0, 0), std=(1, 1, 1)))
        stream = (stream * 255).permute(1, 2, 3, 0).numpy()
        assert max(np.abs(f - r["bt709"][:, centre]).max() for f, r in zip(stream, refs)) <= 3
    else:   # untagged: both rules are the same swscale conversion
        assert torch.equal(load_video(path, cfg), load_video(path, VideoConfig(
            num_frames=6, img_size=48, mean=(0, 0, 0), std=(1, 1, 1))))
