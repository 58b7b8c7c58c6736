"""alphafuse command line: a thin click layer over functions a notebook can call too.

Every option is built from the SETTINGS table of settings.py (which checks the config file
against the same table), choices come from the registries (backbones, transforms), and every
error a user can cause ends in one line naming the flag, key, file or clip; Ctrl-C exits 130.
"""
from __future__ import annotations

import signal
import sys

if __name__ in ("__main__", "__mp_main__") and not __package__:
    # `python cli.py ...` (or torchrun cli.py) from a checkout: this folder is the package
    # alphafuse, installed or not. Register it under that name and run the package's CLI, so the
    # command line is defined once (alphafuse.cli) and never imported twice under two names.
    import importlib.util
    from pathlib import Path as _Path

    _root = _Path(__file__).resolve().parent
    if "alphafuse" not in sys.modules:
        _spec = importlib.util.spec_from_file_location("alphafuse", _root / "__init__.py",
                                                       submodule_search_locations=[str(_root)])
        sys.modules["alphafuse"] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules["alphafuse"])
    if __name__ == "__main__":
        from alphafuse.cli import run as _run
        _run()
        sys.exit(0)

# The imports below take seconds (torch, the registries); Ctrl-C meanwhile exits 130 quietly,
# as it does later (run() puts Python's own handler back before any work starts).
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from alphafuse.settings import DEFAULT_CONFIG, SETTINGS, SettingError, Settings, flag  # noqa: E402

log = logging.getLogger("alphafuse")


def options(*names, **defaults):
    """Click options for these settings. Values default to None, so Settings can tell a flag from
    the config file; the help shows the real default."""
    def decorate(f):
        for name in reversed(names):
            s = SETTINGS[name]
            default = defaults.get(name, s.default)
            shown = f" Default: {','.join(map(str, default)) if isinstance(default, tuple) else default}." \
                if default is not None and default is not False else ""
            if s.kind == "bool":
                f = click.option(f"{flag(name)}/--no-{name.replace('_', '-')}", name, default=None,
                                 help=s.help + shown)(f)
            elif name == "splits":
                f = click.option("--split", "splits", multiple=True, help=s.help)(f)
            else:
                type_ = {"int": int, "float": float}.get(s.kind, str)
                if s.choices is not None and s.kind == "str":
                    type_ = click.Choice(list(s.choices))
                f = click.option(flag(name), name, type=type_, default=None, help=s.help + shown)(f)
        return f
    return decorate


def config_option(f):
    return click.option("--config", type=click.Path(dir_okay=False),
                        help=f"Config file (default: ./{DEFAULT_CONFIG} if present).")(f)


def settings(config, command: str) -> Settings:
    return Settings(SETTINGS, config, command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Log what is loaded, skipped and dropped; tracebacks on errors.")
def main(verbose):
    """alphafuse: fuse frozen video and audio encoders with small heads trained on cached embeddings.

    \b
    Stage 1, on a GPU box:  alphafuse extract --split train --device cuda
    Stage 2, on a laptop:   alphafuse fuse --transform neg_scalar --target ast
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# ----------------------------------------------------------------------------- extract

class _BackbonesEpilog(click.Command):
    """Lists the registered backbones, what they encode and their options, under --help."""

    def format_epilog(self, ctx, formatter):
        from alphafuse import catalogue

        rows = []
        for name, entry in catalogue.entries("backbone").items():
            options = ", ".join(f"{k}={v!r}" for k, v in entry.options.items())
            rows.append((name, f"{entry.modality}: {entry.help}. Options: {options}"))
        with formatter.section("Backbones (--video-backbone, --audio-backbone, --backbone; --backbone-opt KEY=VALUE)"):
            formatter.write_dl(rows)


@main.command(cls=_BackbonesEpilog)
@config_option
@options("manifest", "video_root", "cache_dir", "splits", "video_backbone", "audio_backbone", "backbone",
         "video_checkpoint", "audio_checkpoint", "checkpoint", "backbone_config", "trust_checkpoint", "arch", "seed", "spatial_crops",
         "temporal_views", "sampling",
         "tokens", "layers", "token_dtype", "batch_size", "workers", "precision", "limit", "shard", "device")
@click.option("--backbone-opt", "backbone_opts", multiple=True, metavar="[NAME.]KEY=VALUE",
              help="A backbone option, e.g. num_frames=16 or timesformer.attention_type=space_only (repeat).")
@click.option("--overwrite", is_flag=True, help="Discard an existing or partial cache of these splits.")
def extract(config, **flags):
    """Stage 1: embed every clip with the frozen backbones, into <cache-dir>/<split>.h5.

    Resumable: a run that is killed and started again skips what is done. Under
    `torchrun --nproc_per_node N cli.py extract ...` each process takes a disjoint shard and the
    last to finish merges them. Clips that cannot be read are recorded with the reason and skipped.
    """
    from alphafuse.extract.pipeline import run_extraction

    s = settings(config, "extract")
    run_extraction(s, flags, echo=click.echo)


# ----------------------------------------------------------------------------- fuse

class _HeadsEpilog(click.Command):
    """Lists the heads and the transforms under --help, from their registries."""

    def format_epilog(self, ctx, formatter):
        from alphafuse import catalogue

        with formatter.section("Heads (--head; --head-option KEY=VALUE sets one of its options)"):
            formatter.write_dl([(name, e.help) for name, e in catalogue.entries("head").items()])
        with formatter.section("Transforms (concat head: applied to --target before concatenation)"):
            formatter.write_dl(sorted(catalogue.transform_help().items()))


_HEAD_SETTINGS = ("transform", "target", "alpha", "modalities", "epochs", "batch_size", "lr", "hidden", "dropout",
                  "head", "modality_dropout", "patience")


def _train_config(s: Settings, flags: dict, **fixed):
    from alphafuse.fuse import TrainConfig
    from alphafuse.fuse.heads import parse_head_options

    values = {name: s.get(name, flags.get(name), SETTINGS[name].default) for name in _HEAD_SETTINGS}
    values.update(seed=s.get("seed", flags.get("seed")), **fixed)
    if flags.get("head_options"):
        values["head_options"] = parse_head_options(values["head"], flags["head_options"])
    return TrainConfig(**values)


def head_option(f):
    return click.option("--head-option", "head_options", multiple=True, metavar="KEY=VALUE",
                        help="An option of the --head, e.g. dim=128 for bottleneck (repeat).")(f)


def _device(name: str) -> str:
    from alphafuse.settings import resolve_device
    return str(resolve_device(name))


_CHOOSE = ("video_backbone", "audio_backbone", "backbone")
_CHOOSE_DEFAULTS = {"video_backbone": None, "audio_backbone": None}   # choosing: the folder's only store


def _chosen(s: Settings, flags: dict) -> dict:
    """The stores to combine: --video-backbone, --audio-backbone, --backbone (or the config's keys),
    never extraction's defaults (a role left unnamed takes the folder's only store)."""
    from alphafuse.fuse.commands import selection

    return selection(*(s.get(name, flags.pop(name, None), None) for name in _CHOOSE))


@main.command(cls=_HeadsEpilog)
@config_option
@options("cache_dir", *_CHOOSE, "out", *_HEAD_SETTINGS, "seed", "device", device="cpu", **_CHOOSE_DEFAULTS)
@head_option
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def fuse(config, out, cache_dir, device, overwrite, **flags):
    """Stage 2: train a fusion head on cached embeddings (seconds on a laptop).

    Writes a run directory: head.pt, metrics.json (val and test: top1, top5, map, loss,
    per_class, the learnable ceiling, top-1 with each modality missing), history.csv,
    learning_curves.png, confusion_matrix.png and config.json (what it ran with). The reported
    model is the best validation epoch; the last epoch's scores are reported beside it.
    """
    from alphafuse.fuse.commands import fuse_command

    s = settings(config, "fuse")
    chosen = _chosen(s, flags)
    cfg = _train_config(s, flags, device=_device(s.get("device", device, "cpu")))
    cache = Path(s.get("cache_dir", cache_dir))
    out_dir = s.get("out", out, None)
    fuse_command(cache, cfg, Path(out_dir) if out_dir else None, Path(s.get("run_dir")), overwrite, echo=click.echo,
                 chosen=chosen)


@main.command()
@config_option
@options("run", "backbone_logits", "backbone_labels", "split", "cache_dir", *_CHOOSE, "predictions", "which", "json",
         "vggsounder", "vggsounder_labels", **_CHOOSE_DEFAULTS)
def evaluate(config, **flags):
    """Re-score a saved head on a cached split (the stores it was trained on, unless named), or the
    backbone's own classifier (--backbone-logits).

    With --vggsounder, also on VGGSounder's labels of the split's VGGSound clips, written to
    <run>/vggsounder-<split>.json.
    """
    from alphafuse.fuse.commands import evaluate_backbone_command, evaluate_command

    s = settings(config, "evaluate")
    chosen = _chosen(s, flags)
    get = lambda name: s.get(name, flags.get(name), None)   # noqa: E731  (None unless given)
    split, as_json = s.get("split", flags["split"]), s.get("json", flags["json"])
    vggsounder, vggsounder_labels = s.get("vggsounder", flags["vggsounder"]), get("vggsounder_labels")
    if s.get("backbone_logits", flags["backbone_logits"]):
        if vggsounder:
            raise click.UsageError("--vggsounder scores a run's head (--run), not --backbone-logits")
        if get("cache_dir") is None:
            raise click.UsageError("--backbone-logits needs --cache-dir")
        evaluate_backbone_command(Path(get("cache_dir")), split, get("backbone_labels"), as_json, echo=click.echo,
                                  chosen=chosen)
        return
    if get("run") is None:
        raise click.UsageError("give --run (a run directory), or --backbone-logits with --cache-dir")
    if vggsounder_labels and not vggsounder:
        raise click.UsageError("--vggsounder-labels needs --vggsounder")
    evaluate_command(Path(get("run")), split, get("cache_dir"), get("predictions"), s.get("which", flags["which"]),
                     as_json, echo=click.echo, vggsounder=bool(vggsounder), vggsounder_labels=vggsounder_labels,
                     chosen=chosen)


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path())
@config_option
@options("run", "top_k", "video_checkpoint", "audio_checkpoint", "checkpoint", "trust_checkpoint", "device", "json")
def predict(videos, config, **flags):
    """Classify video files with a trained run: the backbones, the transform and the head."""
    from alphafuse.extract.checkpoint import trusted_checkpoints
    from alphafuse.fuse.commands import predict_command

    s = settings(config, "predict")
    checkpoints = {role: s.get(key, flags[key], None) for role, key in
                   (("video", "video_checkpoint"), ("audio", "audio_checkpoint"), ("audiovisual", "checkpoint"))}
    with trusted_checkpoints(s.get("trust_checkpoint", flags["trust_checkpoint"])):
        code = predict_command(videos, Path(s.get("run", flags["run"])), s.get("top_k", flags["top_k"]), checkpoints,
                               _device(s.get("device", flags["device"])), s.get("json", flags["json"]),
                               echo=click.echo)
    sys.exit(code)


# ----------------------------------------------------------------------------- grid

@main.command(cls=_HeadsEpilog)
@config_option
@options("cache_dir", *_CHOOSE, "out", "preset", "transforms", "targets", "alphas", "learned", "heads", "late_weights",
         "pairs", "seeds", "jobs", "method", "epochs", "batch_size", "lr", "hidden", "dropout", "modality_dropout",
         "patience", "vggsounder", "vggsounder_labels", **_CHOOSE_DEFAULTS)
@click.option("--head-option", "head_options", multiple=True, metavar="HEAD.KEY=VALUE",
              help="An option of one head of the grid, e.g. bottleneck.dim=64 (repeat).")
@click.option("--overwrite", is_flag=True, help="Replace an existing grid directory.")
def grid(config, cache_dir, out, overwrite, **flags):
    """Train many heads on one cache: the paper's experiments or alpha sweeps, over seeds.

    Writes results.csv (one row per configuration and seed), summary.csv/json (mean and 95%
    interval over seeds; test accuracy against the none baseline with a paired bootstrap
    interval over the same test clips; test top-1 with each modality missing; head-vs-head
    intervals; the learnable ceiling), predictions.npz, and a plot: accuracy against alpha per
    target, or a bar chart per configuration. With --vggsounder, VGGSounder hit@1 and modality
    confusion of each configuration on the test clips it annotates.
    """
    from alphafuse.fuse.commands import grid_command, per_head_options

    s = settings(config, "grid")
    chosen = _chosen(s, flags)
    sweep = {k: s.get(k, flags[k], None)
             for k in ("preset", "transforms", "targets", "alphas", "learned", "heads", "late_weights", "pairs")}
    if (sweep["transforms"] or sweep["alphas"] or sweep["heads"] or sweep["pairs"]) and not flags["preset"]:
        sweep["preset"] = None
    base = _train_config(s, {**flags, "head": None, "head_options": None}, device="cpu")
    cache = Path(s.get("cache_dir", cache_dir))
    out_dir = s.get("out", out, None)
    grid_command(cache, Path(out_dir) if out_dir else None, Path(s.get("run_dir")), base, sweep,
                 seeds=s.get("seeds", flags["seeds"]), jobs=s.get("jobs", flags["jobs"], None),
                 method=s.get("method", flags["method"]), overwrite=overwrite, echo=click.echo,
                 head_options=per_head_options(flags["head_options"]), chosen=chosen,
                 vggsounder=s.get("vggsounder", flags["vggsounder"]),
                 vggsounder_labels=s.get("vggsounder_labels", flags["vggsounder_labels"], None))


# ----------------------------------------------------------------------------- demo

@main.command()
@config_option
@options("workdir", "seeds", "clips_per_class", "jobs")
def demo(config, **flags):
    """The whole pipeline on a generated dataset, in a few minutes on a laptop CPU.

    Writes 6 classes of 4-s clips (each a visual pattern with a sound; some classes differ only
    in picture, others only in sound), a manifest and a config, extracts with the tiny
    random-weight backbones (or the checkpoints the config names), trains one head and runs
    the paper's grid, and writes report.md with the plots. Run again, it reuses what it made.
    """
    from alphafuse.fuse.demo import run_demo

    s = settings(config, "demo")
    run_demo(Path(s.get("workdir", flags["workdir"])).resolve(), s.get("seeds", flags["seeds"]),
             s.get("clips_per_class", flags["clips_per_class"]), s.get("jobs", flags["jobs"], None), echo=click.echo)


# ----------------------------------------------------------------------------- cache

@main.group()
def cache():
    """Inspect and merge HDF5 feature caches."""


@cache.command("info")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def cache_info(path, as_json):
    """Summarise a cache folder (every store: backbone, options, checkpoint, splits, clips, embeddings,
    short id) or one <split>.h5 (clips, embeddings and what each is, labels, errors, backbones)."""
    from alphafuse.cache.info import describe_folder, describe_split, format_folder, format_info

    if Path(path).is_dir():
        info = describe_folder(path)
        click.echo(json.dumps(info, indent=2, default=str) if as_json else format_folder(info))
        return
    info = describe_split(path)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_info(info))


@cache.command("merge")
@config_option
@options("cache_dir")
@click.option("--split", required=True, help="The split whose shards to merge.")
@click.option("--store", help="Only this store (backbone name or short id). Default: every store with parts of the split.")
def cache_merge(config, cache_dir, split, store):
    """Merge the parts of a sharded extraction into each store's <split>.h5 (when no shard did it)."""
    from alphafuse.cache import merge_split

    s = settings(config, "cache")
    for path in merge_split(s.get("cache_dir", cache_dir), split, store):
        click.echo(f"merged into {path}")


# ----------------------------------------------------------------------------- errors

def _hint(exc: BaseException) -> str:
    """Library errors name settings in words; the command line names the flag."""
    hint = getattr(exc, "hint", None)
    return f" ({flag(hint)})" if hint else ""


def _user_errors() -> tuple[type, ...]:
    """The exceptions a user's input can cause, said in one line. Most are ValueError or OSError
    (CacheError, CheckpointError, SettingError, WriteError); ClipError counts once its module is
    loaded (it cannot be raised before), so a command's --help imports none of them."""
    errors = sys.modules.get("alphafuse.data.errors")
    return (ValueError, OSError) + ((errors.ClipError,) if errors else ())


def run() -> None:
    """The console entry point: one line per error a user can cause, exit 130 on Ctrl-C."""
    verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main(standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt) as exc:
        if isinstance(exc.__context__, EOFError) and not verbose:   # click turns EOFError into Abort
            click.echo(f"Error: a file ended early ({' '.join(str(exc.__context__).split()) or 'EOFError'})", err=True)
            sys.exit(1)
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if verbose or not isinstance(exc, _user_errors()):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        atomic = sys.modules.get("alphafuse.data.atomic")
        if isinstance(exc, OSError) and not (atomic and isinstance(exc, atomic.WriteError)) and exc.filename:
            from alphafuse.data.atomic import describe_os_error
            message = f"{exc.filename}: {describe_os_error(exc)}"
        click.echo(f"Error: {message}{_hint(exc)}", err=True)
        sys.exit(2 if isinstance(exc, SettingError) else 1)   # 2: a usage mistake, as click's own


if __name__ == "__main__":
    run()
