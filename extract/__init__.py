"""extract/: the frozen backbones, their checkpoint loading, and the extraction runner.

Every module of this package other than the infrastructure below belongs to a backbone family:
it is imported here, which registers its variants, input specs and sampling rules (see
registry.py), and the names in its ``__all__`` are exported (``from extract import
load_timesformer``). A new family is one new file (a second one, ``<family>_inputs.py``, only
where the model file would pass ~400 lines: cavmae_inputs.py, tsam_inputs.py); nothing here changes.
"""
import importlib
import pkgutil

from .checkpoint import CheckpointError, describe
from .registry import (Backbone, backbone_names, create_backbone, get_backbone, register_backbone, register_spec,
                       spec_from_dict)

_INFRASTRUCTURE = {"checkpoint", "registry", "embed", "runner", "backbones", "pipeline"}

__all__ = ["Backbone", "CheckpointError", "backbone_names", "create_backbone", "describe", "get_backbone",
           "register_backbone", "register_spec", "spec_from_dict"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name in _INFRASTRUCTURE or _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
