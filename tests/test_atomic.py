"""data/atomic.py: a file is written whole or not at all, and a failure names the file."""
import errno
import os

import h5py
import numpy as np
import pytest

from alphafuse.cache import FeatureSplit, read_split, write_split
from alphafuse.data.atomic import WriteError, atomic_write, atomic_write_text, atomic_write_with


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed midway")
    assert target.read_text() == "old" and not list(tmp_path.glob("*.tmp"))


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "train.h5"
    write_split(target, FeatureSplit("train", ["a"], [0], np.ones((1, 2)), np.ones((1, 2)), [True], ["x"]))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError) as info:
        write_split(target, FeatureSplit("train", ["b"], [0], np.zeros((1, 2)), np.zeros((1, 2)), [True], ["x"]))
    assert str(info.value) == f"cannot write {target}: no space left on device"
    monkeypatch.undo()
    assert read_split(target).clip_ids == ["a"] and not list(tmp_path.glob("*.tmp"))


def test_a_missing_or_read_only_folder_is_named(tmp_path):
    with pytest.raises(WriteError, match=r"cannot write .*nowhere/x\.txt: no such file or directory"):
        atomic_write_text(tmp_path / "nowhere" / "x.txt", "x")


def test_writers_that_open_the_file_themselves(tmp_path):
    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f["x"] = np.arange(3)

    atomic_write_with(tmp_path / "a.h5", write)
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["x"][()].tolist() == [0, 1, 2]
