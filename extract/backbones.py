"""Rebuilding the exact backbones a cache was extracted with, from what the cache recorded."""
from __future__ import annotations

from .ast import load_ast
from .checkpoint import CheckpointError, file_sha256
from .timesformer import load_timesformer


def rebuild_backbone(description: dict, checkpoint=None):
    """The backbone described by a cache's ``backbones["video"|"audio"]`` entry.

    Random-weight backbones come back from their recorded seed. Pretrained ones need their
    checkpoint file (``checkpoint``), whose sha256 must equal the recorded fingerprint.
    """
    config = description["config"]
    if description.get("pretrained"):
        if checkpoint is None:
            raise CheckpointError(f"the cache's {config['model']} backbone was pretrained "
                                  f"({description['fingerprint'][:23]}...): give its checkpoint file")
        found = "sha256:" + file_sha256(checkpoint)
        if found != description["fingerprint"]:
            raise CheckpointError(f"{checkpoint}: sha256 {found[7:19]}... is not the checkpoint the cache was "
                                  f"extracted with ({description['fingerprint'][7:19]}...)")
    seed = description.get("seed") or 0
    if config["model"] == "timesformer":
        model = load_timesformer(checkpoint, num_frames=config["num_frames"], img_size=config["img_size"],
                                 attention_type=config["attention_type"], arch=config["arch"], seed=seed)
    elif config["model"] == "ast":
        model = load_ast(checkpoint, input_tdim=config["input_tdim"], fstride=config["fstride"],
                         tstride=config["tstride"], arch=config["arch"], seed=seed)
    else:
        raise CheckpointError(f"unknown backbone {config['model']!r} in the cache's description")
    if model.fingerprint != description["fingerprint"]:
        raise CheckpointError(f"rebuilt {config['model']} has fingerprint {model.fingerprint[:23]}..., the cache "
                              f"recorded {description['fingerprint'][:23]}...")
    return model
