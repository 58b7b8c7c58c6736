"""cache/: the HDF5 feature stores between extraction and fusion (one store per encoder)."""
import h5py as _h5py

from .parts import (SplitWriter, check_split_name, is_finished, merge_parts, parts_dir, signature_of, source_stamp,
                    split_path)
from .store import (SCHEMA_VERSION, CacheError, FeatureSplit, LazyArray, check_compatible, read_split,
                    write_split)
from .stores import (Store, ensure_store, list_stores, merge_split, open_split, select_stores, split_exists,
                     store_id, store_identity)

# HDF5 prints its own error stack to stderr on every failed call (a flood on a full disk); the
# same errors reach us as Python exceptions, which say it in one line.
_h5py._errors.silence_errors()

__all__ = ["SCHEMA_VERSION", "CacheError", "FeatureSplit", "LazyArray", "SplitWriter", "check_compatible",
           "check_split_name", "ensure_store", "is_finished", "list_stores", "merge_parts", "merge_split", "open_split", "parts_dir",
           "read_split", "select_stores", "signature_of", "source_stamp", "split_exists", "split_path", "Store",
           "store_id", "store_identity", "write_split"]
