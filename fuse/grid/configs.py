"""Grid configurations: the paper's preset, alpha sweeps, the heads axis, and their labels."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from ..config import TrainConfig
from ..heads import DEFAULT_HEAD, get_head, head_defaults
from ..transforms import DEFAULT_ALPHA, TRANSFORMS, resolve_target, validate_transform

PRESETS = ("paper",)
# Transforms that multiply the target embedding by a fixed alpha: the points of an alpha curve.
SCALAR_TRANSFORMS = ("pos_scalar", "neg_scalar", "scale")
# The heads axis of a head comparison, the baseline first.
HEAD_AXIS = ("concat", "gated", "late", "bottleneck", "layers")


def seed_list(seeds: int | Iterable[int]) -> list[int]:
    """``5`` -> [0, 1, 2, 3, 4]; an explicit list of seeds is kept as given."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("no seeds given")
    if len(set(out)) != len(out):
        raise ValueError(f"seeds repeat: {out}")
    return out


def parse_names(names: str | Iterable[str]) -> list[str]:
    """``"timesformer,ast"`` or a list -> stripped, non-empty names in order, without repeats."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out = []
    for item in (str(i).strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def parse_alphas(text: str | float | Iterable[float]) -> list[float]:
    """Alphas from ``"0.25:3.0:0.25"`` (start:stop:step, stop included), ``"0.5,1,2"``, or both
    mixed (``"0.25:1:0.25,2,3"``); sorted, without repeats.

    The number of steps is rounded, not floored, within 1e-9 of a step, and every value is
    rounded to 12 significant digits, so ``0.1:0.3:0.1`` gives 0.1, 0.2, 0.3 and not
    0.30000000000000004 or a missing stop.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        items = [str(text)]
    elif isinstance(text, str):
        items = [part.strip() for part in text.split(",")]
    else:
        items = [str(a) for a in text]
    values: list[float] = []
    for item in items:
        if not item:
            continue
        if ":" in item:
            values += _alpha_range(item)
        else:
            values.append(_alpha_number(item, item))
    if not values:
        raise ValueError(f"no alphas in {text!r}; give start:stop:step such as 0.25:3.0:0.25, "
                         f"or a list such as 0.5,1,2")
    return sorted(set(values))


def _alpha_number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"alphas: {text!r} in {where!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"alphas: {where!r} is not finite")
    return value


def _alpha_range(item: str) -> list[float]:
    parts = item.split(":")
    if len(parts) != 3:
        raise ValueError(f"alphas: {item!r} should be start:stop:step, e.g. 0.25:3.0:0.25")
    start, stop, step = (_alpha_number(p.strip(), item) for p in parts)
    if step <= 0:
        raise ValueError(f"alphas: step must be positive in {item!r}")
    if stop < start:
        raise ValueError(f"alphas: {item!r} is an empty range (stop {stop:g} is below start {start:g})")
    steps = (stop - start) / step
    count = math.floor(steps + 1e-9) + 1
    if count > 10_000:
        raise ValueError(f"alphas: {item!r} gives {count} values; that is not a grid anyone wants to train")
    return [float(f"{start + i * step:.12g}") for i in range(count)]


def paper_preset(seeds: int | Iterable[int] = 5, base: TrainConfig | None = None,
                 learned: bool = False) -> list[TrainConfig]:
    """The paper's Table 1 and its baselines, each over ``seeds``.

    Six experiments (TimeSformer or AST transformed with sqrt, pos_scalar at its default alpha
    1.5, neg_scalar at 0.75), the plain concatenation (``none``), and the video-only and
    audio-only heads. ``base`` carries the training settings (epochs, lr, ...); ``learned``
    adds a learned-alpha head per target.
    """
    kinds = [("both", "none", "audio", None)]
    for target in ("video", "audio"):
        kinds += [("both", t, target, DEFAULT_ALPHA[t]) for t in ("sqrt", "pos_scalar", "neg_scalar")]
    kinds += [("video", "none", "video", None), ("audio", "none", "audio", None)]
    if learned:
        kinds += [("both", "learned", target, None) for target in ("video", "audio")]
    return _expand(kinds, seeds, base)


def sweep(transforms: str | Iterable[str] = ("scale",), targets: str | Iterable[str] = ("video", "audio"),
          alphas: str | Iterable[float] | None = None, seeds: int | Iterable[int] = 3,
          base: TrainConfig | None = None, baseline: bool = True, learned: bool = True) -> list[TrainConfig]:
    """Every transform x target x alpha (transforms without an alpha once per target), over ``seeds``.

    ``baseline`` adds the ``none`` head the intervals compare against; ``learned`` adds a
    learned-alpha head per target, reported beside the sweep's best alpha. An alpha outside
    a transform's range is an error naming the offending values, not silently skipped.
    """
    transforms = parse_names(transforms)
    targets = [resolve_target(t) for t in parse_names(targets)]
    if not transforms:
        raise ValueError("no transforms given")
    if not targets:
        raise ValueError("no targets given")
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform(s) {', '.join(unknown)}; choose from {', '.join(TRANSFORMS)}")
    alpha_values = parse_alphas(alphas) if alphas is not None else None
    kinds = []
    if baseline or "none" in transforms:
        kinds.append(("both", "none", "audio", None))
    for transform in transforms:
        if transform == "none":
            continue
        if transform not in SCALAR_TRANSFORMS:
            if alphas is not None and len(transforms) == 1:
                raise ValueError(f"transform {transform} takes no alpha; drop the alphas or add a transform that "
                                 f"takes one (scale, pos_scalar, neg_scalar)")
            kinds += [("both", transform, target, None) for target in targets]
            continue
        values = alpha_values if alpha_values is not None else _default_alphas(transform)
        _check_alphas(transform, values)
        kinds += [("both", transform, target, alpha) for target in targets for alpha in values]
    if learned:
        kinds += [("both", "learned", target, None) for target in targets]
    return _expand(list(dict.fromkeys(kinds)), seeds, base)


def _default_alphas(transform: str) -> list[float]:
    alpha = DEFAULT_ALPHA[transform]
    if alpha is None:
        raise ValueError(f"transform {transform} needs alphas, e.g. --alphas 0.25:3.0:0.25")
    return [alpha]


def _check_alphas(transform: str, values: Sequence[float]) -> None:
    bad, rule = [], ""
    for alpha in values:
        try:
            validate_transform(transform, alpha)
        except ValueError as exc:
            bad.append(f"{alpha:g}")
            rule = str(exc).split(", got")[0]
    if bad:
        raise ValueError(f"{rule}: alpha {', '.join(bad)} from the sweep outside it "
                         f"(scale takes any alpha > 0)")


def _expand(kinds, seeds, base: TrainConfig | None) -> list[TrainConfig]:
    # Transforms are the concat head's: a base configured for another head lends its training
    # settings only.
    base = base if base is not None else TrainConfig()
    options = dict(base.head_options) if base.head == DEFAULT_HEAD else {}
    return [replace(base, head=DEFAULT_HEAD, head_options=options, modalities=modalities, transform=transform,
                    target=target, alpha=alpha, seed=seed)
            for modalities, transform, target, alpha in kinds for seed in seed_list(seeds)]


def head_configs(heads: str | Iterable[str] = HEAD_AXIS, seeds: int | Iterable[int] = 5,
                 base: TrainConfig | None = None, late_weights=None) -> list[TrainConfig]:
    """The heads axis: every head of ``heads`` (fusing both modalities, no transform) over the same
    ``seeds``, the concat head (the ``none`` baseline every interval compares with) first.

    ``late_weights`` sweeps the late head's video weight (``"0.25,0.5,learned"``: fixed ws and
    the learned one); without it the late head learns its weight. ``base`` carries the training
    settings; its ``head_options`` apply to its own head only.
    """
    base = base if base is not None else TrainConfig()
    names = parse_names(heads)
    if not names:
        raise ValueError("no heads given")
    for name in names:
        get_head(name)   # unknown names: an error listing the registered ones
    names = [DEFAULT_HEAD] + [n for n in names if n != DEFAULT_HEAD]
    kinds = []
    for name in names:
        own = dict(base.head_options) if base.head == name else {}
        if name == "late" and late_weights is not None:
            kinds += [(name, {**own, "weight": w}) for w in parse_late_weights(late_weights)]
        else:
            kinds.append((name, own))
    return [replace(base, head=name, head_options=options, transform="none", alpha=None, modalities="both",
                    seed=seed) for name, options in kinds for seed in seed_list(seeds)]


def parse_late_weights(text) -> list[float | None]:
    """``"0.25,0.5,learned"`` (or a list) -> [0.25, 0.5, None]: fixed video weights in [0, 1] and
    the learned one, in the order given, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[float | None] = []
    for item in items:
        if item is None or str(item).strip() == "learned":
            value = None
        elif not str(item).strip():
            continue
        else:
            value = _alpha_number(str(item).strip(), str(text))
            if not 0 <= value <= 1:
                raise ValueError(f"late weights: {value:g} is outside [0, 1] (the video logits' share)")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"no late weights in {text!r}; give e.g. 0.25,0.5,0.75,learned")
    return out


def pair_configs(seeds: int | Iterable[int] = 5, base: TrainConfig | None = None) -> list[TrainConfig]:
    """What each encoder pair of ``grid --pairs`` trains by default: the plain concatenation
    (``none``) and the two unimodal heads, over ``seeds``."""
    kinds = [("both", "none", "audio", None), ("video", "none", "video", None), ("audio", "none", "audio", None)]
    return _expand(kinds, seeds, base)


def parse_pairs(text: str | Iterable[str]) -> list[dict]:
    """``"timesformer+ast,timesformer+cavmae,cavmae"`` -> one store selection per pair:
    {"video": ..., "audio": ...} for VIDEO+AUDIO, {"backbone": ...} for one audio-visual
    backbone (names or short store ids), in order, without repeats."""
    out = []
    for item in parse_names(text):
        parts = [p.strip() for p in item.split("+")]
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"pairs: {item!r} should be VIDEO+AUDIO (e.g. timesformer+ast) or one audio-visual "
                             f"backbone (e.g. cavmae)")
        chosen = {"video": parts[0], "audio": parts[1]} if len(parts) == 2 else {"backbone": parts[0]}
        if chosen not in out:
            out.append(chosen)
    if not out:
        raise ValueError(f"no pairs in {text!r}; give e.g. timesformer+ast,timesformer+cavmae")
    return out


def configs_from_options(preset: str | None = None, transforms=None, targets=None, alphas=None,
                         seeds: int | Iterable[int] = 5, base: TrainConfig | None = None,
                         learned: bool | None = None, heads=None, late_weights=None,
                         pairs: bool = False) -> list[TrainConfig]:
    """What ``cli.py grid`` asks for: ``preset="paper"``, a sweep of transforms x targets x alphas,
    the heads axis (``heads="concat,gated,late,bottleneck,layers"``), or a preset or sweep plus heads.

    Strings are accepted as the command line gives them (``"scale,pos_scalar"``,
    ``"timesformer,ast"``, ``"0.25:3.0:0.25"``). ``learned`` defaults to off for the preset
    (it is the paper's table) and on for a sweep. ``pairs``: the configurations each encoder
    pair trains (:func:`pair_configs` alone, or with the preset or the heads axis, plus the
    unimodal heads); an alpha sweep is one pair's question and is refused.
    """
    configs: list[TrainConfig] = []
    if pairs and (transforms is not None or alphas is not None):
        raise ValueError("pairs compare encoders on the baseline, the preset or the heads axis; sweep alphas "
                         "for one pair at a time")
    if pairs:
        configs = pair_configs(seeds, base)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if transforms is not None or alphas is not None or targets is not None:
            raise ValueError("give either a preset or transforms/targets/alphas, not both")
        configs += paper_preset(seeds, base, learned=bool(learned))
    elif transforms is not None or alphas is not None:
        configs += sweep(transforms if transforms is not None else "scale",
                        targets if targets is not None else ("video", "audio"), alphas, seeds, base,
                        learned=True if learned is None else learned)
    if heads is not None:
        configs += head_configs(heads, seeds, base, late_weights)
    elif late_weights is not None:
        raise ValueError("late weights sweep the late head: give heads (e.g. --heads late)")
    if not configs:
        raise ValueError("nothing to run: give a preset (--preset paper), a sweep (--transform, --alphas) "
                         "or heads (--heads concat,gated,late,bottleneck,layers)")
    unique: dict[tuple, TrainConfig] = {}
    for cfg in configs:   # the baseline of a sweep and of the heads axis is one configuration
        unique.setdefault((config_key(cfg), cfg.seed), cfg)
    return list(unique.values())


def config_key(cfg: TrainConfig) -> tuple:
    """What identifies a configuration across its seeds: every setting but the seed."""
    options = cfg.to_dict()
    options.pop("seed")
    return tuple((k, _hashable(v)) for k, v in sorted(options.items()))


def _hashable(value):
    if isinstance(value, dict):
        return tuple((k, _hashable(v)) for k, v in sorted(value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def describe(cfg: TrainConfig | dict) -> str:
    """Short label: ``none``, ``video only``, ``sqrt video``, ``scale audio x0.5``, ``learned video``,
    ``gated``, ``late w=0.3``, ``late (learned w)``, ``bottleneck dim=128``, ``layers``; with
    ``, modality dropout 0.3`` when it is on."""
    c = cfg.to_dict() if isinstance(cfg, TrainConfig) else cfg
    head = c.get("head") or DEFAULT_HEAD
    if head != DEFAULT_HEAD:
        label = _describe_head(head, c)
    elif c["modalities"] != "both":
        label = f"{c['modalities']} only"
        label = label if c["transform"] == "none" else f"{label}, {c['transform']}"
    elif c["transform"] == "none":
        label = "none"
    else:
        alpha = c.get("alpha")
        label = f"{c['transform']} {c['target']}" + ("" if alpha in (None, "") else f" x{float(alpha):g}")
    if c.get("modality_dropout"):
        label += f", modality dropout {float(c['modality_dropout']):g}"
    return label


def _describe_head(head: str, c: dict) -> str:
    options = dict(c.get("head_options") or {})
    if head == "late":
        weight = options.pop("weight", None)
        label = "late (learned w)" if weight is None else f"late w={float(weight):g}"
    else:
        label = head
    if c.get("modalities", "both") != "both":
        label += f" {c['modalities']} only"
    defaults = head_defaults(head)
    extra = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(options.items())
             if defaults.get(k) != v]
    return label + (" " + " ".join(extra) if extra else "")
