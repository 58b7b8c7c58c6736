"""Paths that are not regular files (FIFOs, devices, folders, symlink loops) are refused in one
line on every surface that reads a path, never opened: a FIFO blocks a reader until someone
writes, /dev/zero never ends. Every test runs under an alarm so that a regression fails
instead of hanging the suite."""
import contextlib
import os
import re
import signal

import pytest
import torch

from alphafuse.cache import CacheError, read_split
from alphafuse.data import ClipError, load_inputs, read_manifest
from alphafuse.data.audio import AudioConfig
from alphafuse.data.files import InputFileError, file_problem, open_regular, read_regular_text
from alphafuse.data.video_config import VideoConfig
from alphafuse.extract.backbones import rebuild_backbone
from alphafuse.extract.checkpoint import CheckpointError, file_sha256, read_checkpoint
from alphafuse.fuse.commands import read_label_names
from alphafuse.fuse.run import load_run
from tests.test_cli_errors import _error_line, _run

HANG_S = 20


@contextlib.contextmanager
def no_hang(seconds: float = HANG_S):
    """Fail (TimeoutError) instead of blocking forever: SIGALRM interrupts a blocked open()."""
    def fail(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s: the path was read instead of refused")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


KINDS = ["fifo", "dev_zero", "folder"]
WHAT = {"fifo": "is a FIFO (named pipe), not a regular file", "dev_zero": "is a character device, not a regular file",
        "folder": "is a folder, not a regular file", "loop": "is a symlink loop"}


def special(tmp_path, kind: str, name: str = "x"):
    """A path of the given kind named ``name`` under tmp_path (a link to /dev/zero keeps the name)."""
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path)
    return path


@pytest.mark.parametrize("kind", KINDS + ["loop"])
def test_file_problem_names_what_the_path_is(tmp_path, kind):
    path = special(tmp_path, kind)
    with no_hang():
        assert file_problem(path) == WHAT[kind]
        with pytest.raises(InputFileError, match="^" + re.escape(f"{path}: manifest {WHAT[kind]}")):
            open_regular(path, "manifest")
    (tmp_path / "ok.txt").write_text("é\n")
    assert file_problem(tmp_path / "ok.txt") is None and read_regular_text(tmp_path / "ok.txt") == "é\n"
    assert file_problem(tmp_path / "missing") == "not found"


def test_dev_zero_itself_is_refused():
    with no_hang():
        assert file_problem("/dev/zero") == WHAT["dev_zero"]
        with pytest.raises(CheckpointError, match="^/dev/zero: checkpoint file is a character device"):
            file_sha256("/dev/zero")


def _checkpoint_problem(kind: str) -> str:
    # A folder is read as a Hugging Face snapshot (the hf family), so an empty one lacks its config.
    return "no config.json in this snapshot folder" if kind == "folder" else f"checkpoint file {WHAT[kind]}"


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_are_refused(tmp_path, kind):
    path = special(tmp_path, kind, "ckpt.pth")
    with no_hang():
        with pytest.raises(CheckpointError, match=re.escape(f"ckpt.pth: {_checkpoint_problem(kind)}")):
            read_checkpoint(path)
        with pytest.raises(CheckpointError, match=re.escape(f"ckpt.pth: {_checkpoint_problem(kind)}")):
            file_sha256(path)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_hashing_a_recorded_checkpoint_is_refused(tmp_path, kind):
    # What predict does with a run whose cache recorded a pretrained backbone: hash the file.
    path = special(tmp_path, kind, "recorded.pth")
    description = {"name": "timesformer", "options": {"arch": "tiny"}, "pretrained": True,
                   "fingerprint": "sha256:" + "0" * 64}
    with no_hang(), pytest.raises(CheckpointError, match=re.escape(f"recorded.pth: {_checkpoint_problem(kind)}")):
        rebuild_backbone(description, path)


@pytest.mark.parametrize("kind", KINDS)
def test_backbone_config_is_refused(work, kind):
    path = special(work, kind, "tsam.json")
    with no_hang():
        line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--backbone", "tsam",
                                 "--arch", "tiny", "--backbone-config", str(path)], work))
    assert f"tsam.json: TSAM JSON config {WHAT[kind]}" in line
    assert not (work / "c").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "loop"])
def test_a_manifest_is_refused(tmp_path, kind):
    path = special(tmp_path, kind, "m.csv")
    with no_hang(), pytest.raises(ValueError, match=re.escape(f"m.csv: manifest {WHAT[kind]}")):
        read_manifest(path)


@pytest.mark.parametrize("kind", KINDS + ["loop"])
def test_a_manifests_clip_is_one_clip_error(tmp_path, kind):
    # The same function reads extraction's clips and predict's files.
    path = special(tmp_path, kind, "clip.mp4")
    with no_hang(), pytest.raises(ClipError, match="^" + re.escape(f"clip: file {WHAT[kind]}")):
        load_inputs(path, VideoConfig(), AudioConfig())


@pytest.mark.parametrize("kind", KINDS)
def test_label_files_are_refused(tmp_path, kind):
    path = special(tmp_path, kind, "labels.csv")
    with no_hang(), pytest.raises(ValueError, match=re.escape(f"labels.csv: label file {WHAT[kind]}")):
        read_label_names(path)


def test_label_file_rows_that_are_not_index_mid_name_are_one_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('index,mid,display_name\n1,/m/b,"b, with comma"\n0,/m/a,a\n')
    assert read_label_names(path) == ["a", "b, with comma"]
    path.write_text("index,mid,display_name\nx,/m/a,a\n")
    with pytest.raises(ValueError, match=r"labels.csv:2: expected index,mid,display_name"):
        read_label_names(path)


@pytest.mark.parametrize("kind", KINDS)
def test_config_files_are_refused(work, kind):
    path = special(work, kind, "named.toml")
    with no_hang():
        line = _error_line(_run(["extract", "--config", str(path)], work))
    # click's own check names a folder first; ours the rest
    assert (f"named.toml: config file {WHAT[kind]}" in line if kind != "folder"
            else "named.toml' is a directory" in line)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_the_default_config_file_is_refused_not_skipped(work, kind):
    special(work, kind, "alphafuse.toml")
    with no_hang():
        line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c"], work))
    assert f"alphafuse.toml: config file {WHAT[kind]}" in line


@pytest.mark.parametrize("kind", KINDS)
def test_cache_and_run_files_are_refused(tmp_path, kind):
    with no_hang():
        with pytest.raises(CacheError, match=re.escape(f"train.h5: cache file {WHAT[kind]}")):
            read_split(special(tmp_path, kind, "train.h5"))
        run = tmp_path / "run"
        run.mkdir()
        special(run, kind, "head.pt")
        with pytest.raises(ValueError, match=re.escape(f"head.pt: run file {WHAT[kind]}")):
            load_run(run)


@pytest.fixture
def work(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.csv").write_text("path,label,split\na.mp4,x,train\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tsam_config_json_mistakes(work):
    cases = {"[1]": "needs a 'model' section", '{"model": 3}': "needs a 'model' section",
             '{"model": {}, "shift_temporal": 5}': "section 'shift_temporal' must be a JSON object",
             '{"model": {"colour": 1}}': "section 'model' has unknown keys colour",
             '{"model": {"audio_segments": 2}}': "model.audio_segments must be 1",
             '{"model": {"arch": ["resnet50"]}}': "model.arch must be one of",
             '{"model": {"video_segments": "8"}}': "backbone option tsam.num_segments must be a int",
             "{": "not a readable TSAM JSON config"}
    for text, message in cases.items():
        (work / "t.json").write_text(text)
        line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--backbone", "tsam",
                                 "--arch", "tiny", "--backbone-config", "t.json"], work))
        assert message in line, (text, line)
    (work / "t.json").write_bytes(b'{"model": "\xff"}')
    line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--backbone", "tsam",
                             "--backbone-config", "t.json"], work))
    assert "t.json:1: TSAM JSON config is not UTF-8 text (byte 0xff)" in line
    line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--backbone-config", "t.json"],
                            work))
    assert "none of timesformer, ast reads a config file of its own" in line
    assert not (work / "c").exists()


def test_namespace_state_of_an_ordered_dict_is_one_line(work):
    # An allow-listed OrderedDict whose pickled instance state is an (allow-listed) Namespace.
    import argparse
    import collections

    class Crafted:
        def __reduce__(self):
            return (collections.OrderedDict, (), argparse.Namespace(lr=0.1), None, iter([("w", torch.zeros(2))]))

    torch.save(Crafted(), work / "ns.pth")
    line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--arch", "tiny",
                             "--video-checkpoint", "ns.pth"], work))
    assert "ns.pth: not a readable PyTorch checkpoint ('Namespace' object is not iterable)" in line
    with pytest.raises(CheckpointError):
        read_checkpoint(work / "ns.pth")
