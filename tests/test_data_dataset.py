"""data.dataset: items, errors, collation, pickling, DataLoader workers (synthetic clips)."""
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

import alphafuse.data.dataset as dataset_module
from alphafuse.data import (AudioConfig, Clip, ClipDataset, ClipError, VideoConfig, collate_clips, load_clip,
                  load_fbank, load_video)
from tests.media import CASES, build_corpus, corpus_folder

SMALL = VideoConfig(num_frames=4, img_size=32)
SHORT = AudioConfig(target_length=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(corpus_folder(tmp_path_factory))


@pytest.fixture(scope="module")
def clips(corpus):
    labels = ["even", "odd"]
    return [Clip(c.name.replace(".", "_"), corpus[c.name], labels[i % 2], "train")
            for i, c in enumerate(CASES)]


@pytest.fixture(scope="module")
def dataset(clips):
    return ClipDataset(clips, ["even", "odd"], SMALL, SHORT)


@pytest.fixture(scope="module")
def items(dataset):
    """Every corpus clip loaded once in this process (the tests below share them)."""
    return [dataset[i] for i in range(len(dataset))]


def test_load_clip_equals_the_separate_loaders(corpus):
    for name in ["basic.mp4", "vp9_opus.webm", "no_audio.mp4"]:
        both = load_clip(corpus[name])
        assert torch.equal(both.video, load_video(corpus[name]))
        fbank, has_audio = load_fbank(corpus[name])
        assert torch.equal(both.fbank, fbank) and both.has_audio == has_audio


def test_items_for_good_and_bad_clips(clips, dataset, items):
    assert len(dataset) == len(CASES)
    for i, case in enumerate(CASES):
        item = items[i]
        assert set(item) == {"clip_id", "video", "fbank", "label", "has_audio", "error"}
        assert item["clip_id"] == clips[i].clip_id and item["label"] == i % 2
        if case.ok:
            assert item["error"] is None
            assert item["video"].shape == (3, 4, 32, 32) and item["fbank"].shape == (64, 128)
            assert torch.isfinite(item["video"]).all() and torch.isfinite(item["fbank"]).all()
            assert item["has_audio"] is case.has_audio
        else:
            assert item["video"] is None and item["fbank"] is None
            assert isinstance(item["error"], str) and "\n" not in item["error"]


def test_collate_keeps_good_items_and_lists_failed_ones(dataset, items):
    batch = dataset.collate(items)
    good = [it for it in items if it["error"] is None]
    assert batch["clip_id"] == [it["clip_id"] for it in good]
    assert batch["video"].shape == (len(good), 3, 4, 32, 32)
    assert batch["fbank"].shape == (len(good), 64, 128)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [it["label"] for it in good]
    assert batch["has_audio"].dtype == torch.bool
    assert batch["has_audio"].tolist() == [it["has_audio"] for it in good]
    assert [cid for cid, _ in batch["failed"]] == [it["clip_id"] for it in items if it["error"]]


def test_collate_of_only_failures_gives_empty_tensors_with_the_right_shapes():
    failed = [{"clip_id": "x", "video": None, "fbank": None, "label": 0, "has_audio": False,
               "error": "file not found"}]
    batch = collate_clips(failed)
    assert batch["video"].shape == (0, 3, 8, 224, 224) and batch["fbank"].shape == (0, 1024, 128)
    assert batch["label"].shape == (0,) and batch["has_audio"].shape == (0,)
    assert batch["clip_id"] == [] and batch["failed"] == [("x", "file not found")]
    three = ClipDataset([], [], VideoConfig(spatial_crops=3), SHORT).collate(failed)
    assert three["video"].shape == (0, 3, 3, 8, 224, 224) and three["fbank"].shape == (0, 64, 128)


def test_three_views_batch_as_views_first(corpus):
    ds = ClipDataset([Clip("a", corpus["portrait.mp4"], "x", "test")], ["x"],
                     VideoConfig(num_frames=2, img_size=16, spatial_crops=3), SHORT)
    batch = ds.collate([ds[0]])
    assert batch["video"].shape == (1, 3, 3, 2, 16, 16)


def test_labels_outside_the_vocabulary_are_refused(clips):
    with pytest.raises(ValueError, match="not in label_names"):
        ClipDataset(clips, ["even"])
    with pytest.raises(ValueError, match="duplicates"):
        ClipDataset(clips, ["even", "odd", "even"])


def test_unexpected_errors_become_item_errors(clips, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("surprise\nsecond line")

    monkeypatch.setattr(dataset_module, "load_inputs", boom)
    item = ClipDataset(clips[:1], ["even", "odd"])[0]
    assert item["error"] == "unexpected RuntimeError: surprise second line"
    assert "surprise" in caplog.text  # logged with its traceback for whoever debugs it


def test_dataset_and_errors_pickle(clips):
    ds = pickle.loads(pickle.dumps(ClipDataset(clips, ["even", "odd"], SMALL, SHORT)))
    assert ds.clips == clips and ds.video_cfg == SMALL
    err = pickle.loads(pickle.dumps(ClipError("id", "empty file")))
    assert (err.clip_id, err.reason, str(err)) == ("id", "empty file", "id: empty file")


def test_dataloader_with_two_workers_matches_the_main_process(clips, dataset, items):
    ds = dataset
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=ds.collate)
    batches = list(loader)
    ids = [cid for b in batches for cid in b["clip_id"]]
    failed = dict(f for b in batches for f in b["failed"])
    assert len(ids) + len(failed) == len(clips)
    assert set(failed) == {clips[i].clip_id for i, c in enumerate(CASES) if not c.ok}
    local = ds.collate(items)
    assert ids == local["clip_id"]
    assert torch.equal(torch.cat([b["video"] for b in batches]), local["video"])
    # torch's FFT and matmul may sum in another order with one thread (workers) than with two.
    assert torch.allclose(torch.cat([b["fbank"] for b in batches]), local["fbank"], atol=1e-5, rtol=0)
