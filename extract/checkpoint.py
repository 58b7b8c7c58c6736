"""What both backbones share: reading checkpoint files, strict loading, freezing, fingerprints.

Each model file (``timesformer.py``, ``ast.py``) owns a ``checkpoint_filter_fn`` that turns the
published state dict into this project's key layout; everything here is format-agnostic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alphafuse.data.files import open_regular, require_file
from alphafuse.data.memory import check_fits, module_bytes

log = logging.getLogger(__name__)

# Peak memory while a backbone is built, in multiples of its weights (see build_backbone).
BUILD_PEAK = 3

# Wrapper keys under which training frameworks nest the model's state dict.
STATE_DICT_KEYS = ("model_state", "state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or does not fit the backbone asked for.

    ``hint`` names the setting that would resolve it (the command line shows it as a flag)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


# The only non-tensor Python types a checkpoint may hold without --trust-checkpoint: what the
# published TimeSformer (.pyth: epoch, cfg string, optimizer state), AST, CAV-MAE, TSM and TSAM
# files carry (plain containers, numbers, strings, numpy scalars and arrays in training
# records). Anything else could run code while it is unpickled.
def _allowed_globals() -> list:
    import argparse
    import collections

    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct,
               argparse.Namespace, collections.OrderedDict]
    allowed += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")]
    return allowed


_TRUSTED: ContextVar[bool] = ContextVar("alphafuse_trust_checkpoints", default=False)


@contextmanager
def trusted_checkpoints(trust: bool = True):
    """Inside this block, checkpoints that fail the safe load are fully unpickled (they can run
    code: only for files from a source you trust). The CLI's --trust-checkpoint enters it."""
    token = _TRUSTED.set(trust)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and return its model state dict, unwrapped from training wrappers.

    The file is read with ``torch.load(weights_only=True)`` and the allow-list above; a file
    that needs any other Python object is refused, naming it, unless inside
    :func:`trusted_checkpoints`. Optimizer state, epoch counters and configs stored beside the
    weights are dropped here.
    """
    if Path(path).is_dir():   # a Hugging Face snapshot folder: its weight files (extract/hf.py reads them safely)
        from .hf import read_weights, snapshot_files
        return read_weights(snapshot_files(path)[1])
    path = require_file(path, "checkpoint file", CheckpointError)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path, exc)
        if unsafe is None:      # not a pickle of Python objects at all: garbage, truncated, ...
            found = re.search(r"Unsupported operand[^\n]*|invalid load key[^\n]*", str(exc))
            detail = found.group(0).strip() if found else "not a pickle of tensors"
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
        if not _TRUSTED.get():
            raise CheckpointError(f"{path}: refused: it holds Python objects that can run code when loaded "
                                  f"({unsafe}); if you trust its source, load it with full unpickling "
                                  f"(trust_checkpoint)", hint="trust_checkpoint") from None
        log.warning("%s: fully unpickling a checkpoint that holds %s, as asked", path, unsafe)
        obj = _load_or_fail(path, weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(exc)})") from None
    return unwrap_state_dict(obj, path)


def _unsafe_globals(path: Path, exc: BaseException) -> str | None:
    """The globals outside the allow-list that made the safe load fail, or None if none did."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        found = []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _allowed_globals()}
    found = [g for g in found if g not in allowed]
    if found:
        return "global " + ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
    match = re.search(r"GLOBAL ([\w.]+)|Unsupported global: ([\w.]+)", str(exc))
    return f"global {match.group(1) or match.group(2)}" if match else None


def _load_or_fail(path: Path, weights_only: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def unwrap_state_dict(obj, source="checkpoint") -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a state dict, found {type(obj).__name__}")
    for key in STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], dict):
            dropped = sorted(k for k in obj if k != key)
            if dropped:
                log.info("%s: using %r, dropping %s", source, key, ", ".join(dropped))
            obj = obj[key]
            break
    if obj and all(isinstance(v, dict) for v in obj.values()):
        # One state dict per named part (TSAM's model_state: {"nn_backbone": {...}, "last_fc": {...}}):
        # joined as "<part>.<key>", each part's checkpoint_filter_fn strips what it must.
        obj = {f"{part}.{k}": v for part, sd in obj.items() for k, v in sd.items()}
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: holds no tensors (keys: {_preview(obj.keys())})")
    # Parameter names are strings; an int or tuple key is not a model's state dict (and would
    # break every prefix rule downstream).
    odd = [k for k in tensors if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"{source}: not a model state dict: parameter names must be strings, found "
                              f"{len(odd)} {type(odd[0]).__name__} key(s) ({_preview(map(repr, odd), 3)})")
    return tensors


def strip_prefixes(state_dict: dict, prefixes: tuple[str, ...]) -> dict:
    """Remove wrapper prefixes (``module.`` from DataParallel, ``model.`` from SlowFast...) in order."""
    out = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def drop_keys(state_dict: dict, prefixes: tuple[str, ...], source="checkpoint") -> dict:
    """Drop keys we knowingly do not use (classifier heads), logging what went."""
    kept = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    dropped = sorted(set(state_dict) - set(kept))
    if dropped:
        log.info("%s: dropping %d classifier keys (%s)", source, len(dropped), _preview(dropped))
    return kept


def load_strict(model: nn.Module, state_dict: dict, source="checkpoint", hint: str = "") -> None:
    """Load every parameter of ``model`` from ``state_dict`` and use every key, or fail naming them."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_preview(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_preview(mismatched, 3)})")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__} "
                              f"{getattr(model, 'config', '')}: " + "; ".join(problems) + hint)
    model.load_state_dict(state_dict, strict=True)


def _preview(items, n=6) -> str:
    items = list(items)
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... {len(items) - n} more" if len(items) > n else "")


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def file_sha256(path: str | os.PathLike, chunk=1 << 20) -> str:
    """The sha256 of a checkpoint file; a FIFO or device is refused (it would never end). A folder
    is a Hugging Face snapshot: the sha256 over its config and weight files (extract/hf.py)."""
    if Path(path).is_dir():
        from .hf import snapshot_sha256
        return snapshot_sha256(path)
    digest = hashlib.sha256()
    with open_regular(path, "checkpoint file", CheckpointError) as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def config_sha256(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def build_backbone(make: Callable[[], nn.Module], name: str, config: dict, checkpoint, seed: int,
                   filter_fn: Callable[[dict, nn.Module], dict], hint_fn=None) -> nn.Module:
    """Construct a frozen backbone, from ``checkpoint`` or from random weights seeded by ``seed``.

    The returned module carries ``config`` (architecture and input), ``fingerprint`` (sha256 of
    the checkpoint file, or of config and seed for random weights) and ``pretrained``.
    """
    with torch.random.fork_rng(devices=[]):
        # Sized on the meta device first (nothing allocated): options that would need more memory
        # than the machine has are one line naming them, not an allocator error or a killed
        # process. Building takes up to about three times the weights at its peak (CAV-MAE's
        # float64 sin-cos tables, initialisation copies), so that is what must fit.
        options = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "model")
        try:
            weights = module_bytes(make)
        except (RuntimeError, OverflowError) as exc:   # sizes beyond what torch can even index
            raise ValueError(f"{name} ({options}): too large to build ({' '.join(str(exc).split())[:160]})") from None
        check_fits(BUILD_PEAK * weights, f"{name} ({options}): building its weights")
        torch.manual_seed(seed)
        model = make()
    if checkpoint is None:
        log.warning("%s has random weights (seed %d): its embeddings are NOT pretrained features; "
                    "pass the published checkpoint for real results", name, seed)
        fingerprint = "random:" + config_sha256({"name": name, **config, "seed": seed})
    else:
        source = str(checkpoint)
        state_dict = filter_fn(read_checkpoint(checkpoint), model)
        load_strict(model, state_dict, source, hint_fn(state_dict) if hint_fn else "")
        fingerprint = "sha256:" + file_sha256(checkpoint)
        log.info("%s loaded from %s", name, source)
    model.config = dict(config)
    model.checkpoint = None if checkpoint is None else str(Path(checkpoint).resolve())
    model.seed = None if checkpoint is not None else seed
    model.fingerprint = fingerprint
    model.pretrained = checkpoint is not None
    return freeze(model)


def describe(model: nn.Module) -> dict:
    """What makes a backbone's embeddings what they are: caches compare this, and rebuild from it.

    ``name`` and ``options`` are the registry entry and the options it was built with; the
    checkpoint's path is not part of it (the same file may live elsewhere on another machine);
    its sha256 is, in ``fingerprint``.
    """
    return {"name": getattr(model, "backbone_name", model.config.get("model")),
            "options": dict(getattr(model, "options", {})), "config": model.config,
            "fingerprint": model.fingerprint, "seed": model.seed, "pretrained": model.pretrained}
