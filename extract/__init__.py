"""extract/: the frozen backbones, their checkpoint loading, and the extraction runner.

Every module of this package other than the infrastructure below is a backbone family: it is
imported here, which registers its variants (see registry.py), and the names in its
``__all__`` are exported (``from extract import load_timesformer``). A new family is one new
file; nothing here changes.
"""
import importlib
import pkgutil

from .checkpoint import CheckpointError, describe
from .registry import backbone_names, create_backbone, get_backbone, register_backbone

_INFRASTRUCTURE = {"checkpoint", "registry", "runner", "backbones", "pipeline"}

__all__ = ["CheckpointError", "backbone_names", "create_backbone", "describe", "get_backbone",
           "register_backbone"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name in _INFRASTRUCTURE or _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
