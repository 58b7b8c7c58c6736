"""The fusion heads, by name: one file per head, one registry.

A head file registers its class with ``@register_head(name, help=...)``. Everything else (the
training loop, runs, grids, the CLI's ``--head`` choices and help) asks this registry:

    head_names()                 ["bottleneck", "concat", "gated", "late", "layers"]
    head_help()                  {name: one line of help}
    head_defaults(name)          {option: default}: the keyword defaults of the class's __init__
    create_head(name, shapes, num_classes, **options)
    head_from_config(config)     rebuild a saved head (``head.config``)

Every head is a :class:`~fuse.heads.base.Head`: ``forward(inputs) -> logits`` for a dict of
batched embeddings, ``needs(**options)`` names the cache embeddings it reads.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field

from alphafuse.data.memory import check_fits, module_bytes
from alphafuse.settings import SETTINGS

from .base import MODALITY_NAMES, SHARED_OPTIONS, FusionHead, Head, drop_modalities, modality_of

DEFAULT_HEAD = SETTINGS["head"].default   # --head, defined once in settings.py


@dataclass(frozen=True)
class HeadEntry:
    name: str
    cls: type
    options: dict = field(default_factory=dict)   # every option the head takes, with its default
    help: str = ""

    def needs(self, options: dict | None = None) -> tuple[str, ...]:
        return tuple(self.cls.needs(**{**self.options, **(options or {})}))


_REGISTRY: dict[str, HeadEntry] = {}


def register_head(name: str, *, help: str):
    """Class decorator: register a Head subclass under ``name``; its keyword defaults are its options."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"head {name!r} is registered twice")
        params = inspect.signature(cls.__init__).parameters
        options = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        cls.name = name
        _REGISTRY[name] = HeadEntry(name, cls, options, help)
        return cls

    return decorator


def head_names() -> list[str]:
    return sorted(_REGISTRY)


def get_head(name: str) -> HeadEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(head_names())}") from None


def head_help() -> dict[str, str]:
    return {name: _REGISTRY[name].help for name in head_names()}


def head_defaults(name: str) -> dict:
    return dict(get_head(name).options)


def check_head_options(name: str, options: dict) -> dict:
    """Validate the head-specific ``options`` of head ``name`` (not the shared ones, see
    SHARED_OPTIONS); return them normalised. Unknown names are an error listing the known ones."""
    entry = get_head(name)
    own = sorted(set(entry.options) - set(SHARED_OPTIONS))
    unknown = sorted(set(options) - set(own))
    if unknown:
        raise ValueError(f"head {name} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(own) or 'none'}")
    return entry.cls.check_options(dict(options))


def parse_head_options(name: str, items) -> dict:
    """``KEY=VALUE`` strings from the command line -> head ``name``'s options, typed like their
    defaults, then validated by :func:`check_head_options`."""
    entry = get_head(name)
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or key not in entry.options or key in SHARED_OPTIONS:
            known = ", ".join(sorted(set(entry.options) - set(SHARED_OPTIONS))) or "none"
            raise ValueError(f"head option {item!r}: head {name} takes KEY=VALUE with KEY one of {known}")
        default = entry.options[key]
        try:
            if isinstance(default, bool):
                value = {"true": True, "false": False}[text.lower()]
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float) or default is None:
                value = float(text) if text.lower() != "none" else None
            else:
                value = text
        except (KeyError, ValueError):
            raise ValueError(f"head option {name}.{key} must be like {default!r}, got {text!r}") from None
        options[key] = value
    return check_head_options(name, options)


def create_head(name: str, shapes: dict, num_classes: int, **options) -> Head:
    """Build head ``name`` for embeddings of per-clip ``shapes`` ({name: shape}) and ``num_classes``."""
    entry = get_head(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(f"head {name} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(sorted(entry.options))}")
    # Sized on the meta device first: weights, gradients and Adam's two moments, 4 copies.
    needed = 4 * module_bytes(entry.cls.build, shapes, num_classes, **options)
    shown = ", ".join(f"{k}={v!r}" for k, v in options.items() if v is not None)
    check_fits(needed, f"head {name} ({shown}) on inputs {shapes}: training it")
    return entry.cls.build(shapes, num_classes, **options)


def head_from_config(config: dict) -> Head:
    """Rebuild a head from its ``config`` (a run written before heads had names is a concat head)."""
    return get_head(config.get("name", DEFAULT_HEAD)).cls.from_config(config)


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["DEFAULT_HEAD", "MODALITY_NAMES", "FusionHead", "Head", "HeadEntry", "SHARED_OPTIONS", "check_head_options", "create_head",
           "drop_modalities", "get_head", "head_defaults", "head_from_config", "head_help", "head_names",
           "modality_of", "register_head"]
