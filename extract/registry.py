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

import inspect
from dataclasses import dataclass, field
from typing import Callable

MODALITIES = ("video", "audio", "audiovisual")


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    modality: str                 # what it encodes: video, audio, or audiovisual (both)
    build: Callable               # build(checkpoint=None, **options) -> frozen module
    options: dict = field(default_factory=dict)   # every option build takes, with its default
    help: str = ""

    def can_encode(self, modality: str) -> bool:
        return self.modality == modality or self.modality == "audiovisual"


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, modality: str, help: str = ""):
    """Decorator: register ``build`` under ``name``. Its keyword defaults are the options."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")

    def decorator(build: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"backbone {name!r} is registered twice")
        params = inspect.signature(build).parameters
        options = {k: p.default for k, p in params.items()
                   if k != "checkpoint" and p.default is not inspect.Parameter.empty}
        doc = help or (inspect.getdoc(build) or "").split("\n")[0]
        _REGISTRY[name] = BackboneEntry(name, modality, build, options, doc)
        return build

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
    return entry.build(checkpoint, **overrides)
