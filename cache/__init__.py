"""cache/: the HDF5 feature store between extraction and fusion."""
from .store import SCHEMA_VERSION, CacheError, FeatureSplit, check_compatible, read_split, write_split

__all__ = ["SCHEMA_VERSION", "CacheError", "FeatureSplit", "check_compatible", "read_split", "write_split"]
