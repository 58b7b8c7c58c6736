"""Extraction through the registry: every backbone's cache equals its own forward on the same inputs."""
import numpy as np
import pytest
import torch

from alphafuse.cache import read_split
from alphafuse.data import ClipDataset, read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract import create_backbone, load_ast, load_cavmae, load_timesformer
from alphafuse.extract.runner import extract_split
from tests.cavmae_reference import cavmae_state

TOL = 1e-5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six short synthetic clips (stereo audio, so the down-mix rule matters) in two classes."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for i in range(6):
        colour = rng.integers(0, 255, 3)
        write_clip(root / f"c{i}.mp4", duration=1.5, fps=12, size=(80, 60), channels=2,
                   frame_fn=lambda t, c=colour: np.full((60, 80, 3), (c + 7 * t) % 255, np.uint8))
        rows.append(f"c{i}.mp4,{'ab'[i % 2]},train")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return read_manifest(root / "manifest.csv")


def _inputs(manifest, specs):
    dataset = ClipDataset(manifest.split("train"), manifest.label_names, specs["video"], specs["audio"],
                          decode_threads=1)
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    return batch["video"], batch["fbank"]


def test_cavmae_cache_equals_its_forward_and_classifier(clips, tmp_path):
    torch.save(cavmae_state("finetuned", audio_length=128, num_classes=7), tmp_path / "vgg_ft.pth")
    model = load_cavmae(tmp_path / "vgg_ft.pth", audio_length=128, arch="tiny")
    summary = extract_split(clips, "train", tmp_path / "cache", backbone=model, workers=0, batch_size=4)
    cache = read_split(summary.cache_path)
    assert cache.audio.shape == (6, 64) and cache.video.shape == (6, 10, 64)
    assert cache.embeddings["joint"].shape == (6, 10, 64) and cache.embeddings["logits"].shape == (6, 10, 7)
    assert cache.embedding_info["video"]["views"] == 10 and cache.embedding_info["logits"]["label_space"] == "backbone"
    assert cache.backbones["audiovisual"]["name"] == "cavmae"
    frames, fbank = _inputs(clips, model.input_specs("audiovisual"))
    assert frames.shape == (6, 3, 10, 224, 224) and fbank.shape == (6, 128, 128)
    with torch.no_grad():
        direct = model.embed(fbank, frames.transpose(1, 2))
        logits = model.classify(fbank, frames.transpose(1, 2))
    for name in ("audio", "video", "joint"):
        np.testing.assert_allclose(cache.embeddings[name], direct[name].numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(cache.embeddings["logits"], logits.numpy(), atol=TOL, rtol=0)


def test_mixed_pair_timesformer_video_with_cavmae_audio(clips, tmp_path):
    video = load_timesformer(arch="tiny", num_frames=4, img_size=32)
    audio = create_backbone("cavmae", arch="tiny", audio_length=128)
    cache = read_split(extract_split(clips, "train", tmp_path, video, audio, workers=0).cache_path)
    assert cache.video.shape == (6, 64) and cache.audio.shape == (6, 64) and set(cache.embeddings) == {"video", "audio"}
    assert cache.preprocessing["audio"]["downmix"] == "first" and cache.preprocessing["audio"]["norm_std_scale"] == 1.0
    frames, fbank = _inputs(clips, {**video.input_specs("video"), **audio.input_specs("audio")})
    with torch.no_grad():
        np.testing.assert_allclose(cache.audio, audio.embed_audio(fbank).numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(cache.video, video(frames).numpy(), atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """Two 6-s clips with a picture that changes across the frame and over time."""
    root = tmp_path_factory.mktemp("long")
    ramp = np.linspace(0, 200, 80, dtype=np.float32)[None, :, None]
    for i in range(2):
        write_clip(root / f"l{i}.mp4", duration=6.0, fps=12, size=(80, 60),
                   frame_fn=lambda t, i=i: np.broadcast_to(ramp + 3 * t + 20 * i, (60, 80, 3)).astype(np.uint8))
    (root / "manifest.csv").write_text("path,label,split\nl0.mp4,a,train\nl1.mp4,b,train\n")
    return read_manifest(root / "manifest.csv")


def test_views_tokens_and_layers_are_cached_per_view(long_clips, tmp_path):
    clips = long_clips
    video = load_timesformer(arch="tiny", num_frames=4, img_size=32)
    audio = load_ast(arch="tiny", input_tdim=128)
    summary = extract_split(clips, "train", tmp_path, video, audio, workers=0, spatial_crops=3, temporal_views=2,
                            sampling="timesformer_window", tokens=True, layers="all")
    cache = read_split(summary.cache_path)
    assert cache.video.shape == (2, 6, 64) and cache.embedding_info["video"]["views"] == 6
    assert cache.embeddings["video_tokens"].shape == (2, 6, 5, 64)
    assert cache.embeddings["video_tokens"].dtype == np.float16
    assert cache.embeddings["audio_tokens"].shape == (2, 2 + (128 - 16) // 10 + 1, 64)
    assert cache.embeddings["audio_layers"].shape == (2, 2, 64)
    specs = {**video.input_specs("video", spatial_crops=3), **audio.input_specs("audio")}
    from dataclasses import replace
    specs["video"] = replace(specs["video"], temporal_views=2, sampling="timesformer_window")
    frames, fbank = _inputs(clips, specs)
    assert frames.shape == (2, 6, 3, 4, 32, 32)
    with torch.no_grad():
        per_view = video(frames.flatten(0, 1)).unflatten(0, (2, 6))
        np.testing.assert_allclose(cache.video, per_view.numpy(), atol=TOL, rtol=0)
        # The last layer's pooled embedding is the embedding itself (stored in float16).
        np.testing.assert_allclose(cache.embeddings["audio_layers"][:, -1], audio(fbank).numpy(), atol=2e-3, rtol=2e-3)
    # Temporal views differ (the window moves), and so do the spatial crops of one view.
    assert np.abs(cache.video[:, 0] - cache.video[:, 3]).max() > 1e-4
    assert np.abs(cache.video[:, 0] - cache.video[:, 1]).max() > 1e-4


def test_tsm_cache_equals_its_forward_and_classifier(clips, tmp_path):
    from alphafuse.extract import load_tsm
    from tests.tsm_reference import save_tsm_checkpoint, tsm_state
    save_tsm_checkpoint(tmp_path / "tsm.pth", tsm_state())
    video = load_tsm(tmp_path / "tsm.pth", num_segments=4, arch="tiny")
    audio = load_ast(arch="tiny", input_tdim=128)
    cache = read_split(extract_split(clips, "train", tmp_path / "c", video, audio, workers=0).cache_path)
    assert cache.preprocessing["video"]["kind"] == "tsm_frames" and cache.embeddings["logits"].shape[1] == 400
    frames, fbank = _inputs(clips, {**video.input_specs("video"), **audio.input_specs("audio")})
    assert frames.shape == (6, 3, 4, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(cache.video, video.embed(frames)["video"].numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(cache.embeddings["logits"], video.classify(frames).numpy(), atol=TOL, rtol=0)


def test_tsam_cache_gives_its_classifier_from_the_embeddings(clips, tmp_path):
    from alphafuse.extract import load_tsam
    from tests.tsm_reference import save_tsam_checkpoint, tsam_model_state
    save_tsam_checkpoint(tmp_path / "tsam.ckpt.pth.tar", tsam_model_state())
    model = load_tsam(tmp_path / "tsam.ckpt.pth.tar", num_segments=4, shift_depth=1, arch="tiny")
    cache = read_split(extract_split(clips, "train", tmp_path / "c", backbone=model, workers=0).cache_path)
    assert cache.preprocessing["audio"]["kind"] == "tsam_spectrogram"
    frames, spectrogram = _inputs(clips, model.input_specs("audiovisual"))
    assert frames.shape == (6, 3, 4, 224, 224) and spectrogram.shape == (6, 3, 224, 224)
    with torch.no_grad():
        logits = model.classify(frames, spectrogram)
        from_cache = model.classify_from_embeddings(torch.from_numpy(cache.video), torch.from_numpy(cache.audio))
    np.testing.assert_allclose(cache.embeddings["logits"], logits.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(from_cache.numpy(), logits.numpy(), atol=TOL, rtol=0)


def test_tsm_two_clips_three_crops_are_six_views_temporal_major(long_clips, tmp_path):
    from alphafuse.extract.tsm import TSMFrames
    from alphafuse.extract import load_tsm
    video = load_tsm(num_segments=4, arch="tiny")
    audio = load_ast(arch="tiny", input_tdim=128)
    cache = read_split(extract_split(long_clips, "train", tmp_path, video, audio, workers=0, spatial_crops=3,
                                     temporal_views=2).cache_path)
    assert cache.video.shape == (2, 6, 512) and cache.embedding_info["video"]["views"] == 6
    spec = TSMFrames(num_segments=4, test_crops=3, temporal_views=2)
    clip = long_clips.split("train")[0]
    frames = spec.load(clip.path, clip.clip_id)
    assert frames.shape == spec.output_shape == (6, 3, 4, 224, 224)
    # twice_sample's second clip starts at each segment's beginning: other frames than the first's.
    assert (frames[0] - frames[3]).abs().max() > 1e-3
    with torch.no_grad():
        np.testing.assert_allclose(cache.video[0], video.embed(frames)["video"].numpy(), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=r"1, 2 \(twice_sample\) or 10 \(dense_sample\) clips"):
        TSMFrames(temporal_views=3)
