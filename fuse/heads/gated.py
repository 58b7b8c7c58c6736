"""``gated``: per-clip modality gates computed from the inputs, then the MLP.

    g = 2 * sigmoid(W [video; audio] + b)          (B, 2): one gate per modality and clip
    logits = MLP([g_video * video, g_audio * audio])

An input-dependent alpha: where the concat head scales one modality by a constant, this head
learns from the clip itself how much of each modality to pass on (e.g. turning audio down on
clips whose sound says little). ``W`` and ``b`` start at zero, so every gate starts at exactly
1 and the head starts as the plain concatenation; the gates train at the head's learning rate.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import register_head
from .base import DROPOUT, HIDDEN, FusionHead, Head, check_mlp, pooled_dims


@register_head("gated", help="per-clip gates g = 2 sigmoid(W[v;a]) scale each modality before the MLP")
class GatedHead(Head):
    def __init__(self, shapes: dict, num_classes: int, hidden: Sequence[int] = HIDDEN, dropout: float = DROPOUT,
                 modality_dropout: float = 0.0):
        super().__init__(modality_dropout)
        check_mlp(hidden, dropout)
        video_dim, audio_dim = pooled_dims(shapes, ("video", "audio"))
        self.gate = nn.Linear(video_dim + audio_dim, 2)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.head = FusionHead(video_dim + audio_dim, num_classes, hidden, dropout)
        self._record(shapes, num_classes, hidden=tuple(int(h) for h in hidden), dropout=float(dropout))

    @classmethod
    def needs(cls, **_) -> tuple[str, ...]:
        return ("video", "audio")

    def gates(self, inputs: dict) -> torch.Tensor:
        """(B, 2): the video and audio gates of each clip, in (0, 2)."""
        return 2 * torch.sigmoid(self.gate(torch.cat([inputs["video"], inputs["audio"]], dim=-1)))

    def combine(self, inputs: dict) -> torch.Tensor:
        g = self.gates(inputs)
        return self.head(torch.cat([g[:, :1] * inputs["video"], g[:, 1:] * inputs["audio"]], dim=-1))
