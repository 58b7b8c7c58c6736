"""`alphafuse demo`: the whole pipeline on a generated dataset, with a report.

Generates the dataset (data/demo.py), writes a config, extracts with tiny random-weight
backbones (or the checkpoints the config names), trains one head and the paper's grid, and
writes report.md with the plots. Every stage reuses what an earlier run finished.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from alphafuse.cache import read_split, split_path
from alphafuse.data import read_manifest
from alphafuse.data.atomic import atomic_write_text
from alphafuse.data.demo import CLASSES, make_demo_dataset
from alphafuse.extract.pipeline import format_summary
from alphafuse.extract.registry import create_backbone
from alphafuse.extract.runner import extract_split

from .commands import grid_command
from .run import fuse_run
from .train import TrainConfig

CONFIG = """# Written by `alphafuse demo`. Name real checkpoints here to run the demo with them:
# video_checkpoint = "TimeSformer_divST_8x32_224_K400.pyth"
# audio_checkpoint = "audioset_10_10_0.4593.pth"
manifest = "data/manifest.csv"
cache_dir = "cache"
run_dir = "runs"

[extract]
workers = 2
batch_size = 8
tokens = true          # for the bottleneck head of the head comparison
layers = "all"         # for the layers head
"""

# The head comparison's bottleneck head, sized for a laptop demo (the default is MBT's d=256, 4 layers).
DEMO_BOTTLENECK = {"dim": 32, "layers": 2, "bottlenecks": 4, "num_heads": 2}


def run_demo(work: Path, seeds: int = 5, clips_per_class: int = 24, jobs: int | None = None,
             echo: Callable[[str], None] = print) -> Path:
    import alphafuse.settings as settings_module

    with tqdm(total=len(CLASSES) * clips_per_class, desc=" clips", unit="clip", file=sys.stderr, disable=None) as bar:
        make_demo_dataset(work / "data", clips_per_class=clips_per_class, progress=bar.update)
    config_path = work / settings_module.DEFAULT_CONFIG
    if not config_path.exists():
        atomic_write_text(config_path, CONFIG)
    s = settings_module.Settings(settings_module.SETTINGS, str(config_path), "extract")
    video_ckpt, audio_ckpt = s.get("video_checkpoint", None, None), s.get("audio_checkpoint", None, None)
    pretrained = bool(video_ckpt and audio_ckpt)
    arch = s.get("arch", None, "base" if video_ckpt or audio_ckpt else "tiny")
    if not pretrained:
        echo(f"demo: {arch} backbones with RANDOM weights (no checkpoints in {config_path}): the numbers show the "
             f"pipeline working, not pretrained features")
    manifest = read_manifest(s.get("manifest"))
    cache = Path(s.get("cache_dir"))
    video = create_backbone(s.get("video_backbone"), video_ckpt, arch=arch)
    audio = create_backbone(s.get("audio_backbone"), audio_ckpt, arch=arch)
    for split in manifest.splits:
        if not split_path(cache, split).exists():
            summary = extract_split(manifest, split, cache, video, audio, workers=s.get("workers"),
                                    batch_size=s.get("batch_size"), tokens=s.get("tokens"),
                                    layers=s.get("layers", None, None))
            echo(format_summary(summary))

    runs = Path(s.get("run_dir"))
    splits = {name: read_split(split_path(cache, name)) for name in ("train", "val", "test")}
    single = runs / "neg_scalar-audio"
    if not (single / "metrics.json").exists():
        fuse_run(splits["train"], splits["val"], splits["test"], TrainConfig(transform="neg_scalar", target="ast"),
                 single, overwrite=True)
    grid_dir = runs / "grid-paper"
    if (grid_dir / "summary.json").exists() and (grid_dir / "table.txt").exists():
        echo(f"demo: reusing the finished grid in {grid_dir} (delete it to run again)")
        table = (grid_dir / "table.txt").read_text()
    else:
        _, table = grid_command(cache, grid_dir, runs, TrainConfig(), {"preset": "paper"}, seeds=seeds, jobs=jobs,
                                method="auto", overwrite=True, echo=lambda _: None)
        atomic_write_text(grid_dir / "table.txt", table + "\n")
    heads_dir = runs / "grid-heads"
    if (heads_dir / "summary.json").exists() and (heads_dir / "table.txt").exists():
        heads_table = (heads_dir / "table.txt").read_text()
    else:
        _, heads_table = grid_command(cache, heads_dir, runs, TrainConfig(),
                                      {"heads": "concat,gated,late,bottleneck,layers"}, seeds=min(seeds, 3),
                                      jobs=jobs, method="auto", overwrite=True, echo=lambda _: None,
                                      head_options={"bottleneck": DEMO_BOTTLENECK})
        atomic_write_text(heads_dir / "table.txt", heads_table + "\n")
    report = write_report(work, grid_dir, heads_dir, single, table, heads_table, arch, pretrained)
    echo(table)
    echo("\n" + heads_table)
    echo(f"\nplots: {grid_dir / 'preset_bars.png'}, {heads_dir / 'preset_bars.png'}, "
         f"{single / 'learning_curves.png'}, {single / 'confusion_matrix.png'}\nreport: {report}")
    return report


def write_report(work: Path, grid_dir: Path, heads_dir: Path, single: Path, table: str, heads_table: str, arch: str,
                 pretrained: bool) -> Path:
    metrics = json.loads((single / "metrics.json").read_text())
    weights = "pretrained checkpoints" if pretrained else f"**{arch} backbones with random weights**"
    text = f"""# alphafuse demo

Six generated classes, each a visual pattern with a sound; some differ only in the picture,
others only in the sound, so only a head that uses both can tell them all apart. Embeddings
from {weights}.

## The paper's experiments, {grid_dir.name}

```
{table}
```

![test accuracy per configuration]({(grid_dir / 'preset_bars.png').relative_to(work)})

## Fusion heads compared, {heads_dir.name}

The same seeds and test clips for every head: the paper's concatenation (`none`), learned
gates, late fusion of two heads' logits, MBT-style bottleneck attention over cached tokens
(a small one: {DEMO_BOTTLENECK}), and a weighted sum over cached layers.
"no video"/"no audio": test top-1 with that modality's input zeroed.

```
{heads_table}
```

![test accuracy per head]({(heads_dir / 'preset_bars.png').relative_to(work)})

## One head: neg_scalar on the AST embedding

Best epoch {metrics['best_epoch']}: test top-1 {metrics['test']['top1']:.3f}, top-5 {metrics['test']['top5']:.3f},
mAP {metrics['test']['map']:.3f}.

![learning curves]({(single / 'learning_curves.png').relative_to(work)})
![confusion matrix]({(single / 'confusion_matrix.png').relative_to(work)})
"""
    return atomic_write_text(work / "report.md", text)
