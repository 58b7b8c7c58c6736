"""Checkpoints never run code unasked: weights_only loading with an allow-list, one rule for every loader."""
import os

import numpy as np
import pytest
import torch

from alphafuse.extract import CheckpointError, load_ast, load_timesformer
from alphafuse.extract.backbones import rebuild_backbone
from alphafuse.extract.checkpoint import file_sha256, read_checkpoint, trusted_checkpoints
from tests.checkpoints import save_pyth, timesformer_state


class Payload:
    """Unpickling this runs ``os.system``-like code: here it only writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


def _evil_file(tmp_path, state_dict):
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"state_dict": state_dict, "extra": Payload(marker)}, tmp_path / "evil.pth")
    return tmp_path / "evil.pth", marker


def test_a_payload_is_refused_naming_the_file_and_the_global(tmp_path):
    path, marker = _evil_file(tmp_path, {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused.*global (tests\.)?test_checkpoint_safety\._touch"
                                              r".*full unpickling \(trust_checkpoint\)"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("loader", [load_timesformer, load_ast])
def test_every_loader_follows_the_same_rule(tmp_path, loader):
    path, marker = _evil_file(tmp_path, {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="refused"):
        loader(path, arch="tiny")
    assert not marker.exists()


def test_full_unpickling_only_when_asked(tmp_path):
    sd = timesformer_state(dim=64, depth=2, num_frames=2, img_size=32)
    path, marker = _evil_file(tmp_path, {f"model.{k}": v for k, v in sd.items()})
    with trusted_checkpoints():
        model = load_timesformer(path, num_frames=2, img_size=32, arch="tiny")
    assert marker.exists()                        # the opt-in really unpickles
    assert torch.equal(model.cls_token, sd["cls_token"])
    os.remove(marker)
    with pytest.raises(CheckpointError, match="refused"):   # and the opt-in ends with its block
        load_timesformer(path, num_frames=2, img_size=32, arch="tiny")
    assert not marker.exists()


def test_published_training_records_load_without_trust(tmp_path):
    # What real files carry beside the weights: epochs, config strings, optimizer state, numpy numbers.
    sd = timesformer_state(dim=64, depth=2, num_frames=2, img_size=32)
    save_pyth(tmp_path / "k400.pyth", sd)
    record = torch.load(tmp_path / "k400.pyth", weights_only=True)
    record.update(best_prec1=np.float64(74.1), top5=np.array([0.9, 0.8]), arch="resnet50")
    torch.save(record, tmp_path / "k400.pyth")
    model = load_timesformer(tmp_path / "k400.pyth", num_frames=2, img_size=32, arch="tiny")
    assert torch.equal(model.pos_embed, sd["pos_embed"])


def test_a_run_directory_naming_a_payload_cannot_run_it(tmp_path):
    # A shared run directory may name any file as its backbone checkpoint, with the right sha256.
    path, marker = _evil_file(tmp_path, {"w": torch.zeros(1)})
    description = {"config": {"model": "timesformer", "arch": "tiny", "num_frames": 2, "img_size": 32,
                              "attention_type": "divided_space_time"},
                   "fingerprint": "sha256:" + file_sha256(path), "pretrained": True, "seed": None}
    with pytest.raises(CheckpointError, match="refused"):
        rebuild_backbone(description, path)
    assert not marker.exists()


def test_garbage_is_unreadable_not_unsafe(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"bad\.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "bad.pth")
