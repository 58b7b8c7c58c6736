"""The paper's head, kept importable from here: the heads themselves live in fuse/heads/."""
from .heads.base import FusionHead
from .heads.concat import AlphaFuseHead

__all__ = ["AlphaFuseHead", "FusionHead"]
