"""data.manifest: the three layouts, ids, label vocabulary, splits, malformed manifests."""
import logging
from pathlib import Path

import pytest

from data import Clip, Manifest, read_manifest


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by manifest code")
    return path


# --- path,label,split CSV ------------------------------------------------------------------------

def test_path_csv_reads_relative_and_absolute_paths_quoted_labels_and_blank_lines(tmp_path):
    other = touch(tmp_path / "elsewhere" / "c.mkv")
    csv = write(tmp_path / "ds" / "manifest.csv",
                "path,label,split\n"
                "train/a.mp4,dog,train\n"
                '\n'
                'train/b.mp4,"bee, wasp, etc. buzzing",train\n'
                f"{other},cat,test\n")
    m = read_manifest(csv)
    assert [c.clip_id for c in m.clips] == ["a", "b", "c"]
    assert m.clips[0].path == tmp_path / "ds" / "train" / "a.mp4"
    assert m.clips[2].path == other
    assert m.clips[1].label == "bee, wasp, etc. buzzing"
    assert m.label_names == ["bee, wasp, etc. buzzing", "cat", "dog"]
    assert m.root == tmp_path / "ds"
    assert m.splits == ["train", "test"]


def test_missing_files_are_not_a_manifest_error(tmp_path):
    m = read_manifest(write(tmp_path / "m.csv", "path,label,split\nnowhere.mp4,dog,train\n"))
    assert len(m) == 1 and not m.clips[0].path.exists()


def test_colliding_stems_fall_back_to_the_relative_path(tmp_path):
    m = read_manifest(write(tmp_path / "m.csv", "path,label,split\n"
                                                "train/x.mp4,dog,train\n"
                                                "test/x.mp4,dog,test\n"
                                                "test/y.mp4,dog,test\n"
                                                "test/y.mkv,dog,test\n"
                                                "z.mp4,dog,train\n"))
    assert [c.clip_id for c in m.clips] == ["train/x", "test/x", "test/y.mp4", "test/y.mkv", "z"]


@pytest.mark.parametrize("text,match", [
    ("", "empty manifest"),
    ("path,label\na.mp4,dog\n", "expected the header"),
    ("path,label,split\na.mp4,dog\n", r"m\.csv:2: expected 3 columns"),
    ("path,label,split\na.mp4,dog,train\nb.mp4,dog,train,extra\n", r"m\.csv:3: expected 3 columns"),
    ("path,label,split\n,dog,train\n", r"m\.csv:2: empty path"),
    ("path,label,split\na.mp4,,train\n", r"m\.csv:2: empty label"),
    ("path,label,split\na.mp4,dog,\n", r"m\.csv:2: empty split"),
    ("path,label,split\na.mp4,dog,train\na.mp4,cat,test\n", r"m\.csv:3: .*listed twice"),
])
def test_malformed_path_csv_names_file_and_line(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_manifest(write(tmp_path / "m.csv", text), layout="csv")


def test_auto_layout_refuses_what_it_cannot_recognise(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the manifest layout"):
        read_manifest(write(tmp_path / "m.csv", "a,b,c\n"))
    with pytest.raises(ValueError, match="unknown manifest layout"):
        read_manifest(write(tmp_path / "n.csv", "path,label,split\n"), layout="json")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "absent.csv")


# --- official VGGSound CSV -----------------------------------------------------------------------

def test_vggsound_csv_finds_clips_in_the_root_or_split_folders(tmp_path):
    root = tmp_path / "videos"
    touch(root / "train" / "abc_000030.mp4")
    touch(root / "-dash_id_000000.mp4")
    csv = write(tmp_path / "vggsound.csv", "abc,30,dog barking,train\n"
                                           "-dash_id,0,\"cat, meowing\",test\n"
                                           "gone,7,dog barking,test\n")
    m = read_manifest(csv, video_root=root)
    assert [c.clip_id for c in m.clips] == ["abc_000030", "-dash_id_000000", "gone_000007"]
    assert m.clips[0].path == root / "train" / "abc_000030.mp4"
    assert m.clips[1].path == root / "-dash_id_000000.mp4"
    assert m.clips[2].path == root / "gone_000007.mp4"  # missing: where the layout puts it
    assert m.label_names == ["cat, meowing", "dog barking"]


def test_vggsound_video_root_defaults_to_the_csv_folder(tmp_path):
    touch(tmp_path / "test" / "q_000010.mp4")
    m = read_manifest(write(tmp_path / "v.csv", "q,10,owl,test\n"))
    assert m.clips[0].path == tmp_path / "test" / "q_000010.mp4" and m.root == tmp_path


@pytest.mark.parametrize("text,match", [
    ("abc,thirty,dog,train\n", r"v\.csv:1: bad start seconds 'thirty'"),
    ("abc,30,dog,train\nabc,-4,dog,train\n", r"v\.csv:2: bad start seconds"),
    ("abc,30,dog\n", r"v\.csv:1: .*4 columns|cannot tell"),
    ("abc,30,dog,train\nabc,30,cat,test\n", r"v\.csv:2: duplicate clip id 'abc_000030'"),
    ("abc,30,,train\n", r"v\.csv:1: empty label"),
])
def test_malformed_vggsound_csv_names_file_and_line(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_manifest(write(tmp_path / "v.csv", text))


def test_vggsound_needs_an_existing_video_root(tmp_path):
    with pytest.raises(ValueError, match="video root"):
        read_manifest(write(tmp_path / "v.csv", "abc,30,dog,train\n"), video_root=tmp_path / "no")


# --- folders -------------------------------------------------------------------------------------

def test_folders_with_split_subfolders(tmp_path):
    for rel in ["train/dog/1.mp4", "train/cat/2.mkv", "val/dog/3.mp4", "test/owl/4.webm",
                "train/cat/notes.txt", "train/cat/.hidden.mp4"]:
        touch(tmp_path / rel)
    m = read_manifest(tmp_path)
    assert sorted((c.clip_id, c.label, c.split) for c in m.clips) == [
        ("1", "dog", "train"), ("2", "cat", "train"), ("3", "dog", "val"), ("4", "owl", "test")]
    assert m.label_names == ["cat", "dog", "owl"]
    assert m.unseen_labels("test") == ["owl"] and m.unseen_labels("val") == []


def test_folders_split_by_a_seeded_stratified_ratio(tmp_path):
    for label, n in [("a", 20), ("b", 10), ("c", 1)]:
        for i in range(n):
            touch(tmp_path / label / f"{label}{i}.mp4")
    m = read_manifest(tmp_path, val_ratio=0.2, test_ratio=0.1, seed=3)
    counts = {(lab, s): sum(1 for c in m.clips if c.label == lab and c.split == s)
              for lab in "abc" for s in ("train", "val", "test")}
    assert counts[("a", "val")] == 4 and counts[("a", "test")] == 2 and counts[("a", "train")] == 14
    assert counts[("b", "val")] == 2 and counts[("b", "test")] == 1
    assert counts[("c", "train")] == 1  # a single clip stays in train
    again = read_manifest(tmp_path, val_ratio=0.2, test_ratio=0.1, seed=3)
    other = read_manifest(tmp_path, val_ratio=0.2, test_ratio=0.1, seed=4)
    assert again.clips == m.clips
    assert [c.split for c in other.clips] != [c.split for c in m.clips]


@pytest.mark.parametrize("val,test", [(0.6, 0.5), (-0.1, 0.1), (0.1, 1.0)])
def test_folders_reject_impossible_ratios(tmp_path, val, test):
    touch(tmp_path / "dog" / "1.mp4")
    with pytest.raises(ValueError, match="ratio"):
        read_manifest(tmp_path, val_ratio=val, test_ratio=test)


def test_folders_refuse_split_folders_holding_clips_directly(tmp_path):
    touch(tmp_path / "train" / "x.mp4")
    with pytest.raises(ValueError, match="directly in a split folder"):
        read_manifest(tmp_path)


def test_folders_without_clips_are_an_error(tmp_path):
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match="no class folders"):
        read_manifest(tmp_path / "dog")


# --- the Manifest object -------------------------------------------------------------------------

@pytest.fixture
def manifest(tmp_path):
    return read_manifest(write(tmp_path / "m.csv", "path,label,split\n"
                                                   "a.mp4,dog,train\nb.mp4,cat,train\n"
                                                   "c.mp4,owl,val\nd.mp4,dog,val\n"
                                                   "e.mp4,emu,test\nf.mp4,owl,test\n"
                                                   "g.mp4,cat,extra\n"))


def test_one_vocabulary_across_splits(manifest):
    assert manifest.label_names == ["cat", "dog", "emu", "owl"]
    assert [manifest.label_index(n) for n in manifest.label_names] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown label 'yak'"):
        manifest.label_index("yak")


def test_splits_and_split_lookup(manifest):
    assert manifest.splits == ["train", "val", "test", "extra"]
    assert [c.clip_id for c in manifest.split("val")] == ["c", "d"]
    with pytest.raises(ValueError, match="available: train, val, test, extra"):
        manifest.split("validation")


def test_unseen_labels_are_reported(manifest, tmp_path, caplog):
    assert manifest.unseen_labels("val") == ["owl"]
    assert manifest.unseen_labels("test") == ["emu", "owl"]
    assert manifest.unseen_labels("train") == []
    with caplog.at_level(logging.WARNING, logger="data.manifest"):
        read_manifest(tmp_path / "m.csv")
    assert "split 'test' never occur in train: emu; owl" in caplog.text


def test_manifest_validates_what_it_is_given(tmp_path):
    clip = Clip("a", tmp_path / "a.mp4", "dog", "train")
    with pytest.raises(ValueError, match="duplicate clip id"):
        Manifest([clip, clip], ["dog"], tmp_path)
    with pytest.raises(ValueError, match="not in label_names"):
        Manifest([clip], ["cat"], tmp_path)
    with pytest.raises(ValueError, match="sorted"):
        Manifest([clip], ["dog", "cat"], tmp_path)
