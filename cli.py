"""alphafuse command line: a thin click layer over functions a notebook can call too.

Settings come from command-line flags, else from the config file (``--config PATH``, or
``alphafuse.toml`` in the working directory): first the table named after the command
(``[extract]``, ``[fuse]``, ...), then the top level. Paths in the config are relative to it.
"""
from __future__ import annotations

import json
import logging
import sys
import tomllib
from pathlib import Path

import click

log = logging.getLogger("alphafuse")
DEFAULT_CONFIG = "alphafuse.toml"
REQUIRED = object()


class Settings:
    """Flag > [command] table > top level of the config file > default."""

    def __init__(self, config: str | None, command: str):
        self.command = command
        self.path = Path(config) if config else Path(DEFAULT_CONFIG)
        self.values: dict = {}
        if config and not self.path.is_file():
            raise click.UsageError(f"config file {self.path} not found")
        if self.path.is_file():
            try:
                data = tomllib.loads(self.path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise click.UsageError(f"{self.path}: not valid TOML ({exc})") from exc
            self.values = {k: v for k, v in data.items() if not isinstance(v, dict)}
            self.values.update(data.get(command, {}))

    def get(self, key: str, flag=None, default=REQUIRED, path: bool = False):
        if flag is not None:
            return flag
        if key in self.values:
            value = self.values[key]
            return str((self.path.parent / value).resolve()) if path and value is not None else value
        if default is REQUIRED:
            where = f"set `{key}` in {self.path}" if self.path.is_file() else f"put `{key} = ...` in {DEFAULT_CONFIG}"
            raise click.UsageError(f"no {key}: pass --{key.replace('_', '-')} or {where}")
        return default


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log what is loaded, skipped and dropped.")
def main(verbose):
    """alphafuse: fuse frozen TimeSformer (video) and AST (audio) embeddings with a scaled-concat head.

    \b
    Stage 1, on a GPU box:  alphafuse extract --split train --device cuda
    Stage 2, on a laptop:   alphafuse fuse --transform neg_scalar --target ast
    """
    _setup_logging(verbose)


# ----------------------------------------------------------------------------- extract

@main.command()
@click.option("--config", type=click.Path(dir_okay=False), help=f"Config file (default: ./{DEFAULT_CONFIG} if present).")
@click.option("--manifest", help="CSV `path,label,split`, official VGGSound CSV (with --video-root), or a folder per class.")
@click.option("--video-root", help="Folder of the clips named by a VGGSound CSV ({id}_{start:06d}.mp4).")
@click.option("--cache-dir", help="Where <split>.h5 files are written.")
@click.option("--split", "splits", multiple=True, help="Split(s) to extract; repeat the flag. Default: every split.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="Default: auto (cuda when available).")
@click.option("--video-checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="TimeSformer .pyth (e.g. TimeSformer_divST_8x32_224_K400.pyth). None: random weights.")
@click.option("--audio-checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="AST audioset_10_10_0.4593.pth. None: random weights.")
@click.option("--arch", type=click.Choice(["base", "tiny"]), help="Backbone size; tiny is for tests and CPU demos. Default: base.")
@click.option("--attention-type", type=click.Choice(["divided_space_time", "space_only", "joint_space_time"]),
              help="TimeSformer variant; must match the checkpoint. Default: divided_space_time.")
@click.option("--num-frames", type=int, help="Frames sampled uniformly per clip. Default: 8.")
@click.option("--spatial-crops", type=click.Choice(["1", "3"]), help="3: left/centre/right views, embeddings averaged. Default: 1.")
@click.option("--batch-size", type=int, help="Clips per batch. Default: 8.")
@click.option("--workers", type=int, help="DataLoader decoding processes. Default: 2.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="Autocast precision of the backbones. Default: fp32.")
@click.option("--limit", type=int, help="Only the first N clips of each split.")
@click.option("--shard", help="K/N: extract the K-th of N disjoint shards (0-based). Set by torchrun.")
@click.option("--seed", type=int, help="Seed of random backbone weights (when no checkpoint). Default: 0.")
@click.option("--overwrite", is_flag=True, help="Discard an existing or partial cache of these splits.")
def extract(config, manifest, video_root, cache_dir, splits, device, video_checkpoint, audio_checkpoint, arch,
            attention_type, num_frames, spatial_crops, batch_size, workers, precision, limit, shard, seed, overwrite):
    """Stage 1: embed every clip with the frozen TimeSformer and AST, into <cache-dir>/<split>.h5.

    Resumable: a run that is killed and started again skips what is done. Under
    `torchrun --nproc_per_node N cli.py extract ...` each process takes a disjoint shard and the
    last to finish merges them. Clips that cannot be read are recorded with the reason and skipped.
    """
    from data import read_manifest
    from extract import load_ast, load_timesformer
    from extract.runner import extract_split, shard_from_env

    s = Settings(config, "extract")
    manifest_obj = _read_manifest(read_manifest, s.get("manifest", manifest, path=True),
                                  s.get("video_root", video_root, None, path=True))
    cache = Path(s.get("cache_dir", cache_dir, path=True))
    wanted = list(splits) or s.get("splits", None, None) or manifest_obj.splits
    shard_k, shard_n = _parse_shard(shard) if shard else shard_from_env()
    dev = s.get("device", device, "auto")
    if dev == "cuda" and shard_n > 1:
        import os
        dev = f"cuda:{os.environ.get('LOCAL_RANK', shard_k)}"
    arch_ = s.get("arch", arch, "base")
    seed_ = s.get("seed", seed, 0)
    try:
        video_model = load_timesformer(s.get("video_checkpoint", video_checkpoint, None, path=True),
                                       num_frames=s.get("num_frames", num_frames, 8), arch=arch_, seed=seed_,
                                       attention_type=s.get("attention_type", attention_type, "divided_space_time"))
        audio_model = load_ast(s.get("audio_checkpoint", audio_checkpoint, None, path=True), arch=arch_, seed=seed_)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc

    for split in wanted:
        summary = _extract_one(extract_split, manifest_obj, split, cache, video_model, audio_model, dev, s,
                               batch_size, workers, precision, spatial_crops, limit, overwrite, (shard_k, shard_n))
        _print_summary(summary)
        if summary.interrupted:
            sys.exit(130)


def _read_manifest(read_manifest, manifest, video_root):
    try:
        return read_manifest(manifest, video_root=video_root)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected K/N such as 0/4, got {text!r}", param_hint="--shard") from None
    if not 0 <= k < n:
        raise click.BadParameter(f"K must be in 0..N-1, got {text}", param_hint="--shard")
    return k, n


def _extract_one(extract_split, manifest, split, cache, video_model, audio_model, device, s, batch_size, workers,
                 precision, spatial_crops, limit, overwrite, shard):
    from cache import CacheError

    try:
        total = len(manifest.split(split)[:limit] if limit else manifest.split(split))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    label = f"{split:>6}"
    with click.progressbar(length=max(1, -(-total // shard[1])), label=label, show_pos=True, file=sys.stderr,
                           item_show_func=lambda info: info) as bar:
        def on_batch(n, summary):
            bar.update(n, f"{summary.clips_per_s:5.1f} clips/s, {len(summary.failed)} failed")
        try:
            summary = extract_split(
                manifest, split, cache, video_model, audio_model,
                batch_size=s.get("batch_size", batch_size, 8), workers=s.get("workers", workers, 2),
                device=device, precision=s.get("precision", precision, "fp32"),
                spatial_crops=int(s.get("spatial_crops", spatial_crops, 1)), limit=s.get("limit", limit, None),
                overwrite=overwrite, shard=shard, on_batch=on_batch)
        except (CacheError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
    return summary


def _print_summary(s) -> None:
    done = s.written + len(s.failed)
    busy = s.data_wait_s + s.model_s
    share = f"{100 * s.data_wait_s / busy:.0f}% waiting for decoding, {100 * s.model_s / busy:.0f}% in the models" \
        if busy > 0 else "nothing to do"
    click.echo(f"{s.split}: {s.written} clips written, {len(s.failed)} failed, {s.without_audio} without audio, "
               f"{s.skipped} already done; {done} clips in {s.wall_s:.1f} s ({s.clips_per_s:.2f} clips/s; {share})")
    for clip_id, reason in s.failed[:20]:
        click.echo(f"  failed {clip_id}: {reason}")
    if len(s.failed) > 20:
        click.echo(f"  ... and {len(s.failed) - 20} more (all recorded in the cache's errors)")
    if s.interrupted:
        click.echo(f"{s.split}: interrupted; run the same command again to resume")
    elif s.cache_path:
        click.echo(f"{s.split}: cache {s.cache_path}")
    else:
        click.echo(f"{s.split}: this shard is done; the last shard to finish writes the merged file")


# ----------------------------------------------------------------------------- fuse

class _TransformsEpilog(click.Command):
    """Lists the transforms under --help, importing fuse/ (and torch) only when help is shown."""

    def format_epilog(self, ctx, formatter):
        from fuse.transforms import TRANSFORM_HELP

        with formatter.section("Transforms (applied to --target before concatenation)"):
            formatter.write_dl(sorted(TRANSFORM_HELP.items()))


def _optional_split(cache_dir: Path, name: str):
    from cache import read_split

    path = cache_dir / f"{name}.h5"
    if not path.exists():
        log.warning("%s not found: training without a %s split", path, name)
        return None
    return read_split(path)


def _train_config(s: Settings, transform, target, alpha, modalities, epochs, batch_size, lr, seed, hidden,
                  dropout, device):
    from fuse import TrainConfig

    hidden_ = s.get("hidden", hidden, (1024, 512))
    if isinstance(hidden_, str):
        hidden_ = tuple(int(h) for h in hidden_.split(",") if h.strip())
    try:
        return TrainConfig(
            transform=s.get("transform", transform, "none"), target=s.get("target", target, "audio"),
            alpha=s.get("alpha", alpha, None), modalities=s.get("modalities", modalities, "both"),
            hidden=tuple(hidden_), dropout=s.get("dropout", dropout, 0.5), epochs=s.get("epochs", epochs, 25),
            batch_size=s.get("batch_size", batch_size, 8), lr=s.get("lr", lr, 1e-4), seed=s.get("seed", seed, 0),
            device=_device(s.get("device", device, "cpu")))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _device(name: str) -> str:
    if name == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _training_options(f):
    options = [
        click.option("--transform", type=click.Choice(["none", "sqrt", "pos_scalar", "neg_scalar", "scale", "learned"]),
                     help="How the target modality's embedding is transformed. Default: none."),
        click.option("--target", type=click.Choice(["timesformer", "ast", "video", "audio"]),
                     help="Which modality the transform applies to (timesformer=video, ast=audio). Default: audio."),
        click.option("--alpha", type=float, help="Scale for pos_scalar (> 1, default 1.5), neg_scalar (0..1, "
                                                 "default 0.75) or scale (> 0, required)."),
        click.option("--modalities", type=click.Choice(["both", "video", "audio"]),
                     help="both, or a unimodal baseline head. Default: both."),
        click.option("--epochs", type=int, help="Default: 25."),
        click.option("--batch-size", type=int, help="Default: 8 (the paper's)."),
        click.option("--lr", type=float, help="Adam learning rate. Default: 1e-4."),
        click.option("--hidden", help="Hidden layer sizes, comma-separated. Default: 1024,512."),
        click.option("--dropout", type=float, help="Default: 0.5."),
        click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="Default: cpu (the head is small)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command(cls=_TransformsEpilog)
@click.option("--config", type=click.Path(dir_okay=False), help=f"Config file (default: ./{DEFAULT_CONFIG} if present).")
@click.option("--cache-dir", help="Folder with train.h5 (required), val.h5 and test.h5.")
@click.option("--out", help="Run directory. Default: <run_dir>/<transform>-<target>[-<alpha>]-seed<seed>.")
@_training_options
@click.option("--seed", type=int, help="Seeds weights, dropout and clip order: same seed, same numbers. Default: 0.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def fuse(config, cache_dir, out, transform, target, alpha, modalities, epochs, batch_size, lr, hidden, dropout,
         device, seed, overwrite):
    """Stage 2: train the alpha-transformer's head on cached embeddings (seconds on a laptop).

    Writes a run directory: head.pt, metrics.json (val and test: top1, top5, map, loss,
    per_class), history.csv, learning_curves.png and confusion_matrix.png. The reported model is
    the best validation epoch; the last epoch's scores are reported beside it.
    """
    from cache import CacheError, read_split
    from fuse import fuse_run

    s = Settings(config, "fuse")
    cfg = _train_config(s, transform, target, alpha, modalities, epochs, batch_size, lr, seed, hidden, dropout, device)
    cache = Path(s.get("cache_dir", cache_dir, path=True))
    out_dir = Path(out or s.get("out", None, None, path=True) or Path(s.get("run_dir", None, "runs", path=True)) /
                   _run_name(cfg))
    try:
        train = read_split(cache / "train.h5")
        metrics = fuse_run(train, _optional_split(cache, "val"), _optional_split(cache, "test"), cfg, out_dir,
                           overwrite=overwrite)
    except (CacheError, ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    _print_run(metrics, out_dir)


def _run_name(cfg) -> str:
    parts = [cfg.transform if cfg.modalities == "both" else f"{cfg.modalities}-only"]
    if cfg.transform != "none":
        parts.append(cfg.target)
    if cfg.alpha is not None:
        parts.append(f"{cfg.alpha:g}")
    return "-".join(parts) + f"-seed{cfg.seed}"


def _print_run(metrics: dict, out_dir: Path) -> None:
    click.echo(f"best epoch {metrics['best_epoch']} of {metrics['epochs']} "
               f"(trained in {metrics['train_seconds']:.2f} s)")
    for name in ("val", "test"):
        best, last = metrics.get(name), (metrics.get("last") or {}).get(name)
        if best:
            click.echo(f"  {name:>4}: top1 {best['top1']:.3f}  top5 {best['top5']:.3f}  mAP {best['map']:.3f}  "
                       f"loss {best['loss']:.3f}   (last epoch: top1 {last['top1']:.3f})")
    for name, unseen in (metrics.get("unseen_in_train") or {}).items():
        if unseen:
            click.echo(f"  {name}: {len(unseen)} class(es) never seen in training: {', '.join(unseen[:5])}")
    click.echo(f"run written to {out_dir}/ (metrics.json, history.csv, learning_curves.png, confusion_matrix.png)")


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="A run directory.")
@click.option("--split", default="test", show_default=True, help="Split to score.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Default: where the run's training cache was.")
@click.option("--predictions", type=click.Path(dir_okay=False), help="Write clip_id, label, predicted and class probabilities as CSV.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True, help="Which saved epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(run_dir, split, cache_dir, predictions, which, as_json):
    """Re-score a saved head on a cached split."""
    from cache import CacheError, read_split
    from fuse import evaluate_run, load_run

    try:
        if cache_dir is None:
            _, meta = load_run(run_dir)
            recorded = (meta.get("cache_paths") or {}).get("train")
            if not recorded:
                raise click.UsageError("the run does not record its cache: pass --cache-dir")
            cache_dir = Path(recorded).parent
        metrics = evaluate_run(run_dir, read_split(Path(cache_dir) / f"{split}.h5"), predictions, which=which)
    except (CacheError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    click.echo(f"{split}: top1 {metrics['top1']:.3f}  top5 {metrics['top5']:.3f}  mAP {metrics['map']:.3f}  "
               f"loss {metrics['loss']:.3f}  ({metrics['num_clips']} clips)")
    if predictions:
        click.echo(f"predictions written to {predictions}")


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="A run directory.")
@click.option("--top-k", default=5, show_default=True, help="How many labels to show per video.")
@click.option("--video-checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="The TimeSformer checkpoint, if not where extraction read it (its sha256 must match).")
@click.option("--audio-checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="The AST checkpoint, if not where extraction read it (its sha256 must match).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(videos, run_dir, top_k, video_checkpoint, audio_checkpoint, device, as_json):
    """Classify video files with a trained run: both backbones, the transform and the head."""
    from extract import CheckpointError
    from fuse.model import AlphaTransformer

    try:
        model = AlphaTransformer.from_run(run_dir, video_checkpoint, audio_checkpoint, device=_device(device))
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    results = model.predict_files(videos, top_k)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                click.echo(f"{r['path']}: ERROR {r['error']}")
                continue
            click.echo(f"{r['path']}" + ("" if r["has_audio"] else " (no audio stream)"))
            for t in r["top"]:
                click.echo(f"  {t['probability']:6.1%}  {t['label']}")
    if any("error" in r for r in results):
        sys.exit(1)


# ----------------------------------------------------------------------------- grid

@main.command(cls=_TransformsEpilog)
@click.option("--config", type=click.Path(dir_okay=False), help=f"Config file (default: ./{DEFAULT_CONFIG} if present).")
@click.option("--cache-dir", help="Folder with train.h5, val.h5 and test.h5.")
@click.option("--out", help="Grid directory. Default: <run_dir>/grid-<preset or transforms>.")
@click.option("--preset", type=click.Choice(["paper"]),
              help="paper: Table 1 (sqrt, pos_scalar, neg_scalar on TimeSformer and on AST), the none baseline "
                   "and the two unimodal heads.")
@click.option("--transform", "transforms", help="Sweep: transform(s), comma-separated (e.g. scale or pos_scalar,neg_scalar).")
@click.option("--targets", help="Sweep: timesformer,ast (aliases video,audio). Default: both.")
@click.option("--alphas", help="Sweep: START:STOP:STEP (inclusive) or a comma list, e.g. 0.25:3.0:0.25.")
@click.option("--learned/--no-learned", default=None,
              help="Also train the learned-alpha head per target (default: on for sweeps, off for the preset).")
@click.option("--seeds", type=int, help="Seeds per configuration. Default: 5.")
@click.option("--jobs", type=int, help="Worker processes (one thread each). Default: one per core.")
@click.option("--method", type=click.Choice(["auto", "joblib", "vectorized"]),
              help="joblib: one head per task; vectorized: stacked heads in batched matmuls; auto: the faster. "
                   "Both give the numbers of single fuse runs.")
@click.option("--epochs", type=int, help="Default: 25.")
@click.option("--batch-size", type=int, help="Default: 8.")
@click.option("--lr", type=float, help="Default: 1e-4.")
@click.option("--hidden", help="Hidden layer sizes, comma-separated. Default: 1024,512.")
@click.option("--dropout", type=float, help="Default: 0.5.")
@click.option("--overwrite", is_flag=True, help="Replace an existing grid directory.")
def grid(config, cache_dir, out, preset, transforms, targets, alphas, learned, seeds, jobs, method, epochs,
         batch_size, lr, hidden, dropout, overwrite):
    """Train many heads on one cache: the paper's experiments or alpha sweeps, over seeds.

    Writes results.csv (one row per configuration and seed), summary.csv/json (mean and 95%
    interval over seeds; test accuracy against the none baseline with a paired bootstrap
    interval over the same test clips), predictions.npz, and a plot: accuracy against alpha
    per target, or a bar chart for the preset.
    """
    s = Settings(config, "grid")
    if not preset and not transforms and not alphas:
        preset = s.get("preset", None, None)
    base = _train_config(s, None, None, None, None, epochs, batch_size, lr, None, hidden, dropout, "cpu")
    cache = Path(s.get("cache_dir", cache_dir, path=True))
    name = f"grid-{preset}" if preset else "grid-" + (transforms or "scale").replace(",", "+")
    out_dir = Path(out or Path(s.get("run_dir", None, "runs", path=True)) / name)
    result = run_grid_command(cache, out_dir, base, preset=preset, transforms=transforms, targets=targets,
                              alphas=alphas, learned=learned, seeds=s.get("seeds", seeds, 5),
                              jobs=s.get("jobs", jobs, None), method=s.get("method", method, "auto"),
                              overwrite=overwrite)
    _print_grid(result, out_dir)


def run_grid_command(cache: Path, out_dir: Path, base, *, preset=None, transforms=None, targets=None, alphas=None,
                     learned=None, seeds=5, jobs=None, method="auto", overwrite=False):
    from cache import CacheError, read_split
    from fuse.grid import configs_from_options, run_grid

    try:
        configs = configs_from_options(preset, transforms, targets, alphas, seeds, base, learned)
        train, test = read_split(cache / "train.h5"), read_split(cache / "test.h5")
        val = _optional_split(cache, "val")
        with click.progressbar(length=len(configs), label="  grid", show_pos=True, file=sys.stderr,
                               item_show_func=lambda text: text) as bar:
            def progress(done, total, row):
                bar.update(1, f"test top-1 {row['test_top1']:.2f}")
            return run_grid(train, val, test, configs, out_dir, jobs=jobs, method=method, progress=progress,
                            overwrite=overwrite)
    except (CacheError, ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc


def _print_grid(result, out_dir: Path) -> None:
    from fuse.grid import format_summary_table

    click.echo(format_summary_table(result.summary, len(result.test_labels)))
    click.echo(f"{len(result.rows)} heads trained in {result.seconds:.1f} s ({result.method}, {result.jobs} job(s)); "
               f"written to {out_dir}/: " + ", ".join(sorted(p.name for p in result.files.values())))


# ----------------------------------------------------------------------------- demo

@main.command()
@click.option("--workdir", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the dataset, config, caches, runs and report go.")
@click.option("--seeds", default=5, show_default=True, help="Seeds per configuration in the grid.")
@click.option("--clips-per-class", default=24, show_default=True, help="Generated clips per class (6 classes).")
@click.option("--jobs", type=int, help="Worker processes for the grid. Default: one per core.")
def demo(workdir, seeds, clips_per_class, jobs):
    """The whole pipeline on a generated dataset, in a few minutes on a laptop CPU.

    Writes 6 classes of 4-s clips (each a visual pattern with a sound; some classes differ only
    in picture, others only in sound), a manifest and a config, extracts with the tiny
    random-weight backbones (or the checkpoints the config names), trains one head and runs
    the paper's grid, and writes report.md with the plots. Run again, it reuses what it made.
    """
    from cache import read_split, split_path
    from data import read_manifest
    from data.demo import CLASSES, make_demo_dataset
    from extract import load_ast, load_timesformer
    from extract.runner import extract_split
    from fuse import TrainConfig, fuse_run
    from fuse.grid import format_summary_table

    work = Path(workdir).resolve()
    total = len(CLASSES) * clips_per_class
    with click.progressbar(length=total, label="  clips", show_pos=True, file=sys.stderr) as bar:
        make_demo_dataset(work / "data", clips_per_class=clips_per_class, progress=bar.update)
    config_path = work / DEFAULT_CONFIG
    if not config_path.exists():
        config_path.write_text(_DEMO_CONFIG)
    s = Settings(str(config_path), "extract")
    video_ckpt, audio_ckpt = s.get("video_checkpoint", None, None, path=True), s.get("audio_checkpoint", None, None, path=True)
    arch = s.get("arch", None, "base" if video_ckpt or audio_ckpt else "tiny")
    if not (video_ckpt and audio_ckpt):
        click.echo(f"demo: {arch} backbones with RANDOM weights (no checkpoints in {config_path}): the numbers "
                   f"show the pipeline working, not pretrained features", err=True)
    manifest = read_manifest(s.get("manifest", None, path=True))
    cache = Path(s.get("cache_dir", None, path=True))
    video_model = load_timesformer(video_ckpt, arch=arch)
    audio_model = load_ast(audio_ckpt, arch=arch)
    for split in manifest.splits:
        if not split_path(cache, split).exists():
            summary = _extract_one(extract_split, manifest, split, cache, video_model, audio_model, "auto", s,
                                   None, None, None, None, None, False, (0, 1))
            _print_summary(summary)

    runs = Path(s.get("run_dir", None, path=True))
    splits = {name: read_split(split_path(cache, name)) for name in ("train", "val", "test")}
    single = runs / "neg_scalar-audio"
    if not (single / "metrics.json").exists():
        fuse_run(splits["train"], splits["val"], splits["test"], TrainConfig(transform="neg_scalar", target="ast"),
                 single, overwrite=True)
    grid_dir = runs / "grid-paper"
    if (grid_dir / "summary.json").exists():
        click.echo(f"demo: reusing the finished grid in {grid_dir} (delete it to run again)", err=True)
        table = (grid_dir / "table.txt").read_text()
    else:
        result = run_grid_command(cache, grid_dir, TrainConfig(), preset="paper", seeds=seeds, jobs=jobs,
                                  overwrite=True)
        table = format_summary_table(result.summary, len(result.test_labels))
        (grid_dir / "table.txt").write_text(table + "\n")
    report = _write_demo_report(work, grid_dir, single, table, arch, bool(video_ckpt and audio_ckpt))
    click.echo(table)
    click.echo(f"\nplots: {grid_dir / 'preset_bars.png'}, {single / 'learning_curves.png'}, "
               f"{single / 'confusion_matrix.png'}\nreport: {report}")


_DEMO_CONFIG = """# Written by `alphafuse demo`. Name real checkpoints here to run the demo with them:
# video_checkpoint = "TimeSformer_divST_8x32_224_K400.pyth"
# audio_checkpoint = "audioset_10_10_0.4593.pth"
manifest = "data/manifest.csv"
cache_dir = "cache"
run_dir = "runs"

[extract]
workers = 2
batch_size = 8
"""


def _write_demo_report(work: Path, grid_dir: Path, single: Path, table: str, arch: str, pretrained: bool) -> Path:
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

## One head: neg_scalar on the AST embedding

Best epoch {metrics['best_epoch']}: test top-1 {metrics['test']['top1']:.3f}, top-5 {metrics['test']['top5']:.3f},
mAP {metrics['test']['map']:.3f}.

![learning curves]({(single / 'learning_curves.png').relative_to(work)})
![confusion matrix]({(single / 'confusion_matrix.png').relative_to(work)})
"""
    path = work / "report.md"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- cache

@main.group()
def cache():
    """Inspect and merge HDF5 feature caches."""


@cache.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def cache_info(path, as_json):
    """Summarise one <split>.h5: clips, dims, labels, errors, backbones, preprocessing."""
    from cache import CacheError, read_split

    try:
        f = read_split(path)
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc
    info = {
        "path": str(path), "split": f.split, "clips": len(f), "video_dim": int(f.video.shape[1]),
        "audio_dim": int(f.audio.shape[1]), "classes": f.num_classes,
        "classes_present": int(len(set(f.labels.tolist()))), "without_audio": int((~f.has_audio).sum()),
        "errors": len(f.errors), "backbones": f.backbones, "preprocessing": f.preprocessing, **f.attrs,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"{path}: split {f.split!r}, {len(f)} clips, {info['errors']} errors, "
               f"{info['without_audio']} without audio")
    click.echo(f"  embeddings: video {info['video_dim']}-d, audio {info['audio_dim']}-d; "
               f"{f.num_classes} classes ({info['classes_present']} present)")
    for name, b in f.backbones.items():
        cfg = b.get("config", {})
        weights = "pretrained" if b.get("pretrained") else f"RANDOM weights, seed {b.get('seed')}"
        click.echo(f"  {name}: {cfg.get('model')} {cfg.get('arch')}, {weights}, {b.get('fingerprint', '')[:23]}")
    click.echo(f"  preprocessing: {json.dumps(f.preprocessing, sort_keys=True)}")
    click.echo(f"  created {f.attrs.get('created')} by alphafuse {f.attrs.get('tool_version')}")
    for clip_id, reason in f.errors[:10]:
        click.echo(f"  error {clip_id}: {reason}")


@cache.command("merge")
@click.option("--config", type=click.Path(dir_okay=False))
@click.option("--cache-dir", help="Folder holding <split>.parts/.")
@click.option("--split", required=True, help="The split whose shards to merge.")
def cache_merge(config, cache_dir, split):
    """Merge the parts of a sharded extraction into <split>.h5 (when no shard did it)."""
    from cache import CacheError, merge_parts

    s = Settings(config, "extract")
    try:
        path = merge_parts(s.get("cache_dir", cache_dir, path=True), split)
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"merged into {path}")


if __name__ == "__main__":
    main()
