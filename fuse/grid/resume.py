"""A grid that is stopped and started again finishes what is missing.

Each configuration and seed, once trained and scored, is written at once as ``rows/NNNNN.json``
(its metrics and its predicted class per test clip), atomically. A grid started again in the
same folder with the same settings (the folder's marker, fuse/folder.py) reads the rows that
are there, trains only the others, and writes the summary files, summary.json last: a folder
without summary.json is never a finished grid. Other settings are refused, naming what differs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alphafuse.cache.store import first_difference
from alphafuse.data.atomic import TMP_SUFFIX, atomic_write_text

from ..folder import FolderError
from .configs import describe

ROWS_DIR = "rows"


def grid_settings(configs, identity: dict, resamples: int, bootstrap_seed: int) -> dict:
    """What a resumed grid must share with the grid it finishes: every configuration, the
    cache's identity (not its path: a moved cache is the same cache) and the statistics."""
    return {"configs": [c.to_dict() for c in configs],
            "cache": {name: {k: v for k, v in split.items() if k != "file"}
                      for name, split in identity["splits"].items()},
            "resamples": resamples, "bootstrap_seed": bootstrap_seed}


def check_same_settings(out: Path, recorded: dict, wanted: dict) -> None:
    """Refuse to resume the grid in ``out`` with settings other than those it started with."""
    recorded = json.loads(json.dumps(recorded, default=str))
    wanted = json.loads(json.dumps(wanted, default=str))
    if recorded == wanted:
        return
    what = first_difference(recorded, wanted, "{path} was {old}, now {new}")
    raise FolderError(f"{out} holds an unfinished grid started with other settings ({what}); "
                      f"run it again with its settings to finish it, or overwrite it")


def save_row(out: Path, index: int, cfg, metrics: dict, predicted: np.ndarray) -> None:
    folder = Path(out) / ROWS_DIR
    folder.mkdir(exist_ok=True)
    atomic_write_text(folder / f"{index:05d}.json", json.dumps(
        {"config": describe(cfg), "seed": cfg.seed, "metrics": metrics, "predicted": predicted.tolist()}))


def load_rows(out: Path, configs) -> dict[int, tuple[dict, np.ndarray]]:
    """The rows a stopped grid finished, by configuration index; leftover temporaries removed."""
    folder = Path(out) / ROWS_DIR
    done: dict[int, tuple[dict, np.ndarray]] = {}
    if not folder.is_dir():
        return done
    for path in sorted(folder.iterdir()):
        if path.name.endswith(TMP_SUFFIX):   # a write killed midway: that row is trained again
            path.unlink(missing_ok=True)
            continue
        index = int(path.stem) if path.stem.isdigit() and path.suffix == ".json" else -1
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            row = None
        if not (0 <= index < len(configs)) or not isinstance(row, dict) \
                or row.get("config") != describe(configs[index]) or row.get("seed") != configs[index].seed:
            raise FolderError(f"{path} is not a row of this grid; overwrite the grid")
        done[index] = (row["metrics"], np.asarray(row["predicted"], dtype=np.int32))
    return done
