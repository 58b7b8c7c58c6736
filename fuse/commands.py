"""What the fuse, evaluate, predict and grid commands do, as functions a notebook can call too.

Each takes settled values (cli.py parsed and checked them) and an ``echo`` for its report.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from alphafuse.cache import open_split, split_exists

log = logging.getLogger(__name__)
Echo = Callable[[str], None]
CONFIG_FILE = "config.json"    # what a run or grid ran with (fuse/run.py and fuse/grid/report.py write it)


def selection(video: str | None = None, audio: str | None = None, backbone: str | None = None) -> dict:
    """The encoders to combine from a cache folder (cache/stores.py): a backbone name or short
    store id per role; a role left None takes the folder's only store of that role."""
    return {k: v for k, v in (("video", video), ("audio", audio), ("backbone", backbone)) if v}


def open_cache(cache_dir, name: str, chosen: dict | None = None):
    """Split ``name`` of the cache folder: the chosen stores combined, or a schema-2 file."""
    return open_split(cache_dir, name, **(chosen or {}))


def optional_split(cache_dir: Path, name: str, chosen: dict | None = None):
    if not split_exists(cache_dir, name, **(chosen or {})):
        log.warning("%s: no %s split: training without it", cache_dir, name)
        return None
    return open_cache(cache_dir, name, chosen)


def run_selection(meta: dict) -> dict:
    """The stores a run was trained on, as a selection (runs before schema 3 record none)."""
    stores = meta.get("stores") or {}
    return {("backbone" if role == "audiovisual" else role): sid for role, sid in stores.items()}


def run_name(cfg) -> str:
    parts = [] if cfg.head == "concat" else [cfg.head]
    parts.append(cfg.transform if cfg.modalities == "both" else f"{cfg.modalities}-only")
    if cfg.transform != "none":
        parts.append(cfg.target)
    if cfg.alpha is not None:
        parts.append(f"{cfg.alpha:g}")
    return "-".join(parts) + f"-seed{cfg.seed}"


def fuse_command(cache: Path, cfg, out_dir: Path | None, run_dir: Path, overwrite: bool, echo: Echo = print,
                 chosen: dict | None = None) -> dict:
    """``chosen``: the encoders to combine (see :func:`selection`)."""
    from .metrics import masked_note
    from .run import fuse_run

    out_dir = out_dir or run_dir / run_name(cfg)
    train = open_cache(cache, "train", chosen)
    metrics = fuse_run(train, optional_split(cache, "val", chosen), optional_split(cache, "test", chosen), cfg,
                       out_dir, overwrite=overwrite, record={"cache_dir": str(Path(cache).resolve()),
                                                            "stores": train.attrs.get("stores")})
    echo(f"best epoch {metrics['best_epoch']} of {metrics['epochs']} (trained in {metrics['train_seconds']:.2f} s)")
    for name in ("val", "test"):
        best, last = metrics.get(name), (metrics.get("last") or {}).get(name)
        if best:
            echo(f"  {name:>4}: top1 {best['top1']:.3f}  top5 {best['top5']:.3f}  mAP {best['map']:.3f}  "
                 f"loss {best['loss']:.3f}   (last epoch: top1 {last['top1']:.3f})")
    for name, unseen in (metrics.get("unseen_in_train") or {}).items():
        if unseen:
            echo(f"  {name}: {len(unseen)} class(es) never seen in training: {', '.join(unseen[:5])}")
    learnable = (metrics.get("learnable") or {}).get("test")
    if learnable:
        echo(f"  learnable ceiling: {learnable['seen_label_clips']} of {learnable['clips']} test clips have a label "
             f"seen in training (top-1 at most {learnable['max_top1']:.3f})" + masked_note(learnable))
    missing = (metrics.get("missing_modality") or {}).get("test")
    if missing:
        echo("  test top1 with a modality missing: " + ", ".join(f"{m.replace('_', ' ')} {v:.3f}"
                                                                   for m, v in missing.items()))
    echo(f"run written to {out_dir}/ (metrics.json, history.csv, learning_curves.png, confusion_matrix.png, "
         f"{CONFIG_FILE})")
    return metrics


def evaluate_command(run_dir: Path, split: str, cache_dir, predictions, which: str, as_json: bool,
                     echo: Echo = print, *, vggsounder: bool = False, vggsounder_labels=None,
                     chosen: dict | None = None) -> dict:
    """Re-score a run on a split; with ``vggsounder`` also on VGGSounder's labels of its clips,
    written to ``<run>/vggsounder-<split>.json`` (returned under the key ``vggsounder``).
    Without ``chosen`` the run's own stores are read (the encoders it was trained on)."""
    from .provenance import check_identity, recorded_cache_dir
    from .run import evaluate_run, load_run

    _, meta = load_run(run_dir)
    chosen = chosen or run_selection(meta)
    if cache_dir is None:   # the cache the run was trained on, as it was then, or a refusal
        cache_dir = recorded_cache_dir(meta, run_dir)
        features = open_cache(cache_dir, split, chosen)
        check_identity(meta.get("cache"), split, features, f"run {run_dir}")
    else:   # another cache: its backbones, preprocessing and classes must be the run's (evaluate_run)
        features = open_cache(cache_dir, split, chosen)
    targets = None
    if vggsounder:   # before scoring: a vocabulary or split VGGSounder cannot score fails at once
        from .vggsounder import match
        targets = match(features.clip_ids, meta["label_names"], vggsounder_labels, owner=f"run {run_dir}",
                        where=f"split {split} ({features.path})")
    metrics = evaluate_run(run_dir, features, predictions, which=which)
    if vggsounder:
        from .vggsounder import evaluate_run_vggsounder, format_table
        metrics["vggsounder"] = evaluate_run_vggsounder(run_dir, features, split, which=which, targets=targets)
    if as_json:
        echo(json.dumps(metrics, indent=2))
        return metrics
    echo(f"{split}: top1 {metrics['top1']:.3f}  top5 {metrics['top5']:.3f}  mAP {metrics['map']:.3f}  "
         f"loss {metrics['loss']:.3f}  ({metrics['num_clips']} clips)")
    masked = metrics.get("masked_in_prediction")
    if masked:
        echo(f"  {len(masked)} class(es) absent from the run's training split are masked in prediction "
             f"(never predicted): {', '.join(masked[:5])}" + (" ..." if len(masked) > 5 else ""))
    if predictions:
        echo(f"predictions written to {predictions}")
    if vggsounder:
        echo(format_table(metrics["vggsounder"]))
        echo(f"VGGSounder scores written to {metrics['vggsounder']['path']}")
    return metrics


def read_label_names(path) -> list[str]:
    """A backbone's class names: AudioSet-style class_labels_indices.csv (index,mid,display_name),
    as CAV-MAE's egs ship them, or a plain file of one name per line."""
    import csv
    import io

    from alphafuse.data.files import read_regular_text

    text = read_regular_text(path, "label file")
    lines = text.splitlines()
    if lines and lines[0].lower().replace(" ", "").startswith("index,mid,display_name"):
        rows = []
        reader = csv.reader(io.StringIO(text, newline=""))
        next(reader)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < 3 or not row[0].strip().isdigit():
                raise ValueError(f"{path}:{reader.line_num}: expected index,mid,display_name with an integer "
                                 f"index, got {','.join(row)!r}")
            rows.append((int(row[0]), row[2]))
        return [name for _, name in sorted(rows)]
    return [line.strip() for line in lines if line.strip()]


def evaluate_backbone_command(cache_dir: Path, split: str, labels_path, as_json: bool, echo: Echo = print,
                              chosen: dict | None = None) -> dict:
    from .evaluation import evaluate_backbone_logits

    features = open_cache(cache_dir, split, chosen)
    names = read_label_names(labels_path) if labels_path else None
    metrics = evaluate_backbone_logits(features, backbone_labels=names)
    if as_json:
        echo(json.dumps(metrics, indent=2))
    else:
        views = f", mean of {metrics['views']} views' softmax" if metrics.get("views") else ""
        echo(f"{split}: the backbone's own classifier{views}: top1 {metrics['top1']:.3f}  top5 {metrics['top5']:.3f}  "
             f"mAP {metrics['map']:.3f}  ({metrics['num_clips']} clips)")
    return metrics


def predict_command(videos, run_dir: Path, top_k: int, checkpoints: dict, device: str, as_json: bool,
                    echo: Echo = print) -> int:
    """Classify files; returns the exit code (1 when some file could not be read)."""
    from .model import AlphaTransformer

    model = AlphaTransformer.from_run(run_dir, checkpoints, device=device)
    results = model.predict_files(videos, top_k)
    if as_json:
        echo(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                echo(f"{r['path']}: ERROR {r['error']}")
                continue
            echo(f"{r['path']}" + ("" if r["has_audio"] else " (no audio stream)"))
            for t in r["top"]:
                echo(f"  {t['probability']:6.1%}  {t['label']}")
    return 1 if any("error" in r for r in results) else 0


def _pair_label(chosen: dict | None) -> str:
    chosen = chosen or {}
    return chosen.get("backbone") or "+".join(chosen.get(m, "?") for m in ("video", "audio"))


def per_head_options(items) -> dict[str, dict]:
    """``HEAD.KEY=VALUE`` strings (the grid's --head-option) -> {head: its typed options}."""
    from .heads import parse_head_options

    grouped: dict[str, list[str]] = {}
    for item in items or ():
        name, dot, rest = item.partition(".")
        if not dot or "=" not in rest:
            raise ValueError(f"head option {item!r}: a grid takes HEAD.KEY=VALUE, e.g. bottleneck.dim=64")
        grouped.setdefault(name.strip(), []).append(rest)
    return {name: parse_head_options(name, values) for name, values in grouped.items()}


def grid_command(cache: Path, out_dir: Path | None, run_dir: Path, base, sweep: dict, *, seeds: int, jobs,
                 method: str, overwrite: bool, echo: Echo = print, progress: bool = True,
                 head_options: dict | None = None, vggsounder: bool = False, vggsounder_labels=None,
                 chosen: dict | None = None):
    from tqdm import tqdm

    from .grid import configs_from_options, format_summary_table, parse_pairs, run_grid, run_pair_grid

    preset, pairs = sweep.get("preset"), sweep.get("pairs")
    if not (preset or pairs or sweep.get("transforms") or sweep.get("alphas") or sweep.get("heads")):
        raise ValueError("nothing to run: give a preset (preset paper), a sweep (transforms, alphas), heads or pairs")
    if pairs and chosen:
        raise ValueError("pairs name the encoders of each pair; drop the video/audio backbone selection")
    name = (f"grid-pairs-{pairs.replace(',', '-')}" if pairs else f"grid-{preset}" if preset
            else "grid-heads-" + sweep["heads"].replace(",", "+") if sweep.get("heads")
            else "grid-" + (sweep.get("transforms") or "scale").replace(",", "+"))
    out_dir = out_dir or run_dir / name
    configs = configs_from_options(preset, sweep.get("transforms"), sweep.get("targets"), sweep.get("alphas"), seeds,
                                   base, sweep.get("learned"), heads=sweep.get("heads"),
                                   late_weights=sweep.get("late_weights"), pairs=bool(pairs))
    if head_options:
        unused = sorted(set(head_options) - {c.head for c in configs})
        if unused:
            raise ValueError(f"head options for {', '.join(unused)}, which this grid does not train")
        configs = [replace(c, head_options={**c.head_options, **head_options.get(c.head, {})}) for c in configs]
    selections = parse_pairs(pairs) if pairs else [chosen]
    data = {_pair_label(sel): (open_cache(cache, "train", sel), optional_split(cache, "val", sel),
                                open_cache(cache, "test", sel)) for sel in selections}
    train, val, test = next(iter(data.values()))
    targets = None
    if vggsounder:   # before training: a vocabulary or test split VGGSounder cannot score fails at once
        if pairs:
            raise ValueError("VGGSounder scores (vggsounder) are not computed for a grid of encoder pairs (pairs) yet")
        from .vggsounder import match
        targets = match(test.clip_ids, test.label_names, vggsounder_labels, owner=f"cache {cache}",
                        where=f"split test ({test.path})")
    record = {"cache_dir": str(Path(cache).resolve()), "sweep": sweep, "seeds": seeds, "base": base.to_dict(),
              "stores": {label: d[0].attrs.get("stores") for label, d in data.items()} if pairs
              else train.attrs.get("stores")}
    total = len(configs) * len(data)
    with tqdm(total=total, desc="  grid", unit="head", file=sys.stderr, disable=None if progress else True) as bar:
        def on_row(done, _total, row):
            bar.update(1)
            bar.set_postfix_str(f"test top-1 {row['test_top1']:.2f}")
        if pairs:
            result = run_pair_grid(data, configs, out_dir, jobs=jobs, method=method, progress=on_row,
                                   overwrite=overwrite, record=record)
        else:
            result = run_grid(train, val, test, configs, out_dir, jobs=jobs, method=method, progress=on_row,
                              overwrite=overwrite, vggsounder=targets, record=record)
    table = format_summary_table(result, len(result.test_labels))
    if targets is not None:
        from .grid.vggsounder import format_vggsounder_table
        table += "\n" + format_vggsounder_table(result)
    echo(table)
    echo(f"{len(result.rows)} heads trained in {result.seconds:.1f} s ({result.method}, {result.jobs} job(s)); "
         f"written to {out_dir}/: " + ", ".join(sorted(p.name for p in result.files.values())))
    return result, table
