"""The backbone registry: every frozen encoder alphafuse can extract with, by name.

timm-style: a model family lives in one file of extract/ and registers each variant with
``@register_backbone``; everything else (the CLI's choices, extraction, a cache's rebuild for
``predict``) asks this registry, so adding a backbone touches its own file and its tests only.
extract/__init__.py imports every module of the package, which runs the decorators.

A registered ``build(checkpoint=None, **options)`` returns a frozen, eval-mode module made by
:func:`extract.checkpoint.build_backbone` (so it carries ``config``, ``fingerprint``,
``pretrained``, ``checkpoint`` and ``seed``) that also provides:

* ``input_specs(modality) -> {input name: data spec}``: the preprocessing each input needs
  (a ``data.VideoConfig``, ``data.AudioConfig`` or another spec of data/), for the towers
  that produce ``modality`` ("video", "audio" or "audiovisual": everything);
* ``embedding_shapes(modality) -> {embedding name: per-clip shape}``;
* ``embed(**inputs) -> {embedding name: (B, *shape) float tensor}``.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

MODALITIES = ("video", "audio", "audiovisual")
# A family whose modality depends on the checkpoint (hf: the snapshot's model type) registers as
# "any"; the built module's ``modality`` says what it is, and its input_specs refuses the others.
ANY = "any"


@dataclass(frozen=True)
class Extras:
    """What extraction keeps beside the pooled embeddings: token sequences, and the pooled
    embedding after some blocks (``layers``: None for none, "all", or block indices)."""

    tokens: bool = False
    layers: str | tuple[int, ...] | None = None
    dtype: str = "float16"        # how tokens and layers are stored: float16 (half the disk) or float32

    def __post_init__(self):
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"token and layer caches are float16 or float32, got {self.dtype!r}")

    def layer_indices(self, depth: int) -> tuple[int, ...]:
        if self.layers is None:
            return ()
        if self.layers == "all":
            return tuple(range(depth))
        bad = [i for i in self.layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"layers {bad} do not exist: this backbone has blocks 0..{depth - 1}")
        return tuple(self.layers)

    @classmethod
    def parse(cls, tokens: bool = False, layers: str | None = None, dtype: str = "float16") -> "Extras":
        """From the command line: ``layers`` is "all" or "i,j,..." (0-based block indices)."""
        if layers is None or layers == "all":
            return cls(bool(tokens), layers, dtype)
        try:
            picked = tuple(sorted({int(x) for x in str(layers).split(",") if x.strip()}))
        except ValueError:
            raise ValueError(f"layers must be 'all' or comma-separated block indices such as 3,7,11, "
                             f"got {layers!r}") from None
        if not picked:
            raise ValueError("layers names no block")
        return cls(bool(tokens), picked, dtype)

    def to_dict(self) -> dict:
        out = {"tokens": self.tokens, "layers": list(self.layers) if isinstance(self.layers, tuple) else self.layers}
        if self.tokens or self.layers is not None:
            out["dtype"] = self.dtype
        return out


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    modality: str                 # what it encodes: video, audio, audiovisual (both), or any (the checkpoint's)
    build: Callable               # build(checkpoint=None, **options) -> frozen module
    options: dict = field(default_factory=dict)   # every option build takes, with its default
    help: str = ""
    config_reader: Callable | None = None   # a family's own config file (TSAM's JSON) -> options

    def can_encode(self, modality: str) -> bool:
        return self.modality == modality or self.modality in ("audiovisual", ANY)


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, modality: str, help: str = "", config_reader: Callable | None = None):
    """Decorator: register ``build`` under ``name``. Its keyword defaults are the options.

    The decorated function stays callable as before (``load_timesformer(...)``); every module
    it returns records ``backbone_name`` and the full ``options`` it was built with, which is
    what a cache stores to rebuild it (:func:`rebuild`).
    """
    if modality not in MODALITIES + (ANY,):
        raise ValueError(f"modality must be one of {', '.join(MODALITIES + (ANY,))}, got {modality!r}")

    def decorator(build: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].build.__wrapped__ is not build:
            raise ValueError(f"backbone {name!r} is registered twice")
        signature = inspect.signature(build)
        options = {k: p.default for k, p in signature.parameters.items()
                   if k != "checkpoint" and p.default is not inspect.Parameter.empty}

        @functools.wraps(build)
        def built(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            model = build(*bound.args, **bound.kwargs)
            model.backbone_name = name
            model.options = {k: v for k, v in bound.arguments.items() if k != "checkpoint"}
            return model

        doc = help or (inspect.getdoc(build) or "").split("\n")[0]
        _REGISTRY[name] = BackboneEntry(name, modality, built, options, doc, config_reader)
        return built

    return decorator


def backbone_names(modality: str | None = None) -> list[str]:
    """Registered names, sorted; with ``modality``, those that can encode it."""
    return sorted(n for n, e in _REGISTRY.items() if modality is None or e.can_encode(modality))


def get_backbone(name: str) -> BackboneEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(backbone_names())}") from None


def create_backbone(name: str, checkpoint=None, **overrides):
    """Build the registered backbone ``name`` from ``checkpoint`` (None: random weights), with options.

    Unknown option names are an error naming the allowed ones.
    """
    entry = get_backbone(name)
    unknown = sorted(set(overrides) - set(entry.options))
    if unknown:
        raise ValueError(f"backbone {name} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(f'{k}={v!r}' for k, v in entry.options.items())}")
    for key, value in overrides.items():
        default = entry.options[key]
        if default is None or value is None:
            continue
        want = (int, float) if isinstance(default, float) else type(default)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, want):
            raise ValueError(f"backbone option {name}.{key} must be a {type(default).__name__} "
                             f"(like its default {default!r}), got {value!r}")
    return entry.build(checkpoint, **overrides)


def parse_option(name: str, key: str, text: str):
    """A ``key=value`` backbone option from the command line, typed like the option's default."""
    entry = get_backbone(name)
    if key not in entry.options:
        raise ValueError(f"backbone {name} has no option {key!r}; its options are {', '.join(entry.options)}")
    default = entry.options[key]
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ValueError(f"backbone option {name}.{key} must be a {type(default).__name__}, got {text!r}") from None
    return text
