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

from alphafuse.cache import CacheError, FeatureSplit, SplitWriter, check_compatible, merge_parts, read_split, write_split
from tests.paths import REPO

META = {"split": "train", "label_names": ["a", "b", "c"],
        "embeddings": {"video": {"shape": [4], "dtype": "float32"}, "audio": {"shape": [3], "dtype": "float32"}},
        "backbones": {"video": {"fingerprint": "random:1"}, "audio": {"fingerprint": "random:2"}},
        "preprocessing": {"video": {"num_frames": 8}}, "extraction": {"precision": "fp32"},
        "sources": {"video": None, "audio": None}}


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
    return dict(clip_ids=ids, labels=rng.integers(0, 3, n),
                embeddings={"video": rng.normal(size=(n, 4)).astype(np.float32),
                            "audio": rng.normal(size=(n, 3)).astype(np.float32)},
                has_audio=np.ones(n, bool))


def _clips(ids, labels=None, stamps=None):
    """The (clip_id, label index, source stamp) rows a manifest gives a SplitWriter."""
    labels = labels or {}
    stamps = stamps or {}
    return [(c, labels.get(c, i % 3), stamps.get(c, f"{c}.mp4:1:1")) for i, c in enumerate(ids)]


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
        assert f.attrs["schema_version"] == 3
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
    w = SplitWriter(tmp_path, "train", META, _clips(order))
    w.write_batch(**_batch(["c3", "c1"], 0), errors=[("c5", "file not found")])
    w.close()
    # A new run (after a crash) sees what is done and continues numbering.
    w2 = SplitWriter(tmp_path, "train", META, _clips(order))
    assert w2.done_ids() == {"c1", "c3", "c5"}
    w2.write_batch(**_batch(["c0", "c2", "c4"], 1))
    path = w2.finish()
    f = read_split(path)
    assert f.clip_ids == ["c0", "c1", "c2", "c3", "c4"]
    assert f.labels.tolist() == [0, 1, 2, 0, 1]          # the manifest's labels, not the batch's
    assert f.errors == [("c5", "file not found")]
    assert not (tmp_path / "train.parts").exists()


def test_mismatched_resume_is_refused_unless_overwrite(tmp_path):
    w = SplitWriter(tmp_path, "train", META, _clips(["a"]))
    w.write_batch(**_batch(["a"], 0))
    w.close()
    other = {**META, "backbones": {"video": {"fingerprint": "sha256:abc"}, "audio": {"fingerprint": "random:2"}}}
    with pytest.raises(CacheError, match="other backbones.*start again"):
        SplitWriter(tmp_path, "train", other, _clips(["a"]))
    bf16 = {**META, "extraction": {"precision": "bf16"}}
    with pytest.raises(CacheError, match="other extraction"):
        SplitWriter(tmp_path, "train", bf16, _clips(["a"]))
    fresh = SplitWriter(tmp_path, "train", other, _clips(["a"]), overwrite=True)
    assert fresh.done_ids() == set()
    fresh.close()
    # The checkpoint's location is recorded but not compared.
    SplitWriter(tmp_path, "train", {**other, "sources": {"video": "/elsewhere.pyth", "audio": None}},
                _clips(["a"])).close()


def test_finished_cache_is_extended_not_redone(tmp_path):
    w = SplitWriter(tmp_path, "train", META, _clips(["a", "b"]))
    w.write_batch(**_batch(["a", "b"], 0))
    first = read_split(w.finish())
    w = SplitWriter(tmp_path, "train", META, _clips(["a", "b", "c"]))
    assert w.done_ids() == {"a", "b"}
    w.write_batch(**_batch(["c"], 1))
    second = read_split(w.finish())
    assert second.clip_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(second.video[:2], first.video)


def test_manifest_edits_are_reflected_in_the_merged_file(tmp_path):
    w = SplitWriter(tmp_path, "train", META, _clips(["a", "b", "c"], labels={"a": 0, "b": 0, "c": 0}))
    w.write_batch(**_batch(["a", "b", "c"], 0))
    first = read_split(w.finish())
    # b's label is corrected, c moves to another split, a new label name appears in the vocabulary.
    relabelled = {**META, "label_names": ["a", "b", "c", "d"]}
    w = SplitWriter(tmp_path, "train", relabelled, _clips(["a", "b"], labels={"a": 0, "b": 3}))
    assert w.done_ids() == {"a", "b"}                      # nothing to re-extract: labels are not features
    second = read_split(w.finish())
    assert second.clip_ids == ["a", "b"] and second.labels.tolist() == [0, 3]
    assert second.label_names == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(second.video, first.video[:2])


def test_a_changed_or_reappearing_file_is_extracted_again(tmp_path):
    stamps = {"a": "a.mp4:10:1", "b": "missing"}
    w = SplitWriter(tmp_path, "train", META, _clips(["a", "b"], stamps=stamps))
    w.write_batch(**_batch(["a"], 0), errors=[("b", "file not found")])
    w.finish()
    # b's file appears, a's is replaced by another download.
    w = SplitWriter(tmp_path, "train", META, _clips(["a", "b"], stamps={"a": "a.mp4:12:5", "b": "b.mp4:3:3"}))
    assert w.done_ids() == set()
    w.write_batch(**_batch(["a", "b"], 7))
    merged = read_split(w.finish())
    assert merged.clip_ids == ["a", "b"] and merged.errors == []
    np.testing.assert_array_equal(merged.video, _batch(["a", "b"], 7)["embeddings"]["video"])


def test_a_second_run_on_the_same_shard_is_refused(tmp_path):
    w = SplitWriter(tmp_path, "train", META, _clips(["a"]))
    with pytest.raises(CacheError, match="another extraction of split 'train'.*is running"):
        SplitWriter(tmp_path, "train", META, _clips(["a"]))
    w.close()
    SplitWriter(tmp_path, "train", META, _clips(["a"])).close()   # free again once the first is done


def test_shards_merge_once_all_are_done(tmp_path):
    order = [f"c{i}" for i in range(4)]
    val = {**META, "split": "val"}
    s0 = SplitWriter(tmp_path, "val", val, _clips(order), shard=(0, 2))
    s1 = SplitWriter(tmp_path, "val", val, _clips(order), shard=(1, 2))
    s0.write_batch(**_batch(["c0", "c2"], 0))
    s1.write_batch(**_batch(["c1", "c3"], 1))
    assert s0.finish() is None
    merged = read_split(s1.finish())
    assert merged.clip_ids == order
    with pytest.raises(CacheError, match="cannot be combined with sharding"):
        SplitWriter(tmp_path, "val", val, _clips(order), shard=(0, 2), overwrite=True)


def test_merge_refuses_missing_shards_and_foreign_parts(tmp_path):
    with pytest.raises(CacheError, match="no extraction parts"):
        merge_parts(tmp_path, "test")
    test = {**META, "split": "test"}
    w = SplitWriter(tmp_path, "test", test, _clips(["x", "y"]), shard=(0, 2))
    w.write_batch(**_batch(["x"], 0))
    w.finish()
    with pytest.raises(CacheError, match=r"shard\(s\) 1/2 have not finished"):
        merge_parts(tmp_path, "test")
    # Shard 1 ran on another machine with another seed; its folder was copied in.
    other_seed = {**test, "backbones": {"video": {"fingerprint": "random:9"}, "audio": {"fingerprint": "random:2"}}}
    with pytest.raises(CacheError, match="other backbones"):
        SplitWriter(tmp_path, "test", other_seed, _clips(["x", "y"]), shard=(1, 2))
    elsewhere = tmp_path / "machine-b"
    w1 = SplitWriter(elsewhere, "test", other_seed, _clips(["x", "y"]), shard=(1, 2))
    w1.write_batch(**_batch(["y"], 1))
    assert w1.finish() is None
    for part in (elsewhere / "test.parts").glob("part-0001-*.h5"):
        os.replace(part, tmp_path / "test.parts" / part.name)
    os.replace(elsewhere / "test.parts" / "done-0001-of-0002.json", tmp_path / "test.parts" / "done-0001-of-0002.json")
    with pytest.raises(CacheError, match="part-0001-000000.h5: made by a run with other settings"):
        merge_parts(tmp_path, "test")
    assert not (tmp_path / "test.h5").exists()


def test_a_damaged_part_is_set_aside_and_its_clips_redone(tmp_path, caplog):
    w = SplitWriter(tmp_path, "train", META, _clips(["a", "b"]))
    first = w.write_batch(**_batch(["a"], 0))
    w.write_batch(**_batch(["b"], 1))
    w.close()
    first.write_bytes(b"garbage" * 10)
    w = SplitWriter(tmp_path, "train", META, _clips(["a", "b"]))
    assert w.done_ids() == {"b"}
    assert "part-0000-000000.h5 cannot be read; moved aside" in caplog.text
    assert (tmp_path / "train.parts" / "part-0000-000000.h5.damaged").exists()
    w.write_batch(**_batch(["a"], 2))
    assert read_split(w.finish()).clip_ids == ["a", "b"]


@pytest.mark.parametrize("name", ["../victim/notes", "", ".hidden", "a/b", "x" * 101])
def test_split_names_that_are_not_file_names_are_refused(tmp_path, name):
    with pytest.raises(CacheError, match="cannot name a cache file"):
        SplitWriter(tmp_path / "cache", name, META, _clips(["a"]))
    assert not (tmp_path / "victim").exists()


def test_sigkill_while_writing_leaves_only_whole_parts(tmp_path):
    # A writer that never stops, killed at an arbitrary moment: every part on disk must open, and
    # a resumed writer must continue from exactly those clips.
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r})
        from alphafuse.cache import SplitWriter
        meta = {META!r}
        clips = [(f"c{{i}}", 0, "s") for i in range(100000)]
        w = SplitWriter({str(tmp_path)!r}, "train", meta, clips)
        i = 0
        while True:
            ids = [f"c{{i + j}}" for j in range(64)]
            emb = {{"video": np.random.rand(64, 4).astype("f4"), "audio": np.random.rand(64, 3).astype("f4")}}
            w.write_batch(ids, np.zeros(64), emb, np.ones(64, bool))
            i += 64
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(15):
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    w = SplitWriter(tmp_path, "train", META, [(f"c{i}", 0, "s") for i in range(100000)])
    done = w.done_ids()
    assert len(done) % 64 == 0 and len(done) >= 15 * 64
    assert done == {f"c{i}" for i in range(len(done))}


# -- one store per encoder ------------------------------------------------------------------------

def _store(cache, role, name, split="train", seed=0, n=5, dim=4, fingerprint=None, **changes):
    """A finished store of ``name`` in ``role`` holding ``split``, as extraction writes it."""
    from alphafuse.cache import ensure_store

    description = {"name": name, "options": {}, "fingerprint": fingerprint or f"random:{name}", "pretrained": False}
    identity = {"backbones": {role: description}, "preprocessing": {role: {"n": 1}},
                "extraction": {"precision": "fp32"}}
    folder = ensure_store(cache, identity)
    rng = np.random.default_rng(seed)
    embedding = "video" if role == "video" else "audio"
    kwargs = dict(split=split, clip_ids=[f"clip{i}" for i in range(n)], labels=np.arange(n) % 3,
                  has_audio=np.arange(n) != 1, label_names=["a", "b", "c"], backbones={role: description},
                  preprocessing=identity["preprocessing"], attrs={"store_id": folder.name},
                  embeddings={embedding: rng.normal(size=(n, dim)).astype(np.float32)})
    kwargs.update(changes)
    write_split(folder / f"{split}.h5", FeatureSplit(**kwargs))
    return folder


def test_stores_combine_into_one_split_with_the_names_of_schema_2(tmp_path):
    from alphafuse.cache import open_split

    v = _store(tmp_path, "video", "timesformer", seed=1)
    a = _store(tmp_path, "audio", "ast", seed=2, dim=3)
    both = open_split(tmp_path, "train")
    with h5py.File(v / "train.h5") as f:   # plain h5py: the store holds only its own embedding
        assert "audio" not in f and f["video"].shape == (5, 4) and f.attrs["store_id"] == v.name
        np.testing.assert_array_equal(both.video, f["video"][()])
    with h5py.File(a / "train.h5") as f:
        np.testing.assert_array_equal(both.audio, f["audio"][()])
    assert set(both.backbones) == {"video", "audio"} and both.attrs["stores"] == {"video": v.name, "audio": a.name}
    assert v.name.startswith("timesformer-") and len(v.name.rsplit("-", 1)[1]) == 8
    assert json.loads((v / "store.json").read_text())["backbones"]["video"]["name"] == "timesformer"
    # <cache>/<split>.h5 names the folder's split for read_split too.
    np.testing.assert_array_equal(read_split(tmp_path / "train.h5").audio, both.audio)


def test_two_candidates_and_no_name_is_an_error_naming_them(tmp_path):
    from alphafuse.cache import open_split

    _store(tmp_path, "video", "timesformer")
    _store(tmp_path, "audio", "ast", dim=3)
    cav = _store(tmp_path, "audio", "cavmae", dim=6)
    with pytest.raises(CacheError, match=r"two audio encoders in .*: ast, cavmae; pass --audio-backbone$"):
        open_split(tmp_path, "train")
    assert open_split(tmp_path, "train", audio="cavmae").audio.shape == (5, 6)
    # Two stores of one backbone (two checkpoints): the name is ambiguous, the short id is not.
    other = _store(tmp_path, "audio", "cavmae", dim=6, seed=5, fingerprint="sha256:other")
    with pytest.raises(CacheError, match=r"two audio stores match 'cavmae'.*" + other.name):
        open_split(tmp_path, "train", audio="cavmae")
    picked = open_split(tmp_path, "train", audio=other.name.rsplit("-", 1)[1])
    assert picked.attrs["stores"]["audio"] == other.name and picked.attrs["stores"]["audio"] != cav.name
    with pytest.raises(CacheError, match=r"no audio encoder 'beats'.*extract it with --audio-backbone beats"):
        open_split(tmp_path, "train", audio="beats")


@pytest.mark.parametrize("change, message", [
    ({"clip_ids": ["clip0", "clip1", "clip2", "clip3", "other"]}, r"clip clip4 of split 'train' is in store timesformer-"),
    ({"labels": np.array([0, 1, 2, 0, 2])}, r"clip clip4 of split 'train' has label 'b' in store .* but 'c'"),
    ({"has_audio": np.ones(5, bool)}, r"clip clip1 of split 'train' has has_audio False .* but True"),
])
def test_stores_that_disagree_on_a_clip_are_refused_naming_it(tmp_path, change, message):
    from alphafuse.cache import open_split

    _store(tmp_path, "video", "timesformer")
    _store(tmp_path, "audio", "ast", dim=3, **change)
    with pytest.raises(CacheError, match=message):
        open_split(tmp_path, "train")


def test_a_schema_2_folder_opens_as_before_and_names_are_checked(tmp_path):
    from alphafuse.cache import open_split

    original = _features(backbones={"video": {"name": "timesformer"}, "audio": {"name": "ast"}})
    write_split(tmp_path / "train.h5", original)
    with h5py.File(tmp_path / "train.h5", "r+") as f:
        f.attrs["schema_version"] = 2
    old = open_split(tmp_path, "train", audio="ast")
    assert old.clip_ids == original.clip_ids and old.path == tmp_path / "train.h5"
    np.testing.assert_array_equal(old.audio, original.audio.astype(np.float32))
    with pytest.raises(CacheError, match=r"holds audio ast, video timesformer, not audio cavmae"):
        open_split(tmp_path, "train", audio="cavmae")


def test_cache_merge_merges_every_store_of_the_split(tmp_path):
    from alphafuse.cache import ensure_store, merge_split

    folders = []
    for role, name in (("video", "timesformer"), ("audio", "ast")):
        identity = {"backbones": {role: {"name": name}}, "preprocessing": {}, "extraction": {}}
        folder = ensure_store(tmp_path, identity)
        meta = {**META, "backbones": identity["backbones"], "embeddings": {role: META["embeddings"][role]}}
        w = SplitWriter(folder, "train", meta, _clips(["a", "b"]), shard=(0, 2))
        batch = _batch(["a"], 0)
        w.write_batch(batch["clip_ids"], batch["labels"], {role: batch["embeddings"][role]}, batch["has_audio"])
        assert w.finish() is None
        folders.append(folder)
    with pytest.raises(CacheError, match=r"shard\(s\) 1/2 have not finished"):
        merge_split(tmp_path, "train")
    for folder, role in zip(folders, ("video", "audio")):
        meta = {**META, "backbones": {role: {"name": folder.name.split("-")[0]}},
                "embeddings": {role: META["embeddings"][role]}}
        w = SplitWriter(folder, "train", meta, _clips(["a", "b"]), shard=(1, 2))
        batch = _batch(["b"], 1)
        w.write_batch(batch["clip_ids"], batch["labels"], {role: batch["embeddings"][role]}, batch["has_audio"])
        w.close()
        (folder / "train.parts" / "done-0001-of-0002.json").write_text("{}")
    merged = merge_split(tmp_path, "train")
    assert sorted(p.parent.name for p in merged) == sorted(f.name for f in folders)
    assert read_split(folders[1] / "train.h5").clip_ids == ["a", "b"]


def test_first_difference_names_the_first_place_that_differs():
    from alphafuse.cache.store import first_difference

    assert first_difference({"a": [1, {"b": 2}], "z": 0}, {"a": [1, {"b": 3}], "z": 1}) == "a.[1].b: 3 vs 2"
    assert first_difference({"a": [1]}, {"a": [1, 2]}, "{path} was {old}, now {new}") == \
        "a was 1 entries, now 2 entries"
    assert first_difference({"k": "x"}, {}) == "k: None vs 'x'"
    assert first_difference(1, 2) == "value: 2 vs 1"
