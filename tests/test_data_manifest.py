"""data.manifest: the three layouts, ids, label vocabulary, splits, malformed manifests."""
import logging
import os
from pathlib import Path

import pytest

from alphafuse.data import Clip, Manifest, read_manifest


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
    with caplog.at_level(logging.WARNING, logger="alphafuse.data.manifest"):
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


# --- repeated rows, split names, malformed files ------------------------------------------------

def test_an_exactly_repeated_row_is_used_once_with_a_warning_naming_both_lines(tmp_path, caplog):
    csv = write(tmp_path / "m.csv", "path,label,split\na.mp4,dog,train\nb.mp4,cat,train\n"
                                    "./a.mp4,dog,train\n")
    with caplog.at_level(logging.WARNING, logger="alphafuse.data.manifest"):
        m = read_manifest(csv)
    assert [c.clip_id for c in m.clips] == ["a", "b"]
    assert "m.csv:4: repeats line 2" in caplog.text


def test_an_exactly_repeated_vggsound_row_is_used_once(tmp_path, caplog):
    csv = write(tmp_path / "v.csv", "abc,30,dog,train\nxyz,0,cat,test\nabc,30,dog,train\n")
    with caplog.at_level(logging.WARNING, logger="alphafuse.data.manifest"):
        m = read_manifest(csv)
    assert [c.clip_id for c in m.clips] == ["abc_000030", "xyz_000000"]
    assert "v.csv:3: repeats line 1" in caplog.text


@pytest.mark.parametrize("rows,match", [
    ("a.mp4,dog,train\nb.mp4,dog,train\na.mp4,dog,test\n",
     r"m\.csv:4: .*a\.mp4 listed twice with another label or split \(line 2: 'dog', 'train'; "
     r"line 4: 'dog', 'test'\)"),
    ("a.mp4,dog,train\n./a.mp4,cat,train\n", r"m\.csv:3: .*line 2: 'dog'.*line 3: 'cat'"),
])
def test_a_clip_listed_with_two_labels_or_splits_is_an_error_naming_both_lines(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        read_manifest(write(tmp_path / "m.csv", "path,label,split\n" + rows))


def test_vggsound_clip_with_two_labels_names_both_lines(tmp_path):
    with pytest.raises(ValueError, match=r"v\.csv:3: duplicate clip id 'abc_000030'.*line 1.*line 3"):
        read_manifest(write(tmp_path / "v.csv", "abc,30,dog,train\nq,1,owl,val\nabc,30,dog,test\n"))


@pytest.mark.parametrize("split", ["../x", "a/b", ".hidden", "..", "tr ain", "été", "a\\b", "x:y"])
def test_split_names_that_cannot_name_a_cache_file_are_refused(tmp_path, split):
    text = f'path,label,split\na.mp4,dog,train\nb.mp4,dog,"{split}"\n'
    with pytest.raises(ValueError, match=r"m\.csv:3: bad split name") as info:
        read_manifest(write(tmp_path / "m.csv", text))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"v\.csv:1: bad split name"):
        read_manifest(write(tmp_path / "v.csv", f'abc,30,dog,"{split}"\n'))
    with pytest.raises(ValueError, match="bad split name"):
        Manifest([Clip("a", tmp_path / "a.mp4", "dog", split)], ["dog"], tmp_path)


def test_split_names_with_letters_digits_dots_dashes_underscores_are_fine(tmp_path):
    m = read_manifest(write(tmp_path / "m.csv", "path,label,split\na.mp4,dog,fold-1_v2.test\n"
                                                "b.mp4,dog,Train2\n"))
    assert m.splits == ["Train2", "fold-1_v2.test"]


def test_bom_crlf_blank_lines_and_spaces_are_read(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xef\xbb\xbfpath,label,split\r\n\r\n a.mp4 , dog ,train\r\n   \r\nb.mp4,cat,val\r\n")
    m = read_manifest(path)
    assert [(c.clip_id, c.label, c.split) for c in m.clips] == [("a", "dog", "train"), ("b", "cat", "val")]
    vgg = tmp_path / "v.csv"
    vgg.write_bytes(b"\xef\xbb\xbfabc,30,dog,train\r\n")
    assert read_manifest(vgg).clips[0].clip_id == "abc_000030"


def _bytes(text: str) -> bytes:
    return text.encode("utf-8")


MALFORMED = [
    ("header_only", _bytes("path,label,split\n"), "csv", r"m\.csv: no clips"),
    ("header_and_blanks", _bytes("path,label,split\n\n  \n"), "csv", r"m\.csv: no clips"),
    ("empty", b"", "auto", r"m\.csv: empty manifest"),
    ("blank_lines_only", b"\n\n\r\n", "auto", r"m\.csv: empty manifest"),
    ("extra_column", _bytes("path,label,split\na.mp4,dog,train,x\n"), "auto", r"m\.csv:2: expected 3"),
    ("missing_column", _bytes("path,label,split\na.mp4,dog\n"), "auto", r"m\.csv:2: expected 3"),
    ("latin1", _bytes("path,label,split\na.mp4,dog,train\n") + b"b.mp4,caf\xe9,train\n", "auto",
     r"m\.csv:3: not UTF-8 text \(byte 0xe9\)"),
    ("utf16", "path,label,split\na.mp4,dog,train\n".encode("utf-16"), "auto", r"m\.csv:1: not UTF-8"),
    ("binary", bytes(range(256)) * 4, "auto", r"m\.csv:\d+: not UTF-8"),
    ("nul", _bytes("path,label,split\na.mp4,d\0g,train\n"), "csv", r"m\.csv:2: NUL byte"),
    ("utf16_no_bom", "path,label,split\n".encode("utf-16-le"), "auto", r"m\.csv:1: NUL byte"),
    ("open_quote", _bytes('path,label,split\na.mp4,"dog,train\n'), "csv", r"m\.csv:\d+: "),
    ("vgg_columns", _bytes("abc,30,dog,train\nabc,40,dog\n"), "vggsound", r"m\.csv:2: expected 4"),
    ("vgg_header_only_as_csv", _bytes("path,label,split\n"), "auto", r"m\.csv: no clips"),
]


@pytest.mark.parametrize("name,blob,layout,match", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_manifests_are_one_line_errors_naming_the_file(tmp_path, name, blob, layout, match):
    path = tmp_path / "m.csv"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=match) as info:
        read_manifest(path, layout=layout, video_root=tmp_path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("layout", ["csv", "vggsound"])
def test_a_folder_given_as_a_csv_manifest_is_a_one_line_error(tmp_path, layout):
    (tmp_path / "m.csv").mkdir()
    with pytest.raises(ValueError, match=r"m\.csv: is a folder, not a CSV manifest"):
        read_manifest(tmp_path / "m.csv", layout=layout, video_root=tmp_path)


def test_an_unreadable_manifest_is_a_one_line_error(tmp_path, monkeypatch):
    path = write(tmp_path / "m.csv", "path,label,split\na.mp4,dog,train\n")

    real_open = os.open

    def denied(name, *args, **kwargs):
        if str(name) == str(path):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)  # chmod does not stop root, who runs CI
    with pytest.raises(ValueError, match=r"m\.csv: manifest cannot be read: permission denied$"):
        read_manifest(path)
