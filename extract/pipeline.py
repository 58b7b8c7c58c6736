"""What the extract command does: backbones from settings, every split, progress and a summary.

Separate from runner.py (one split, no settings) so that a notebook can call either.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from alphafuse.settings import SettingError, flag

from .checkpoint import trusted_checkpoints
from .registry import backbone_names, create_backbone, get_backbone, parse_option
from .embed import Roles
from .runner import ExtractConfig, ExtractionSummary, extract_split, shard_from_env


def parse_backbone_opts(items, selected: list[str]) -> dict[str, dict]:
    """``[NAME.]KEY=VALUE`` strings -> {backbone name: {key: typed value}} for the selected backbones.

    Without NAME a key goes to every selected backbone that has that option; a key that none of
    them has is an error naming their options.
    """
    out: dict[str, dict] = {name: {} for name in selected}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"backbone option {item!r} must be KEY=VALUE or NAME.KEY=VALUE")
        name, dot, key = key.strip().rpartition(".")
        targets = [name] if dot else [n for n in selected if key in get_backbone(n).options]
        if dot and name not in selected:
            raise ValueError(f"backbone option {item!r} names {name}, which this extraction does not use "
                             f"({', '.join(selected)})")
        if not targets:
            known = "; ".join(f"{n}: {', '.join(get_backbone(n).options)}" for n in selected)
            raise ValueError(f"no selected backbone has an option {key!r} ({known})")
        for target in targets:
            out[target][key] = parse_option(target, key, value.strip())
    return out


def _config_opts(table: dict, selected: list[str]) -> dict[str, dict]:
    """The config file's [backbones] table: scalar keys for any selected backbone that has them,
    [backbones.NAME] sub-tables for one."""
    out: dict[str, dict] = {name: {} for name in selected}
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in backbone_names():
                raise ValueError(f"[backbones.{key}]: no backbone is called {key!r} ({', '.join(backbone_names())})")
            if key in out:
                out[key].update(value)
            continue
        targets = [n for n in selected if key in get_backbone(n).options]
        if not targets:
            raise ValueError(f"[backbones] {key}: no selected backbone ({', '.join(selected)}) has this option")
        for target in targets:
            out[target][key] = value
    return out


def _family_config(path, selected: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {name: {} for name in selected}
    if path:
        readers = [n for n in selected if get_backbone(n).config_reader is not None]
        if not readers:
            raise ValueError(f"backbone config {path}: none of {', '.join(selected)} reads a config file of its "
                             f"own (tsam does)")
        for name in readers:
            out[name] = get_backbone(name).config_reader(path)
    return out


def backbones_from_settings(s, flags: dict) -> Roles:
    """The backbones the settings ask for: --backbone, or --video-backbone and --audio-backbone."""
    av = s.get("backbone", flags.get("backbone"), None)
    if av:
        wanted = {"audiovisual": (av, s.get("checkpoint", flags.get("checkpoint"), None))}
    else:
        wanted = {"video": (s.get("video_backbone", flags.get("video_backbone")),
                            s.get("video_checkpoint", flags.get("video_checkpoint"), None)),
                  "audio": (s.get("audio_backbone", flags.get("audio_backbone")),
                            s.get("audio_checkpoint", flags.get("audio_checkpoint"), None))}
    selected = [name for name, _ in wanted.values()]
    for role, (name, _) in wanted.items():
        known = backbone_names(role)
        if name not in known:
            setting = {"video": "video_backbone", "audio": "audio_backbone", "audiovisual": "backbone"}[role]
            raise SettingError(f"{flag(setting)} must be one of {', '.join(known)} (the registered backbones that "
                               f"encode {role}), got {name!r}")
        if not get_backbone(name).can_encode(role):
            raise ValueError(f"backbone {name} does not encode {role} (it is {get_backbone(name).modality})")
    # Later layers win: the config file's arch and seed, the family's own config file (TSAM's
    # JSON), the [backbones] table, then the command line's --arch, --seed and --backbone-opt.
    layers = [{name: {"arch": s.get("arch"), "seed": s.get("seed")} for name in selected},
              _family_config(s.get("backbone_config", flags.get("backbone_config"), None), selected),
              _config_opts(s.backbone_options, selected),
              {name: {k: flags[k] for k in ("arch", "seed") if flags.get(k) is not None} for name in selected},
              parse_backbone_opts(flags.get("backbone_opts") or (), selected)]
    trust = s.get("trust_checkpoint", flags.get("trust_checkpoint"))
    models = {}
    with trusted_checkpoints(trust):
        for role, (name, checkpoint) in wanted.items():
            known = get_backbone(name).options
            options = {}
            for i, layer in enumerate(layers):
                # arch and seed (layers 0 and 3) go to the backbones that have them (hf has neither);
                # an option named for this backbone (family config, table, --backbone-opt) always goes.
                options.update({k: v for k, v in layer[name].items() if k in known or i not in (0, 3)})
            models[role] = create_backbone(name, checkpoint, **options)
    return Roles(models)


def run_extraction(s, flags: dict, echo: Callable[[str], None] = print) -> list[ExtractionSummary]:
    """Extract every requested split with the backbones the settings name; print a summary each.

    Exits with 130 (after the batch in hand is written) when interrupted.
    """
    from alphafuse.data import read_manifest

    manifest = read_manifest(s.get("manifest", flags.get("manifest")),
                             video_root=s.get("video_root", flags.get("video_root"), None))
    cache = s.get("cache_dir", flags.get("cache_dir"))
    wanted = list(s.get("splits", flags.get("splits"), None) or manifest.splits)
    if not wanted:
        raise ValueError(f"{s.get('manifest', flags.get('manifest'))}: the manifest lists no clips")
    unknown = [x for x in wanted if x not in manifest.splits]
    if unknown:
        raise ValueError(f"split {unknown[0]!r} is not in the manifest (it has {', '.join(manifest.splits)})")
    shard_text = s.get("shard", flags.get("shard"), None)
    shard = _parse_shard(shard_text) if shard_text else shard_from_env()
    device = s.get("device", flags.get("device"))
    if device == "cuda" and shard[1] > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', shard[0])}"
    roles = backbones_from_settings(s, flags)
    config = ExtractConfig(
        batch_size=s.get("batch_size", flags.get("batch_size")), workers=s.get("workers", flags.get("workers")),
        precision=s.get("precision", flags.get("precision")), device=device,
        spatial_crops=s.get("spatial_crops", flags.get("spatial_crops")),
        temporal_views=s.get("temporal_views", flags.get("temporal_views")),
        sampling=s.get("sampling", flags.get("sampling"), None), limit=s.get("limit", flags.get("limit"), None),
        tokens=s.get("tokens", flags.get("tokens")), layers=s.get("layers", flags.get("layers"), None),
        token_dtype=s.get("token_dtype", flags.get("token_dtype")), overwrite=bool(flags.get("overwrite")),
        shard=shard)
    summaries = []
    for split in wanted:
        total = len(manifest.split(split)[:config.limit] if config.limit else manifest.split(split))
        summary = _extract_with_progress(manifest, split, cache, roles, total, config)
        echo(format_summary(summary))
        summaries.append(summary)
        if summary.interrupted:
            sys.exit(130)
    return summaries


def _extract_with_progress(manifest, split, cache, roles, total, config) -> ExtractionSummary:
    from tqdm import tqdm

    mine = -(-total // config.shard[1])
    with tqdm(total=mine, desc=f"{split:>6}", unit="clip", file=sys.stderr, dynamic_ncols=True,
              disable=None) as bar:
        def on_batch(n, summary):
            bar.update(n)
            bar.set_postfix_str(f"{summary.clips_per_s:.1f} clips/s, {len(summary.failed)} failed")
        return extract_split(manifest, split, cache, backbone=roles.get("audiovisual"),
                             video_model=roles.get("video"), audio_model=roles.get("audio"),
                             config=config, on_batch=on_batch)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must be K/N such as 0/4, got {text!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"shard K/N needs K in 0..N-1, got {text}")
    return k, n


def format_summary(s: ExtractionSummary) -> str:
    done = s.written + len(s.failed)
    busy = s.data_wait_s + s.model_s
    share = (f"{100 * s.data_wait_s / busy:.0f}% waiting for decoding, {100 * s.model_s / busy:.0f}% in the models"
             if busy > 0 else "nothing to do")
    lines = [f"{s.split}: {s.written} clips written, {len(s.failed)} failed, {s.without_audio} without audio, "
             f"{s.skipped} already done; {done} clips in {s.wall_s:.1f} s ({s.clips_per_s:.2f} clips/s; {share})"]
    lines += [f"  failed {clip_id}: {reason}" for clip_id, reason in s.failed[:20]]
    if len(s.failed) > 20:
        lines.append(f"  ... and {len(s.failed) - 20} more (all recorded in the cache's errors)")
    words = {"reused": "reused (already finished, untouched)", "written": "written",
             "pending": "this shard is done; the last shard to finish merges it",
             "interrupted": "interrupted; run the same command again to resume"}
    for store in s.stores:
        lines.append(f"  {store.role} {store.backbone}: store {store.path} {words[store.status]}"
                     + (f" ({store.embedded} clips embedded)" if store.status != "reused" else ""))
    if s.interrupted:
        lines.append(f"{s.split}: interrupted; run the same command again to resume")
    return "\n".join(lines)
