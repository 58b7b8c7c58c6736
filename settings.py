"""Every setting of every command, defined once: its type, default, rule and help.

cli.py builds its click options from this table, and ``alphafuse.toml`` is checked against it,
so a flag and its config key cannot drift apart. A setting comes from the command-line flag,
else the config file's ``[command]`` table, else its top level, else the default.

The config file is ``--config PATH`` or ``alphafuse.toml`` in the working directory. Paths in
it are relative to the file. Backbone options go in a ``[backbones]`` table: ``key = value``
for whichever selected backbone has that option, or ``[backbones.NAME]`` for one backbone.
"""
from __future__ import annotations

import numbers
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "alphafuse.toml"
COMMAND_TABLES = ("extract", "fuse", "grid", "evaluate", "predict", "demo", "cache")
REQUIRED = object()


class SettingError(ValueError):
    """A setting with a wrong type, value or name; the message names the flag or the key."""


# Every integer setting lies in a range: its own, else what a 64-bit integer holds (torch and
# numpy take nothing wider, and say so with a traceback: "Overflow when unpacking long long").
INT_RANGE = (-(2 ** 63), 2 ** 63 - 1)
SEED_RANGE = (0, 2 ** 63 - 1)


def check_int(value, where: str, minimum=None, maximum=None) -> int:
    """``value`` as an int within [minimum, maximum] (each defaulting to INT_RANGE's end), or a
    SettingError naming ``where``, the range and the value. The one check of every integer
    setting: flags, config keys, TrainConfig's fields and backbone options."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingError(f"{where} must be an integer, got {value!r}")
    low = INT_RANGE[0] if minimum is None else minimum
    high = INT_RANGE[1] if maximum is None else maximum
    if value < low and maximum is None and minimum is not None:
        raise SettingError(f"{where} must be at least {low:g}, got {_short(value)}")
    if not low <= value <= high:
        raise SettingError(f"{where} must be an integer from {low} to {high}, got {_short(value)}")
    return int(value)


def resolve_device(device: str):
    """The torch device that ``--device`` names: ``auto`` is CUDA where there is one, else the CPU;
    ``cuda`` on a machine without CUDA is an error naming the flag's value. Here rather than in
    extract/, so that fuse, evaluate and grid check a device without importing the backbones."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine (use cpu or auto)")
    return torch.device(device)


def _short(value: int) -> str:
    """An integer for a message: whole up to 30 digits, else its size (str() refuses 4300 digits)."""
    return str(value) if abs(value) < 10 ** 30 else f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"


@dataclass(frozen=True)
class Setting:
    kind: str                      # int, float, str, bool, path, ints (comma list), strs (list)
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None   # inclusive lower bound for numbers
    maximum: int | None = None     # inclusive upper bound of an int (None: INT_RANGE's)
    exists: bool = False           # a path that must exist when given (checked after config paths resolve)

    def check(self, name: str, value, where: str):
        """The value converted to this setting's kind, or a SettingError naming ``where``."""
        if value is None:
            return None
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise SettingError(f"{where} must be true or false, got {value!r}")
        elif kind == "int":
            value = check_int(value, where, self.minimum, self.maximum)
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingError(f"{where} must be a number, got {value!r}")
            value = float(value)
        elif kind in ("str", "path"):
            if not isinstance(value, str):
                raise SettingError(f"{where} must be a string, got {value!r}")
        elif kind == "ints":
            items = value.split(",") if isinstance(value, str) else value
            try:
                value = tuple(int(str(x).strip()) for x in items if str(x).strip() != "")
            except (TypeError, ValueError):
                raise SettingError(f"{where} must be integers such as 1024,512, got {value!r}") from None
            value = tuple(check_int(v, where, self.minimum, self.maximum) for v in value)
        elif kind == "strs":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
                raise SettingError(f"{where} must be a name or a list of names, got {value!r}")
            value = tuple(items)
        if self.choices is not None:
            bad = [v for v in (value if kind == "strs" else (value,)) if v not in self.choices]
            if bad:
                raise SettingError(f"{where} must be one of {', '.join(map(str, self.choices))}, got {bad[0]!r}")
        if self.minimum is not None and kind == "float" and value < self.minimum:
            raise SettingError(f"{where} must be at least {self.minimum:g}, got {value!r}")
        if self.minimum is not None and kind == "ints" and any(v < self.minimum for v in value):
            raise SettingError(f"{where} must be at least {self.minimum:g} each, got {value!r}")
        return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Settings:
    """Flag > [command] table > top level of the config file > default, every value checked."""

    def __init__(self, schema: dict[str, Setting], config: str | None, command: str):
        self.schema, self.command = schema, command
        self.path = Path(config) if config else Path(DEFAULT_CONFIG)
        self.values: dict = {}
        self.backbone_options: dict = {}
        # A named config must exist; the default one is read when anything is there (a FIFO or a
        # folder under that name is refused, never read or silently skipped).
        if config or self.path.exists() or self.path.is_symlink():
            self._read()

    def _read(self) -> None:
        from alphafuse.data.files import read_regular_text   # lazy: settings loads for --help

        text = read_regular_text(self.path, "config file", SettingError)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SettingError(f"{self.path}: not a readable TOML file ({' '.join(str(exc).split())})") from None
        tables = {}
        for key, value in data.items():
            if key in COMMAND_TABLES or key == "backbones":
                if not isinstance(value, dict):
                    raise SettingError(f"{self.path}: [{key}] must be a table")
                tables[key] = value
            else:
                self._take(key, value, key)
        for key, value in tables.get(self.command, {}).items():
            if isinstance(value, dict):
                raise SettingError(f"{self.path}: [{self.command}.{key}] is not a table this file can have")
            self._take(key, value, f"{self.command}.{key}")
        self.backbone_options = tables.get("backbones", {})

    def _take(self, key: str, value, where: str) -> None:
        if key not in self.schema:
            close = [k for k in self.schema if _similar(k, key)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingError(f"{self.path}: unknown setting {where!r}{hint}")
        checked = self.schema[key].check(key, value, f"{self.path}: {where}")
        if self.schema[key].kind == "path" and checked is not None:
            checked = str((self.path.parent / checked).resolve())
        self.values[key] = checked

    def get(self, key: str, flag_value=None, default=REQUIRED):
        """The setting ``key``: the flag's value if given, else the config's, else ``default``
        (the schema's default when not given; REQUIRED: an error naming flag and key)."""
        setting = self.schema[key]
        if flag_value is not None and flag_value != ():
            return _existing(setting, setting.check(key, flag_value, flag(key)), flag(key))
        if key in self.values and self.values[key] is not None:
            return _existing(setting, self.values[key], f"{self.path}: {key}")
        if default is REQUIRED and setting.default is None:
            where = f"set {key} in {self.path}" if self.path.is_file() else f"put {key} = ... in {DEFAULT_CONFIG}"
            raise SettingError(f"no {key.replace('_', ' ')}: pass {flag(key)} or {where}")
        return setting.default if default is REQUIRED else default


def _existing(setting: Setting, value, where: str):
    if setting.exists and value is not None and not Path(value).exists():
        raise SettingError(f"{where}: {value} does not exist")
    return value


def _similar(a: str, b: str) -> bool:
    """One edit apart, or the same once underscores are dropped (a typo'd key)."""
    if a.replace("_", "") == b.replace("_", ""):
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) <= 1 or any(a[:i] + a[i + 1] + a[i] + a[i + 2:] == b
                                                          for i in range(len(a) - 1))
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def _choices(kind: str) -> tuple:
    """A registry's names, read from the source (catalogue.py) so that building the command line
    imports no model code."""
    from alphafuse import catalogue

    if kind == "transforms":
        return catalogue.transforms()
    return tuple(catalogue.entries(kind.rstrip("s")))     # heads, sampling


# The one definition of every default, the heads' and TrainConfig's included: fuse/config.py and
# fuse/heads/ read theirs from this table (this module imports nothing heavy, so they can).
SETTINGS = {
    # data and caches
    "manifest": Setting("path", None, "CSV `path,label,split`, official VGGSound CSV (with --video-root), or a folder per class."),
    "video_root": Setting("path", None, "Folder of the clips named by a VGGSound CSV ({id}_{start:06d}.mp4)."),
    "cache_dir": Setting("path", None, "Folder of the <split>.h5 caches."),
    "run_dir": Setting("path", "runs", "Parent folder of run and grid directories."),
    "out": Setting("path", None, "Output directory."),
    "splits": Setting("strs", None, "Split(s) to extract; repeat the flag. Default: every split of the manifest."),
    # backbones and extraction
    # Extraction names registered backbones (checked there against the registry); fuse, grid and
    # evaluate name the cache folder's stores, by backbone name or short store id, so these
    # take any string here. Their defaults are extraction's: choosing a store defaults to the
    # folder's only one.
    "video_backbone": Setting("str", "timesformer", "Backbone of the video embedding (fuse, grid, evaluate: its "
                                                    "store in the cache folder, by name or short id; default: the "
                                                    "only one)."),
    "audio_backbone": Setting("str", "ast", "Backbone of the audio embedding (fuse, grid, evaluate: its store, "
                                            "by name or short id; default: the only one)."),
    "backbone": Setting("str", None, "One audio-visual backbone for both modalities (instead of the two above)."),
    "video_checkpoint": Setting("path", None, "Checkpoint of the video backbone (e.g. TimeSformer_divST_8x32_224_K400.pyth; hf: a snapshot folder). None: random weights "
                                                 "(predict: where extraction read it; its sha256 must match)."),
    "audio_checkpoint": Setting("path", None, "Checkpoint of the audio backbone (e.g. audioset_10_10_0.4593.pth; hf: a snapshot folder). None: random weights "
                                                 "(predict: where extraction read it; its sha256 must match)."),
    "checkpoint": Setting("path", None, "Checkpoint of the --backbone (e.g. cav-mae-base.pth, vgg_65.5.pth)."),
    "backbone_config": Setting("path", None, "The backbone family's own config file, mapped onto its options "
                                             "(TSAM's JSON config: its model and shift_temporal sections)."),
    "trust_checkpoint": Setting("bool", False, "Fully unpickle checkpoints that hold Python objects (they can run code: only files you trust)."),
    "arch": Setting("str", "base", "Backbone size; tiny is for tests and CPU demos.", ("base", "tiny")),
    "seed": Setting("int", 0, "Seed: of random backbone weights (extract), of head weights, dropout and clip order (fuse).",
                    minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]),
    "spatial_crops": Setting("int", 1, "1: one view; 3: left/centre/right views, one embedding each, scores averaged.", (1, 3)),
    "temporal_views": Setting("int", 1, "K clips per video (the sampling rule's views), one embedding each, scores averaged.",
                              minimum=1),
    "sampling": Setting("str", None, "Temporal sampling rule instead of the video backbone's (e.g. timesformer_pyav for "
                                     "TimeSformer's own window; several temporal views need such a rule).",
                        _choices("sampling")),
    "tokens": Setting("bool", False, "Also cache compact token sequences (for the bottleneck head), float16."),
    "layers": Setting("str", None, "Also cache the pooled embedding after these blocks: all, or i,j,... (0-based), float16."),
    "token_dtype": Setting("str", "float16", "Storage of --tokens and --layers caches: float16 (half the disk) or float32.",
                           ("float16", "float32")),
    "batch_size": Setting("int", 8, "Clips per batch.", minimum=1),
    "workers": Setting("int", 2, "DataLoader decoding processes.", minimum=0),
    "precision": Setting("str", "fp32", "Autocast precision of the backbones.", ("fp32", "bf16", "fp16")),
    "limit": Setting("int", None, "Only the first N clips of each split.", minimum=1),
    "shard": Setting("str", None, "K/N: the K-th of N disjoint shards (0-based). Set by torchrun."),
    "device": Setting("str", "auto", "cpu, cuda, or auto (cuda when available).", ("cpu", "cuda", "auto")),
    # heads
    "transform": Setting("str", "none", "How the target modality's embedding is transformed.", _choices("transforms")),
    "target": Setting("str", "audio", "Which modality the transform applies to (timesformer=video, ast=audio).",
                      ("timesformer", "ast", "video", "audio")),
    "alpha": Setting("float", None, "Scale for pos_scalar (> 1, default 1.5), neg_scalar (0..1, default 0.75) or scale (> 0)."),
    "modalities": Setting("str", "both", "both, or a unimodal baseline head.", ("both", "video", "audio")),
    "epochs": Setting("int", 25, "Training epochs.", minimum=1),
    "lr": Setting("float", 1e-4, "Adam learning rate."),
    "hidden": Setting("ints", (1024, 512), "Hidden layer sizes, comma-separated.", minimum=1),
    "dropout": Setting("float", 0.5, "Dropout after each hidden layer, in [0, 1)."),
    "head": Setting("str", "concat", "The fusion head (see the list below).", _choices("heads")),
    "modality_dropout": Setting("float", 0.0, "Probability that a training clip loses one modality (zeroed), in [0, 1)."),
    "patience": Setting("int", None, "Stop when validation has not improved for this many epochs (MBT's early stopping).",
                        minimum=1),
    # grids
    "heads": Setting("str", None, "Heads axis: comma-separated heads (concat,gated,late,bottleneck,layers), same seeds."),
    "pairs": Setting("str", None, "Encoder pairs axis: VIDEO+AUDIO store names or short ids, comma-separated (e.g. "
                                  "timesformer+ast,timesformer+cavmae), same seeds, with each encoder's unimodal row."),
    "late_weights": Setting("str", None, "The late head's fixed weights to sweep (e.g. 0.25,0.5,0.75); none: learned."),
    "preset": Setting("str", None, "paper: Table 1, the none baseline and the two unimodal heads.", ("paper",)),
    "transforms": Setting("str", None, "Sweep: transform(s), comma-separated (e.g. scale or pos_scalar,neg_scalar)."),
    "targets": Setting("str", None, "Sweep: timesformer,ast (aliases video,audio). Default: both."),
    "alphas": Setting("str", None, "Sweep: START:STOP:STEP (inclusive) or a comma list, e.g. 0.25:3.0:0.25."),
    "learned": Setting("bool", None, "Also train the learned-alpha head per target (default: on for sweeps, off for the preset)."),
    "seeds": Setting("int", 5, "Seeds per configuration.", minimum=1),
    "jobs": Setting("int", None, "Worker processes (one thread each). Default: one per core.", minimum=1),
    # VGGSounder (evaluate, grid)
    "vggsounder": Setting("bool", False, "Also score on VGGSounder's multi-label, modality-tagged labels of VGGSound's "
                                         "test clips: hit@1/5, mAP per label modality, modality confusion."),
    "vggsounder_labels": Setting("path", None, "A VGGSounder label CSV (video_id,label,modality,background_music,"
                                               "static_image,voice_over) instead of the one the package ships."),
    "method": Setting("str", "auto", "joblib: one head per task; vectorized: stacked heads; auto: the faster.",
                      ("auto", "joblib", "vectorized")),
    # evaluate, predict and demo
    "run": Setting("path", None, "A run directory (written by fuse).", exists=True),
    "split": Setting("str", "test", "Split to score."),
    "backbone_logits": Setting("bool", False, "Instead of a run: score the cache's own classifier outputs (a fine-tuned "
                                              "CAV-MAE, TSM or TSAM), the mean of the per-view softmax, as the "
                                              "backbone's reference evaluation."),
    "backbone_labels": Setting("path", None, "With --backbone-logits: the backbone's class names, a "
                                             "class_labels_indices.csv (index,mid,display_name) or one name per line.",
                               exists=True),
    "predictions": Setting("path", None, "Write clip_id, label, predicted and class probabilities as CSV."),
    "which": Setting("str", "best", "Which saved epoch.", ("best", "last")),
    "top_k": Setting("int", 5, "How many labels to show per video.", minimum=1),
    "json": Setting("bool", False, "Print JSON."),
    "workdir": Setting("path", "demo", "Where the demo's dataset, config, caches, runs and report go."),
    "clips_per_class": Setting("int", 24, "Generated clips per class (6 classes).", minimum=4),
}
