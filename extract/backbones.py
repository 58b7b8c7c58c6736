"""Rebuilding the exact backbones a cache was extracted with, from what the cache recorded."""
from __future__ import annotations

from .checkpoint import CheckpointError, file_sha256
from .registry import create_backbone, get_backbone


def options_of(description: dict) -> tuple[str, dict]:
    """(registry name, build options) of a cache's backbone description.

    Caches written before the registry (schema 1) recorded only ``config`` (with ``model``) and
    ``seed``: the options are read from the config by name.
    """
    if "name" in description:
        return description["name"], dict(description["options"])
    config = description["config"]
    name = config["model"]
    entry = get_backbone(name)
    options = {k: config[k] for k in entry.options if k in config}
    if "seed" in entry.options:
        options["seed"] = description.get("seed") or 0
    return name, options


def rebuild_backbone(description: dict, checkpoint=None):
    """The backbone described by a cache's ``backbones[role]`` entry.

    Random-weight backbones come back from their recorded seed. Pretrained ones need their
    checkpoint file (``checkpoint``), whose sha256 must equal the recorded fingerprint.
    """
    try:
        name, options = options_of(description)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"the cache describes a backbone this alphafuse cannot rebuild ({exc})") from None
    if description.get("pretrained"):
        if checkpoint is None:
            raise CheckpointError(f"the cache's {name} backbone was pretrained "
                                  f"({description['fingerprint'][:23]}...): give its checkpoint file")
        found = "sha256:" + file_sha256(checkpoint)
        if found != description["fingerprint"]:
            raise CheckpointError(f"{checkpoint}: sha256 {found[7:19]}... is not the checkpoint the cache was "
                                  f"extracted with ({description['fingerprint'][7:19]}...)")
    else:
        checkpoint = None
    model = create_backbone(name, checkpoint, **options)
    if model.fingerprint != description["fingerprint"]:
        raise CheckpointError(f"rebuilt {name} has fingerprint {model.fingerprint[:23]}..., the cache "
                              f"recorded {description['fingerprint'][:23]}...")
    return model
