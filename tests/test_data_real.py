"""data/ on the real VGGSound subset (skipped, with the reason, where it is absent).

Every clip of the subset through data/ is tested on the session's shared extraction, which
decodes each one once (tests/test_extract.py::test_every_real_clip_once_and_absent_ones_as_errors);
here: the layouts, and awkward clips against the reference pipelines."""
import dataclasses
import json
import math

import av
import pytest
import torch

from alphafuse.data import (AudioConfig, VideoConfig, decode_audio, load_fbank, load_video,
                            read_manifest)
from alphafuse.extract.timesformer import YUV_MATRIX as TIMESFORMER_YUV
from tests.media import (ast_fbank, cavmae_indices, cavmae_preprocess, ffmpeg_wav, link, read_wav,
                         reference_preprocess, reference_sampled_frames, timesformer_indices,
                         timesformer_pyav_frames, video_fps)
from tests.test_data_audio import assert_fbank_close

# Awkward real clips: 160 edit-list pre-roll frames before the first shown one, portrait
# 406x720, 202x360, 12 fps with a packet count far from its metadata.
AWKWARD = ["train/bpXcG9Nfvos_000048.mp4", "train/bqZf6ynxdhE_000037.mp4",
           "val/bsMIq1C7ijw_000030.mp4", "train/bqp3e-O48W8_000096.mp4"]


@pytest.fixture(scope="module")
def manifest(subset_dir):
    return read_manifest(subset_dir / "manifest.csv")


def test_label_vocabulary_is_the_papers_label_mapping(subset_dir, manifest):
    mapping = json.loads((subset_dir / "label_mapping.json").read_text())
    assert manifest.label_names == sorted(mapping)
    assert all(manifest.label_index(name) == index for name, index in mapping.items())


def test_three_layouts_agree(subset_dir, manifest, tmp_path):
    vgg = read_manifest(subset_dir / "vggsound_subset.csv")
    as_tuples = lambda m: [(c.clip_id, c.path, c.label, c.split) for c in m.clips]  # noqa: E731
    assert as_tuples(vgg) == as_tuples(manifest)
    assert vgg.label_names == manifest.label_names
    # The folders layout, built from symlinks to the present clips: <split>/<label>/<clip>.
    for clip in manifest.clips:
        if clip.path.is_file():
            link(clip.path, tmp_path / clip.split / clip.label / clip.path.name)
    folders = read_manifest(tmp_path)
    present = {(c.clip_id, c.label, c.split) for c in manifest.clips if c.path.is_file()}
    assert {(c.clip_id, c.label, c.split) for c in folders.clips} == present
    # Folders only know the labels of clips on disk; those are all in the dataset's vocabulary.
    assert set(folders.label_names) <= set(manifest.label_names)


def test_unseen_labels_of_the_papers_split(manifest):
    train = {c.label for c in manifest.split("train")}
    for split in ("val", "test"):
        unseen = manifest.unseen_labels(split)
        assert unseen == sorted({c.label for c in manifest.split(split)} - train)
    assert "playing guiro" in manifest.unseen_labels("val")


@pytest.mark.parametrize("rel", AWKWARD)
def test_real_frames_equal_timesformers_pipeline(subset_dir, rel):
    # Decode every frame with PyAV, pick, then kinetics.py's test transform on whole frames:
    # one crop as data/ did so far (short side 224), TimeSformer's own one crop (short side
    # 256, centre 224) and its three crops (short side 224; left/centre/right or top/centre/bottom).
    path = subset_dir / rel
    indices, kept = reference_sampled_frames(path)
    frames = [kept[i] for i in indices]
    for crops, resize in [(1, None), (1, 256), (3, None)]:
        got = load_video(path, VideoConfig(spatial_crops=crops, resize=resize))
        want = reference_preprocess(frames, crops=crops, scale=resize)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-5, (crops, resize)


def test_real_timesformer_window_equals_its_decoder(subset_dir):
    path = subset_dir / AWKWARD[3]  # 12 fps: the window is 102.4 frames of the clip's ~120
    fps = video_fps(path)
    indices, kept = reference_sampled_frames(path, pick=lambda n: timesformer_indices(n, 8, fps))
    got = load_video(path, VideoConfig(resize=256, sampling="timesformer_window"))
    want = reference_preprocess([kept[i] for i in indices], scale=256)
    assert (got - want).abs().max().item() <= 1e-5


def test_real_timesformer_pyav_equals_its_decoder_where_metadata_overstates_the_frames(subset_dir):
    # This clip shows 120 frames and declares 149: TimeSformer's PyAV path places its window on
    # the declared count, and so picks other frames than the window on the counted ones.
    path = subset_dir / AWKWARD[3]
    pts, kept = timesformer_pyav_frames(path)
    want = reference_preprocess([kept[p] for p in pts], scale=256)
    got = load_video(path, VideoConfig(resize=256, sampling="timesformer_pyav", yuv_matrix=TIMESFORMER_YUV))
    assert (got - want).abs().max().item() <= 1e-5
    other = load_video(path, VideoConfig(resize=256, sampling="timesformer_window"))
    assert (got - other).abs().max().item() > 0.1


def test_timesformer_converts_tagged_clips_as_its_pyav_did(subset_dir):
    # TimeSformer's input converts YUV with BT.601 whatever the tag (the PyAV its decoder.py ran
    # on); on a BT.709-tagged real clip that is not what the stream's own matrix gives.
    from alphafuse.extract import load_timesformer

    spec = load_timesformer(arch="tiny").input_specs("video")["video"]
    assert spec.yuv_matrix == TIMESFORMER_YUV == "bt601"
    tagged = next(p for p in sorted(subset_dir.glob("*/*.mp4")) if _is_bt709(p))
    stream = load_video(tagged, dataclasses.replace(spec, yuv_matrix="stream"))
    assert (load_video(tagged, spec) - stream).abs().max().item() > 0.05


def _is_bt709(path) -> bool:
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.colorspace == 1   # AVCOL_SPC_BT709


def test_real_cavmae_frames_equal_its_extraction_and_dataloader(subset_dir):
    path = subset_dir / AWKWARD[1]  # portrait
    fps = video_fps(path)
    indices, kept = reference_sampled_frames(path, pick=lambda n: cavmae_indices(n, fps))
    cfg = VideoConfig(num_frames=10, resize_backend="pil", mean=(0.4850, 0.4560, 0.4060),
                      std=(0.2290, 0.2240, 0.2250), jpeg_quality=75, sampling="cavmae")
    got = load_video(path, cfg)
    assert (got - cavmae_preprocess([kept[i] for i in indices])).abs().max().item() <= 1e-6


def test_real_fbank_equals_the_numpy_kaldi_reference(subset_dir):
    path = subset_dir / AWKWARD[0]
    waveform, has_audio = decode_audio(path)
    assert has_audio and waveform.shape[0] == 1
    assert math.isclose(waveform.shape[1] / 16000, 10.0, abs_tol=0.1)
    fbank, _ = load_fbank(path)
    assert_fbank_close(fbank, ast_fbank(waveform))


@pytest.mark.parametrize("rel", ["train/bpDicRIWZH4_000030.mp4", AWKWARD[2]])
def test_real_audio_is_the_references_wav(subset_dir, tmp_path, rel):
    # What AST (ffmpeg -ar 16000 -ac 1) and CAV-MAE (ffmpeg -ar 16000, sox remix 1) read.
    path = subset_dir / rel
    wav = read_wav(ffmpeg_wav(path, tmp_path / "ac1.wav"))
    assert torch.equal(decode_audio(path)[0], wav)
    assert_fbank_close(load_fbank(path)[0], ast_fbank(wav))
    first = read_wav(ffmpeg_wav(path, tmp_path / "all.wav", mono=False))[:1]
    assert torch.equal(decode_audio(path, downmix="first")[0], first)
    cfg = AudioConfig(norm_mean=-5.081, norm_std=4.4849, norm_std_scale=1.0, downmix="first")
    assert_fbank_close(load_fbank(path, cfg)[0], ast_fbank(first, mean=-5.081, std=4.4849, std_scale=1.0))
