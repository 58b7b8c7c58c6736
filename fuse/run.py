"""A fusion run on disk: train on cached splits, score, and write a self-describing run directory.

Run directory::

    head.pt               best and last weights, head config (its name, input shapes, options),
                          TrainConfig, label names, the caches' backbones/preprocessing/paths,
                          the embeddings read with their shapes and views info, the classes
                          seen in training
    metrics.json          {"val", "test", "last": {"val", "test"}, "best_epoch", "epochs_run",
                          "learnable", "missing_modality", "trained", "config", ...}
    history.csv           epoch, train_loss, train_top1, train_top5, val_loss, val_top1, val_top5
    learning_curves.png
    confusion_matrix.png  best model on test (or val when there is no test split)
    config.json           what the run ran with and the identity of its cache (fuse/provenance.py)
    .alphafuse.lock/.json the folder's lock and what it holds (fuse/folder.py)

Every file is written through data.atomic.atomic_write (a temporary name renamed into place), so
an interrupted run never leaves a truncated head.pt; metrics.json is written last and marks a
finished run. ``overwrite`` removes every file of the previous run before the new one is written.
The folder is locked from before training to the last file (a second run into it is refused),
and head.pt, config.json and metrics.json carry one ``run_id``: :func:`load_run` trusts a head
only beside the metrics.json of the same run, so no kill or stray copy leaves a mix it accepts.
"""
from __future__ import annotations

import csv
import json
import logging
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from alphafuse.cache import CacheError, FeatureSplit, check_compatible, read_split
from alphafuse.data.atomic import TMP_SUFFIX, atomic_write
from alphafuse.data.files import require_file

from . import plots
from .config import TrainConfig
from .folder import check_kind, claim
from .evaluation import learnable, missing_modality_top1, predicted_classes, split_logits
from .heads import Head, head_from_config
from .inputs import require_embeddings
from .metrics import allowed_classes, mask_unseen, score, seen_in_train
from .provenance import cache_identity
from .train import train_head

log = logging.getLogger(__name__)

RUN_FORMAT = 2
READABLE_FORMATS = (1, 2)   # 1: concat heads only, before heads had names
HEAD_FILE = "head.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
CONFIG_FILE = "config.json"    # what a run or grid ran with: settings, backbones, preprocessing, its cache
HISTORY_COLUMNS = ("epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5")
# Every file a run writes, the finished-run marker first: an overwrite removes them all.
RUN_FILES = (METRICS_FILE, HEAD_FILE, HISTORY_FILE, CURVES_FILE, CONFUSION_FILE, CONFIG_FILE)


def load_splits(cache_dir, names: Iterable[str] = ("train", "val", "test")) -> dict[str, FeatureSplit]:
    """Read ``<cache_dir>/<name>.h5`` for each name; a missing file is a CacheError naming it."""
    return {name: read_split(Path(cache_dir) / f"{name}.h5") for name in names}


def fuse_run(train: FeatureSplit, val: FeatureSplit | None, test: FeatureSplit | None,
             cfg: TrainConfig | None, out_dir, *, overwrite: bool = False, record: dict | None = None) -> dict:
    """Train a head on ``train`` (best epoch chosen on ``val``), score val and test, write ``out_dir``.

    Returns the metrics written to metrics.json. Splits from different backbones, preprocessing
    or label vocabularies, or lacking an embedding the head reads, are refused (CacheError)
    before any training, and so is an existing run in ``out_dir`` unless ``overwrite``, a grid
    folder, and a folder another command is writing (fuse/folder.py). The directory is created
    only once every input was checked, and removed again if training fails; an overwritten
    run's files are all removed once training succeeded, so none of them outlives the new run.
    ``record``: more to write into config.json (the command line's cache folder, say).
    """
    cfg = cfg if cfg is not None else TrainConfig()
    held_out = {name: split for name, split in (("val", val), ("test", test)) if split is not None}
    check_compatible(train, *held_out.values())
    for split in (train, *held_out.values()):
        require_embeddings(split, cfg.needs(), cfg.head)
    check_kind(out_dir, "run")
    check_out_dir(out_dir, overwrite)
    with claim(out_dir, "run", RUN_FILES):
        check_out_dir(out_dir, overwrite)   # again under the lock: a run may have finished meanwhile
        result = train_head(train, val, cfg)
        out_dir = prepare_out_dir(out_dir, overwrite, known=RUN_FILES)
        allowed = seen_in_train(train)
        scores, predicted = _score_best_and_last(result, held_out, allowed)
        seen = _classes_present(train)
        shown = "test" if "test" in held_out else "val" if "val" in held_out else None
        metrics = {
            **scores["best"],
            "last": scores["last"],
            "best_epoch": result.best_epoch,
            "epochs": cfg.epochs,
            "epochs_run": len(result.history),
            "unseen_in_train": {name: _unseen(split, seen) for name, split in held_out.items()},
            "learnable": {name: learnable(train, split) for name, split in held_out.items()},
            "missing_modality": {shown: missing_modality_top1(result.model, held_out[shown], allowed)}
            if shown else {},
            "masked_in_prediction": _masked_names(train.label_names, allowed),
            "trained": result.model.trained_values(),
            "config": cfg.to_dict(),
            "head": result.model.config,
            "num_clips": {"train": len(train), **{name: len(split) for name, split in held_out.items()}},
            "train_seconds": result.seconds,
            "run_id": uuid.uuid4().hex,
        }
        identity = cache_identity({"train": train, "val": val, "test": test})
        config = {"command": "fuse", "run_id": metrics["run_id"], "config": cfg.to_dict(), "cache": identity,
                  "backbones": train.backbones, "preprocessing": train.preprocessing,
                  "extraction": train.attrs.get("extraction", {}), **(record or {})}
        _write_run(out_dir, result, metrics, config, held_out, predicted, train, val, test, seen)
    log.info("run written to %s: best epoch %d, %s", out_dir, result.best_epoch,
             ", ".join(f"{n} top1 {scores['best'][n]['top1']:.3f}" for n in held_out))
    return metrics


def load_run(run_dir, which: str = "best", device: str = "cpu") -> tuple[Head, dict]:
    """The head saved in ``run_dir`` (``which``: best or last epoch) in eval mode, and its metadata."""
    path = Path(run_dir) / HEAD_FILE
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"{path} not found; point to a run directory written by fuse_run")
    require_file(path, "run file")   # a FIFO or device named head.pt is refused, never read
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:   # empty, truncated, not a torch file, or holding code (refused)
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ValueError(f"{path}: not a readable run file (empty, truncated or foreign: {detail})") from None
    if not isinstance(saved, dict) or saved.get("format") not in READABLE_FORMATS:
        saved = saved if isinstance(saved, dict) else {}
        raise ValueError(f"{path} has run format {saved.get('format')!r}; this alphafuse reads "
                         f"{', '.join(map(str, READABLE_FORMATS))}")
    _check_finished(Path(run_dir), saved.get("run_id"))
    model = head_from_config(saved["head_config"])
    model.load_state_dict(saved["state_dict" if which == "best" else "last_state_dict"])
    meta = {key: value for key, value in saved.items() if not key.endswith("state_dict")}
    meta.setdefault("embedding_shapes", {n: list(s) for n, s in model.shapes.items()})
    meta.setdefault("embedding_info", {})
    meta["run_dir"] = str(run_dir)
    return model.to(device).eval(), meta


def _check_finished(run_dir: Path, run_id: str | None) -> None:
    """A head is trusted only beside the metrics.json of the same run (runs since run ids)."""
    if run_id is None:
        return
    try:
        finished = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8")).get("run_id")
    except FileNotFoundError:
        raise ValueError(f"{run_dir} holds an unfinished run (no {METRICS_FILE}: stopped while writing?); "
                         f"run fuse again with overwrite") from None
    except (ValueError, AttributeError):
        finished = None
    if finished != run_id:
        raise ValueError(f"{run_dir}: {HEAD_FILE} and {METRICS_FILE} are of different runs; run fuse again "
                         f"with overwrite")


def evaluate_run(run_dir, split: FeatureSplit, predictions_path=None, *, which: str = "best",
                 device: str = "cpu") -> dict:
    """Re-score a saved head on ``split``; optionally write per-clip predictions as CSV.

    The CSV has columns clip_id, label, predicted (class names), then one probability column
    per class name. A split made with other backbones, preprocessing or labels, or lacking an
    embedding the head reads, is refused.
    """
    model, meta = load_run(run_dir, which, device)
    _check_matches_run(split, meta, model)
    logits = split_logits(model, split, device)
    allowed = allowed_classes(split.label_names, meta["train_classes"])
    metrics = score(logits, split.labels, split.num_classes, label_names=split.label_names, allowed=allowed)
    metrics["unseen_in_train"] = _unseen(split, set(meta["train_classes"]))
    metrics["masked_in_prediction"] = _masked_names(split.label_names, allowed)
    if predictions_path is not None:
        write_predictions(predictions_path, split, torch.softmax(mask_unseen(logits, allowed), dim=1).numpy())
    return metrics


def write_predictions(path, split: FeatureSplit, probs: np.ndarray) -> None:
    """clip_id, label, predicted, then one probability column per class name (atomically)."""
    names = split.label_names
    predicted = probs.argmax(axis=1)
    with atomic_write(Path(path), "w") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "label", "predicted", *names])
        for clip_id, label, guess, row in zip(split.clip_ids, split.labels, predicted, probs):
            writer.writerow([clip_id, names[label], names[guess], *(f"{p:.6g}" for p in row)])


# -- helpers -----------------------------------------------------------------------------------

def _masked_names(label_names, allowed) -> list[str]:
    """The classes masked in prediction (absent from train): metrics.json and the report say so."""
    return [name for name, ok in zip(label_names, allowed) if not ok]


def _score_best_and_last(result, held_out: dict[str, FeatureSplit], allowed) -> tuple[dict, dict]:
    """Scores of the best and last models on each held-out split, and the best one's predictions,
    over the ``allowed`` classes (those seen in training)."""
    models = {"best": result.model, "last": result.last_model()}
    scores = {which: {"val": None, "test": None} for which in models}
    predicted = {}
    for name, split in held_out.items():
        for which, model in models.items():
            logits = split_logits(model, split)
            scores[which][name] = score(logits, split.labels, split.num_classes, label_names=split.label_names,
                                        allowed=allowed)
            if which == "best":
                predicted[name] = predicted_classes(logits, allowed)
    return scores, predicted


def _write_run(out_dir: Path, result, metrics: dict, config: dict, held_out: dict, predicted: dict,
               train, val, test, seen: set[str]) -> None:
    """Every file of the run, metrics.json (the finished marker) last."""
    _write_head(out_dir / HEAD_FILE, result, train, val, test, seen, config)
    _write_history(out_dir / HISTORY_FILE, result.history)
    with atomic_write(out_dir / CURVES_FILE) as f:
        plots.learning_curves(result.history, result.best_epoch if val is not None else None, f)
    shown = "test" if "test" in held_out else "val" if "val" in held_out else None
    if shown is None:
        log.info("no val or test split: %s not drawn", CONFUSION_FILE)
    else:
        with atomic_write(out_dir / CONFUSION_FILE) as f:
            plots.confusion_matrix_plot(held_out[shown].labels, predicted[shown], train.label_names, f,
                                        title=f"{shown}, epoch {result.best_epoch}")
    with atomic_write(out_dir / CONFIG_FILE, "w") as f:
        json.dump(config, f, indent=2, default=str)
    with atomic_write(out_dir / METRICS_FILE, "w") as f:
        json.dump(metrics, f, indent=2)


def _where(split: FeatureSplit) -> str:
    return str(split.path) if split.path is not None else repr(split.split)


def _check_matches_run(split: FeatureSplit, meta: dict, model: Head) -> None:
    require_embeddings(split, model.input_names(), model.name)
    # check_compatible compares FeatureSplits, so describe the run as an empty one.
    shapes = meta["embedding_shapes"]
    as_split = FeatureSplit(split="run", clip_ids=[], labels=np.zeros(0), has_audio=np.zeros(0),
                            label_names=meta["label_names"], backbones=meta["backbones"],
                            preprocessing=meta["preprocessing"], path=Path(meta["run_dir"]) / HEAD_FILE,
                            embeddings={n: np.zeros((0, *s), np.float32) for n, s in shapes.items()})
    try:
        check_compatible(as_split, split)
    except CacheError as exc:
        raise CacheError(f"cannot evaluate run {meta['run_dir']} on {_where(split)}: {exc}") from exc


def _classes_present(split: FeatureSplit) -> set[str]:
    return {split.label_names[c] for c in np.unique(split.labels)}


def _unseen(split: FeatureSplit, seen: set[str]) -> list[str]:
    unseen = sorted(_classes_present(split) - seen)
    if unseen:
        clips = int(np.isin(split.labels, [split.label_names.index(n) for n in unseen]).sum())
        log.warning("%s: %d class(es) never seen in training (%s); their %d clip(s) count as errors",
                    _where(split), len(unseen), ", ".join(unseen[:10]) + (" ..." if len(unseen) > 10 else ""),
                    clips)
    return unseen


def check_out_dir(out_dir, overwrite: bool, markers=(HEAD_FILE, METRICS_FILE), what: str = "run") -> Path:
    """Refuse an ``out_dir`` that already holds a ``what`` (any of ``markers``) unless ``overwrite``.

    Creates nothing: called before training, so that bad input never leaves an empty directory.
    """
    out_dir = Path(out_dir)
    existing = [name for name in markers if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a {what} ({', '.join(existing)}); choose another "
                              f"output directory, remove it, or pass overwrite=True")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a directory; choose another output directory")
    return out_dir


def prepare_out_dir(out_dir, overwrite: bool, markers=(HEAD_FILE, METRICS_FILE), what: str = "run",
                    known=()) -> Path:
    """Check ``out_dir`` again (see :func:`check_out_dir`), create it, and remove the ``known`` files
    a previous run or grid left there (and their temporaries), in order: the finished marker first."""
    out_dir = check_out_dir(out_dir, overwrite, markers, what)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in known:
        (out_dir / name).unlink(missing_ok=True)
        (out_dir / (name + TMP_SUFFIX)).unlink(missing_ok=True)
    return out_dir


def _write_head(path: Path, result, train, val, test, seen: set[str], config: dict) -> None:
    payload = {
        "format": RUN_FORMAT,
        "run_id": config["run_id"],
        "cache": config["cache"],   # which cache it was trained on (fuse/provenance.py)
        "state_dict": _to_cpu(result.best_state_dict),
        "last_state_dict": _to_cpu(result.last_state_dict),
        "head_config": result.model.config,
        "train_config": result.config.to_dict(),
        "needs": list(result.model.input_names()),
        # Per-clip shapes as in the cache (views included) and their info: evaluation and the
        # end-to-end model apply the same views rule (fuse/inputs.py).
        "embedding_shapes": {n: list(train.embeddings[n].shape[1:]) for n in result.model.input_names()},
        "embedding_info": {n: train.embedding_info[n] for n in result.model.input_names()
                           if n in train.embedding_info},
        "best_epoch": result.best_epoch,
        "label_names": list(train.label_names),
        "train_classes": sorted(seen),
        "backbones": train.backbones,
        "preprocessing": train.preprocessing,
        "extraction": train.attrs.get("extraction", {}),   # tokens and layers: the end-to-end model asks the same
        "sources": train.attrs.get("sources", {}),   # where extraction read the checkpoints
        "cache_paths": {name: str(Path(s.path).resolve()) if s is not None and s.path is not None else None
                        for name, s in (("train", train), ("val", val), ("test", test))},
    }
    with atomic_write(path) as f:
        torch.save(payload, f)


def _to_cpu(state: dict) -> dict:
    return {key: value.detach().cpu() for key, value in state.items()}


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(history)
