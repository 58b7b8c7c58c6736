"""``probe``: an MLP (a linear probe with ``hidden=()``) on ONE named cached embedding.

    logits = MLP(x[input])

For embeddings that are already fused, such as CAV-MAE's ``joint`` (the input of its own
classifier), or for one modality's pooled embedding alone. Per-view embeddings follow the
views rule of every head: averaged for training, per-view softmax averaged for evaluation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import register_head
from .base import DROPOUT, HIDDEN, FusionHead, Head, check_mlp, pooled_dims


@register_head("probe", help="an MLP on one cached embedding (--head-option input=joint for CAV-MAE's; "
                             "--hidden '' for a linear probe)")
class ProbeHead(Head):
    def __init__(self, shapes: dict, num_classes: int, input: str = "joint", hidden: Sequence[int] = HIDDEN,
                 dropout: float = DROPOUT, modality_dropout: float = 0.0):
        super().__init__(modality_dropout)
        check_mlp(hidden, dropout)
        if input not in shapes:
            raise ValueError(f"head probe reads {input!r}, which is not among the embeddings ({', '.join(shapes)})")
        (dim,) = pooled_dims(shapes, (input,))
        self.input = input
        self.head = FusionHead(dim, num_classes, hidden, dropout)
        self._record(shapes, num_classes, input=input, hidden=tuple(int(h) for h in hidden), dropout=float(dropout))

    @classmethod
    def needs(cls, input: str = "joint", **_) -> tuple[str, ...]:
        return (input,)

    @classmethod
    def check_options(cls, options: dict) -> dict:
        if not isinstance(options.get("input", "joint"), str):
            raise ValueError(f"head probe option input must be an embedding name, got {options['input']!r}")
        return options

    def combine(self, inputs: dict) -> torch.Tensor:
        return self.head(inputs[self.input])
