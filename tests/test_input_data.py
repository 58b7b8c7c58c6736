"""Odd labels and paths are kept exactly through cache, fuse and predictions; degenerate caches
train or give one line."""
import csv
import io
import os

import h5py
import numpy as np
import pytest

from alphafuse.cache import CacheError, FeatureSplit, read_split, write_split
from alphafuse.data import read_manifest
from alphafuse.data.synth import write_clip
from alphafuse.extract import create_backbone
from alphafuse.extract.runner import extract_split
from alphafuse.fuse import TrainConfig
from alphafuse.fuse.commands import fuse_command
from alphafuse.fuse.model import AlphaTransformer
from alphafuse.fuse.run import evaluate_run

LABELS = ["a,b", 'say "hi"', "line\nbreak", "ünï 猫"]


@pytest.mark.slow
def test_odd_labels_and_paths_survive_cache_fuse_and_predictions(tmp_path):
    names = ["c,1.mp4", 'q"2.mp4', "ü 3.mp4", "p4.mp4", "p5.mp4", "p6.mp4", "t,7.mp4", 't"8.mp4', "p9.mp4"]
    for i, name in enumerate(names):
        write_clip(tmp_path / name, size=(32, 24), duration=0.5, fps=10,
                   frame_fn=lambda k, i=i: np.full((24, 32, 3), 25 * i, np.uint8))
    os.symlink(tmp_path / "p9.mp4", tmp_path / "link,10.mp4")          # a symlink is read through
    os.symlink(tmp_path / "loop.mp4", tmp_path / "loop.mp4")            # a loop is one clip error
    rows = [(n, LABELS[i % 4], "train" if i < 6 else "test") for i, n in enumerate(names)]
    rows += [("link,10.mp4", LABELS[3], "test"), ("loop.mp4", LABELS[0], "test")]
    text = io.StringIO()
    csv.writer(text).writerows([("path", "label", "split"), *rows])
    (tmp_path / "m.csv").write_text(text.getvalue(), encoding="utf-8")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.label_names == sorted(LABELS)

    video, audio = (create_backbone("timesformer", None, arch="tiny", num_frames=2),
                    create_backbone("ast", None, arch="tiny", input_tdim=128))
    for split in ("train", "test"):
        extract_split(manifest, split, tmp_path / "cache", video, audio, workers=0, batch_size=4)
    test = read_split(tmp_path / "cache" / "test.h5")
    assert test.label_names == sorted(LABELS)
    assert test.clip_ids == ["t,7", 't"8', "p9", "link,10"]
    assert test.errors == [("loop", "file is a symlink loop")]

    fuse_command(tmp_path / "cache", TrainConfig(epochs=1, hidden=(8,)), tmp_path / "run", tmp_path, False,
                 echo=lambda *_: None)
    evaluate_run(tmp_path / "run", test, tmp_path / "predictions.csv")
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["clip_id", "label", "predicted", *sorted(LABELS)]
    assert [row[:2] for row in table[1:]] == [["t,7", LABELS[2]], ['t"8', LABELS[3]], ["p9", LABELS[0]],
                                              ["link,10", LABELS[3]]]
    assert all(row[2] in LABELS for row in table[1:])
    results = AlphaTransformer.from_run(tmp_path / "run").predict_files([tmp_path / "link,10.mp4",
                                                                         tmp_path / "loop.mp4"], top_k=4)
    assert sorted(t["label"] for t in results[0]["top"]) == sorted(LABELS)
    assert results[1]["error"] == "file is a symlink loop"


BACKBONES = {"video": {"fingerprint": "random:1"}, "audio": {"fingerprint": "random:2"}}


def _split(split, n, classes, dtype=np.float32):
    rng = np.random.default_rng(len(split))
    return FeatureSplit(split=split, clip_ids=[f"{split}{i}" for i in range(n)], labels=np.arange(n) % classes,
                        video=rng.normal(size=(n, 4)).astype(dtype), audio=rng.normal(size=(n, 3)).astype(dtype),
                        has_audio=np.ones(n, bool), label_names=[f"l{i}" for i in range(classes)],
                        backbones=BACKBONES, preprocessing={"video": {"num_frames": 8}}, errors=[])


@pytest.mark.parametrize("n, classes, dtype", [(1, 1, np.float32), (6, 1, np.float32), (6, 2, np.float16)],
                         ids=["one_clip", "one_class", "float16"])
def test_degenerate_caches_train(tmp_path, n, classes, dtype):
    write_split(tmp_path / "train.h5", _split("train", n, classes, dtype))
    write_split(tmp_path / "test.h5", _split("test", n, classes, dtype))
    metrics = fuse_command(tmp_path, TrainConfig(epochs=2, hidden=(8,)), tmp_path / "run", tmp_path, False,
                           echo=lambda *_: None)
    assert 0 <= metrics["test"]["top1"] <= 1 and np.isfinite(metrics["test"]["loss"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embeddings_in_a_cache_file_are_one_line(tmp_path, bad):
    write_split(tmp_path / "train.h5", _split("train", 6, 2))
    with h5py.File(tmp_path / "train.h5", "r+") as f:
        f["video"][2] = bad
    with pytest.raises(CacheError, match=r"train.h5: embedding 'video' is NaN or infinite for 1 clip\(s\) \(train2\)"):
        fuse_command(tmp_path, TrainConfig(epochs=1, hidden=(8,)), tmp_path / "run", tmp_path, False)


def test_truncated_and_empty_caches_are_one_line(tmp_path):
    write_split(tmp_path / "whole.h5", _split("train", 6, 2))
    data = (tmp_path / "whole.h5").read_bytes()
    (tmp_path / "train.h5").write_bytes(data[:len(data) // 2])
    with pytest.raises(CacheError, match=r"train.h5: not a readable alphafuse cache \(.*truncated file"):
        fuse_command(tmp_path, TrainConfig(epochs=1, hidden=(8,)), tmp_path / "run", tmp_path, False)
    write_split(tmp_path / "train.h5", _split("train", 0, 2))
    with pytest.raises(ValueError, match=f"^train split '{tmp_path / 'train.h5'}' has no clips; extract it first$"):
        fuse_command(tmp_path, TrainConfig(epochs=1, hidden=(8,)), tmp_path / "run", tmp_path, False)
