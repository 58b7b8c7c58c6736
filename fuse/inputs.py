"""What a head reads from a cache: the named embeddings of one split, served as batches.

``HeadInputs(split, names, device)`` checks that the split has every embedding the head needs
(a missing one is a one-line CacheError naming the extraction flag that adds it) and serves
``batch(idx) -> {name: float32 tensor}``:

* float32 arrays in memory become one tensor on the device, indexed per batch;
* float16 arrays (token and layer caches) and lazily read ones (:class:`cache.store.LazyArray`,
  which reads a batch's rows in increasing order, then puts them back in the batch's order)
  are read and converted a batch at a time, so a 20k-clip token cache never sits in memory
  as float32. A lazily read split trains to the very numbers of the same split in memory.

Views. An embedding whose ``embedding_info`` says ``{"views": V}`` has a view axis after the
clip axis (K temporal x S spatial crops, CAV-MAE's 10 frames). The rule:

* training (``pool_views=True``): the embedding is averaged over its views, so a pooled head
  trains on one input per clip;
* evaluation (``pool_views=False``): the head scores every view separately (view v of each
  embedding that has views, with the embeddings that have none repeated) and the clip's score
  is the mean of the per-view softmax probabilities, as multi-crop testing does in MBT
  (scenic/projects/mbt/trainer.py, ``test_step`` with ``softmax_logits``) and multi-frame
  testing in CAV-MAE (src/run_cavmae_ft.py). :func:`head_logits` returns its log, a valid
  logit vector (its softmax is that mean), so every score downstream is unchanged.

Embeddings with views must agree on V.
"""
from __future__ import annotations

import numpy as np
import torch

from alphafuse.cache import CacheError, FeatureSplit
from .heads import modality_of

# The extraction option that writes an embedding, by the end of its name.
EXTRACTION_FLAGS = {"_tokens": "--tokens", "_layers": "--layers all"}


def extraction_flag(name: str) -> str | None:
    return next((flag for suffix, flag in EXTRACTION_FLAGS.items() if name.endswith(suffix)), None)


def where(split: FeatureSplit) -> str:
    return str(split.path) if split.path is not None else f"split {split.split!r}"


def require_embeddings(split: FeatureSplit, names, head: str | None = None) -> None:
    """Refuse a split lacking an embedding the head reads, naming the extraction flag that adds it."""
    missing = [n for n in names if n not in split.embeddings]
    if missing:
        flags = sorted({f for f in map(extraction_flag, missing) if f})
        fix = (f"extract with {' and '.join(flags)} to add {', '.join(missing)}" if flags
               else "use a cache that has it")
        reader = f"the {head} head" if head else "this head"
        raise CacheError(f"{where(split)} has no {', '.join(missing)} embedding, which {reader} reads "
                         f"(it has: {', '.join(split.embeddings) or 'none'}); {fix}")


def view_counts(split: FeatureSplit, names) -> dict[str, int]:
    """{name: V} for the embeddings among ``names`` that have views (embedding_info {"views": V})."""
    counts = {}
    for name in names:
        views = (split.embedding_info.get(name) or {}).get("views")
        if views is None:
            continue
        shape = split.embeddings[name].shape
        if not (isinstance(views, int) and views >= 1 and len(shape) >= 3 and shape[1] == views):
            raise CacheError(f"{where(split)}: embedding {name!r} says it has {views!r} views but its shape is "
                             f"{tuple(shape)}; expected (N, {views}, ...)")
        counts[name] = views
    if len(set(counts.values())) > 1:
        raise CacheError(f"{where(split)}: embeddings have different numbers of views "
                         f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); they must agree")
    return counts


class HeadInputs:
    """The embeddings ``names`` of ``split`` as batches of float32 tensors on ``device``.

    ``zeroed``: modalities whose inputs are served as zeros (missing-modality evaluation).
    """

    def __init__(self, split: FeatureSplit, names, device="cpu", *, pool_views: bool = True, zeroed=(),
                 head: str | None = None):
        require_embeddings(split, names, head)
        self.device = torch.device(device)
        self.names = tuple(names)
        self.views = view_counts(split, self.names)
        self.num_views = next(iter(self.views.values()), None)
        self.pool_views = pool_views
        self.zeroed = tuple(zeroed)
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.sources = {}
        for name in self.names:
            array = split.embeddings[name]
            if isinstance(array, np.ndarray) and array.dtype == np.float32:
                self.sources[name] = torch.from_numpy(array).to(self.device)
            else:
                self.sources[name] = array   # float16 or lazily read: converted a batch at a time
        self.shapes = {n: tuple(split.embeddings[n].shape[2 if n in self.views else 1:]) for n in self.names}

    @classmethod
    def from_tensors(cls, tensors: dict, labels=None, views: dict | None = None) -> "HeadInputs":
        """Inputs held as tensors already (the end-to-end model, the legacy (video, audio) calls)."""
        self = cls.__new__(cls)
        first = next(iter(tensors.values()))
        self.device, self.names = first.device, tuple(tensors)
        self.views = dict(views or {})
        self.num_views = next(iter(self.views.values()), None)
        self.pool_views, self.zeroed = False, ()
        self.labels = labels
        self.sources = dict(tensors)
        self.shapes = {n: tuple(t.shape[2 if n in self.views else 1:]) for n, t in tensors.items()}
        return self

    def __len__(self) -> int:
        return len(next(iter(self.sources.values())))

    def clip_floats(self) -> int:
        """Input floats per clip, all views included."""
        return sum(int(np.prod(shape)) * self.views.get(name, 1) for name, shape in self.shapes.items())

    def without(self, modality: str) -> "HeadInputs":
        """The same inputs with every embedding of ``modality`` served as zeros."""
        other = object.__new__(HeadInputs)
        other.__dict__.update(self.__dict__)
        other.zeroed = (*self.zeroed, modality)
        return other

    def batch(self, idx: torch.Tensor, view: int | None = None) -> dict[str, torch.Tensor]:
        """Rows ``idx`` of every input; views averaged (``view=None`` while pooling) or view ``view``."""
        out = {}
        for name, source in self.sources.items():
            if isinstance(source, torch.Tensor):
                x = source[idx]
            else:
                rows = source[idx.cpu().numpy()]   # a LazyArray reads them sorted, returns them in order
                x = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device, torch.float32)
            if name in self.views:
                x = x.mean(dim=1) if view is None else x[:, view]
            if modality_of(name) in self.zeroed:
                x = torch.zeros_like(x)
            out[name] = x
        return out


def head_logits(model, data: HeadInputs, idx: torch.Tensor) -> torch.Tensor:
    """Eval-mode scores of rows ``idx``: the head's logits, or, when the inputs have views, the log
    of the mean over views of the per-view softmax (see the module docstring)."""
    if data.num_views is None or data.pool_views:
        return model(data.batch(idx))
    probs = sum(torch.softmax(model(data.batch(idx, v)), dim=-1) for v in range(data.num_views)) / data.num_views
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
