"""cache/: the HDF5 feature store between extraction and fusion."""
from .parts import SplitWriter, merge_parts, parts_dir, signature, split_path
from .store import SCHEMA_VERSION, CacheError, FeatureSplit, check_compatible, read_split, write_split

__all__ = ["SCHEMA_VERSION", "CacheError", "FeatureSplit", "SplitWriter", "check_compatible", "merge_parts",
           "parts_dir", "read_split", "signature", "split_path", "write_split"]
