"""extract/: the frozen backbones, their checkpoint loading, and the extraction runner."""
from .ast import AudioSpectrogramTransformer, load_ast
from .checkpoint import CheckpointError, describe
from .timesformer import TimeSformer, load_timesformer

__all__ = ["AudioSpectrogramTransformer", "CheckpointError", "TimeSformer", "describe", "load_ast",
           "load_timesformer"]
