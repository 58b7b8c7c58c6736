"""The HDF5 store and the crash-safe parts it is built from."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from cache import CacheError, FeatureSplit, SplitWriter, check_compatible, merge_parts, read_split, write_split
from tests.conftest import REPO

META = {"split": "train", "label_names": ["a", "b", "c"], "dims": {"video": 4, "audio": 3},
        "backbones": {"video": {"fingerprint": "random:1"}, "audio": {"fingerprint": "random:2"}},
        "preprocessing": {"video": {"num_frames": 8}}, "sources": {"video": None, "audio": None}}


def _features(n=5, seed=0, **changes):
    rng = np.random.default_rng(seed)
    kwargs = dict(split="train", clip_ids=[f"clip{i}" for i in range(n)], labels=rng.integers(0, 3, n),
                  video=rng.normal(size=(n, 4)), audio=rng.normal(size=(n, 3)), has_audio=rng.random(n) > 0.3,
                  label_names=["a", "b", "c"], backbones=META["backbones"], preprocessing=META["preprocessing"],
                  errors=[("gone", "file not found")])
    kwargs.update(changes)
    return FeatureSplit(**kwargs)


def _batch(ids, seed):
    rng = np.random.default_rng(seed)
    n = len(ids)
    return dict(clip_ids=ids, labels=rng.integers(0, 3, n), video=rng.normal(size=(n, 4)),
                audio=rng.normal(size=(n, 3)), has_audio=np.ones(n, bool))


def test_round_trip_is_plain_h5py_readable(tmp_path):
    original = _features()
    write_split(tmp_path / "train.h5", original)
    back = read_split(tmp_path / "train.h5")
    assert back.clip_ids == original.clip_ids
    np.testing.assert_array_equal(back.video, original.video.astype(np.float32))
    np.testing.assert_array_equal(back.has_audio, original.has_audio)
    assert back.errors == [("gone", "file not found")]
    assert back.label_names == ["a", "b", "c"] and back.backbones == original.backbones
    with h5py.File(tmp_path / "train.h5") as f:  # the documented layout, without alphafuse
        assert f["video"].shape == (5, 4) and f["video"].dtype == np.float32
        assert json.loads(f.attrs["label_names"]) == ["a", "b", "c"]
        assert f.attrs["schema_version"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_files_are_named(tmp_path):
    with pytest.raises(CacheError, match="no such cache file"):
        read_split(tmp_path / "absent.h5")
    (tmp_path / "junk.h5").write_bytes(b"\x00" * 100)
    with pytest.raises(CacheError, match="junk.h5: not a readable alphafuse cache"):
        read_split(tmp_path / "junk.h5")
    with pytest.raises(CacheError, match="labels outside"):
        _features(labels=[0, 1, 2, 3, 0])


def test_check_compatible_names_the_difference():
    a = _features()

    def other(**changes):
        return _features(split="val", clip_ids=[f"v{i}" for i in range(5)], **changes)

    b = other(backbones={"video": {"fingerprint": "sha256:x"}, "audio": {"fingerprint": "random:2"}})
    with pytest.raises(CacheError, match=r"backbones: video\.fingerprint"):
        check_compatible(a, b)
    with pytest.raises(CacheError, match="label_names"):
        check_compatible(a, other(label_names=["a", "b", "z"]))
    check_compatible(a, other(seed=3))
    with pytest.raises(CacheError, match=r"video embeddings of shape \(8,\) but split 'train' has \(4,\)"):
        check_compatible(a, other(video=np.zeros((5, 8))))


def test_a_copied_split_or_a_clip_in_two_splits_is_refused():
    train = _features()
    with pytest.raises(CacheError, match="both split 'train'.*copied or renamed"):
        check_compatible(train, _features(seed=1))            # train.h5 copied as test.h5
    leaked = _features(split="test", clip_ids=["clip4", "t1", "t2", "t3", "t4"])
    with pytest.raises(CacheError, match="share 1 clip.*clip4"):
        check_compatible(train, leaked)


def test_named_embeddings_of_any_shape_round_trip_and_read_lazily(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(5, 3, 4)).astype(np.float16)
    f = _features(embeddings={"video_tokens": tokens}, embedding_info={"video_tokens": {"what": "CLS + frames"}})
    write_split(tmp_path / "train.h5", f)
    eager = read_split(tmp_path / "train.h5", lazy=False)
    assert eager.embeddings["video_tokens"].dtype == np.float16
    np.testing.assert_array_equal(eager.embeddings["video_tokens"], tokens)
    assert eager.embedding_info["video_tokens"] == {"what": "CLS + frames"}
    lazy = read_split(tmp_path / "train.h5", lazy=True)
    rows = lazy.embeddings["video_tokens"][np.array([4, 0, 4, 2])]     # unsorted, repeated
    np.testing.assert_array_equal(rows, tokens[[4, 0, 4, 2]])
    only = read_split(tmp_path / "train.h5", names=["audio"])
    assert list(only.embeddings) == ["audio"]
    with pytest.raises(CacheError, match="has no embedding 'joint'"):
        read_split(tmp_path / "train.h5", names=["joint"])


def test_version_1_files_still_open(tmp_path):
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f["clip_id"] = np.array(["a", "b"], dtype=object)
        f["label"] = np.array([0, 1])
        f["video"] = np.ones((2, 4), np.float32)
        f["audio"] = np.zeros((2, 3), np.float32)
        f["has_audio"] = np.array([True, False])
        f["errors/clip_id"] = np.array([], dtype=object).astype("S1")
        f["errors/reason"] = np.array([], dtype=object).astype("S1")
        f.attrs.update(schema_version=1, split="train", label_names='["x", "y"]', backbones="{}",
                       preprocessing="{}")
    old = read_split(tmp_path / "old.h5")
    assert old.video.shape == (2, 4) and old.audio.shape == (2, 3) and list(old.embeddings) == ["video", "audio"]


def test_non_finite_embeddings_are_refused_naming_the_clips():
    video = np.zeros((5, 4))
    video[3, 1] = np.nan
    with pytest.raises(CacheError, match=r"'video' is NaN or infinite for 1 clip\(s\) \(clip3\)"):
        _features(video=video)


def test_parts_resume_and_merge_in_manifest_order(tmp_path):
    order = [f"c{i}" for i in range(6)]
    w = SplitWriter(tmp_path, "train", META, order)
    w.write_batch(**_batch(["c3", "c1"], 0), errors=[("c5", "file not found")])
    # A new run (after a crash) sees what is done and continues numbering.
    w2 = SplitWriter(tmp_path, "train", META, order)
    assert w2.done_ids() == {"c1", "c3", "c5"}
    w2.write_batch(**_batch(["c0", "c2", "c4"], 1))
    path = w2.finish()
    f = read_split(path)
    assert f.clip_ids == ["c0", "c1", "c2", "c3", "c4"]
    assert f.errors == [("c5", "file not found")]
    assert not (tmp_path / "train.parts").exists()


def test_mismatched_resume_is_refused_unless_overwrite(tmp_path):
    SplitWriter(tmp_path, "train", META, ["a"]).write_batch(**_batch(["a"], 0))
    other = {**META, "backbones": {"video": {"fingerprint": "sha256:abc"}, "audio": {"fingerprint": "random:2"}}}
    with pytest.raises(CacheError, match="other backbones.*--overwrite"):
        SplitWriter(tmp_path, "train", other, ["a"])
    fresh = SplitWriter(tmp_path, "train", other, ["a"], overwrite=True)
    assert fresh.done_ids() == set()
    # The checkpoint's location is recorded but not compared.
    SplitWriter(tmp_path, "train", {**other, "sources": {"video": "/elsewhere.pyth", "audio": None}}, ["a"])


def test_finished_cache_is_extended_not_redone(tmp_path):
    w = SplitWriter(tmp_path, "train", META, ["a", "b"])
    w.write_batch(**_batch(["a", "b"], 0))
    first = read_split(w.finish())
    w = SplitWriter(tmp_path, "train", META, ["a", "b", "c"])
    assert w.done_ids() == {"a", "b"}
    w.write_batch(**_batch(["c"], 1))
    second = read_split(w.finish())
    assert second.clip_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(second.video[:2], first.video)
    with pytest.raises(CacheError, match="other label_names"):
        SplitWriter(tmp_path, "train", {**META, "label_names": ["x"]}, ["a"])


def test_shards_merge_once_all_are_done(tmp_path):
    order = [f"c{i}" for i in range(4)]
    s0 = SplitWriter(tmp_path, "val", {**META, "split": "val"}, order, shard=(0, 2))
    s1 = SplitWriter(tmp_path, "val", {**META, "split": "val"}, order, shard=(1, 2))
    s0.write_batch(**_batch(["c0", "c2"], 0))
    s1.write_batch(**_batch(["c1", "c3"], 1))
    assert s0.finish() is None
    merged = read_split(s1.finish())
    assert merged.clip_ids == order
    with pytest.raises(CacheError, match="cannot be combined with sharding"):
        SplitWriter(tmp_path, "val", META, order, shard=(0, 2), overwrite=True)


def test_merge_command_function_and_empty_folder(tmp_path):
    with pytest.raises(CacheError, match="no extraction parts"):
        merge_parts(tmp_path, "test")
    w = SplitWriter(tmp_path, "test", {**META, "split": "test"}, ["x", "y"], shard=(0, 2))
    w.write_batch(**_batch(["x"], 0))
    assert read_split(merge_parts(tmp_path, "test")).clip_ids == ["x"]


def test_sigkill_while_writing_leaves_only_whole_parts(tmp_path):
    # A writer that never stops, killed at an arbitrary moment: every part on disk must open, and
    # a resumed writer must continue from exactly those clips.
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from cache import SplitWriter
        meta = {META!r}
        w = SplitWriter({str(tmp_path)!r}, "train", meta, [f"c{{i}}" for i in range(100000)])
        i = 0
        while True:
            ids = [f"c{{i + j}}" for j in range(64)]
            w.write_batch(ids, np.zeros(64), np.random.rand(64, 4), np.random.rand(64, 3), np.ones(64, bool))
            i += 64
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(15):
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    w = SplitWriter(tmp_path, "train", META, [f"c{i}" for i in range(100000)])
    done = w.done_ids()
    assert len(done) % 64 == 0 and len(done) >= 15 * 64
    assert done == {f"c{i}" for i in range(len(done))}
