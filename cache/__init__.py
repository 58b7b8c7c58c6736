"""cache/: the HDF5 feature store between extraction and fusion."""
import h5py as _h5py

from .parts import SplitWriter, check_split_name, merge_parts, parts_dir, signature_of, source_stamp, split_path
from .store import (SCHEMA_VERSION, CacheError, FeatureSplit, LazyArray, check_compatible, read_split,
                    write_split)

# HDF5 prints its own error stack to stderr on every failed call (a flood on a full disk); the
# same errors reach us as Python exceptions, which say it in one line.
_h5py._errors.silence_errors()

__all__ = ["SCHEMA_VERSION", "CacheError", "FeatureSplit", "LazyArray", "SplitWriter", "check_compatible",
           "check_split_name", "merge_parts", "parts_dir", "read_split", "signature_of", "source_stamp",
           "split_path", "write_split"]
