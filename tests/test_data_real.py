"""data/ on the real VGGSound subset (skipped, with the reason, where it is absent)."""
import json
import math

import pytest
import torch
from torch.utils.data import DataLoader

from data import ClipDataset, VideoConfig, decode_audio, load_fbank, load_video, read_manifest
from tests.media import ast_fbank, link, reference_clip_tensor

# Awkward real clips: 160 edit-list pre-roll frames before the first shown one, portrait
# 406x720, 202x360, 12 fps with a packet count far from its metadata.
AWKWARD = ["train/bpXcG9Nfvos_000048.mp4", "train/bqZf6ynxdhE_000037.mp4",
           "val/bsMIq1C7ijw_000030.mp4", "train/bqp3e-O48W8_000096.mp4"]


@pytest.fixture(scope="module")
def manifest(subset_dir):
    return read_manifest(subset_dir / "manifest.csv")


@pytest.fixture(scope="module")
def full_pass(manifest):
    """Every clip of the manifest through ClipDataset and 2 DataLoader workers, once; keeps a
    summary per clip (the tensors of 130 clips would not fit comfortably in memory)."""
    ds = ClipDataset(manifest.clips, manifest.label_names)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=ds.collate)
    results = {}
    for batch in loader:
        for i, clip_id in enumerate(batch["clip_id"]):
            video, fbank = batch["video"][i], batch["fbank"][i]
            results[clip_id] = {"video_shape": tuple(video.shape), "fbank_shape": tuple(fbank.shape),
                                "finite": bool(torch.isfinite(video).all() and torch.isfinite(fbank).all()),
                                "video_std": float(video.std()), "fbank_std": float(fbank.std()),
                                "label": int(batch["label"][i]), "has_audio": bool(batch["has_audio"][i])}
        for clip_id, reason in batch["failed"]:
            results[clip_id] = {"error": reason}
    return results


def test_every_present_clip_gives_finite_tensors_of_the_right_shapes(manifest, full_pass):
    present = [c for c in manifest.clips if c.path.is_file()]
    assert len(present) == 122
    for clip in present:
        r = full_pass[clip.clip_id]
        assert "error" not in r, f"{clip.clip_id}: {r.get('error')}"
        assert r["video_shape"] == (3, 8, 224, 224) and r["fbank_shape"] == (1024, 128)
        assert r["finite"], clip.clip_id
        assert r["video_std"] > 0.05 and r["fbank_std"] > 0.05, clip.clip_id  # not blank
        assert r["label"] == manifest.label_index(clip.label)
        assert r["has_audio"], clip.clip_id  # every real clip has an AAC stream


def test_the_absent_clips_give_errors_naming_them(manifest, full_pass):
    absent = [c for c in manifest.clips if not c.path.exists()]
    assert len(absent) == 8
    for clip in absent:
        assert full_pass[clip.clip_id] == {"error": "file not found"}
    assert len(full_pass) == len(manifest.clips)


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
def test_real_frames_equal_decode_everything_then_pick(subset_dir, rel):
    path = subset_dir / rel
    got = load_video(path)
    assert (got - reference_clip_tensor(path)).abs().max().item() <= 1e-5


def test_real_three_views_equal_the_reference(subset_dir):
    path = subset_dir / AWKWARD[1]  # portrait: top / centre / bottom
    got = load_video(path, VideoConfig(spatial_crops=3))
    assert got.shape == (3, 3, 8, 224, 224)
    assert (got - reference_clip_tensor(path, crops=3)).abs().max().item() <= 1e-5


def test_real_fbank_equals_torchaudio_on_the_decoded_waveform(subset_dir):
    path = subset_dir / AWKWARD[0]
    waveform, has_audio = decode_audio(path)
    assert has_audio and waveform.shape[0] == 1
    assert math.isclose(waveform.shape[1] / 16000, 10.0, abs_tol=0.1)
    fbank, _ = load_fbank(path)
    assert torch.allclose(fbank, ast_fbank(waveform), atol=1e-5, rtol=0)
