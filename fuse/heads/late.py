"""``late``: one MLP per modality; their logits mixed with a weight, fixed or learned.

    logits = w * MLP_video(video) + (1 - w) * MLP_audio(audio)

``weight=None`` (the default) learns ``w = sigmoid(weight_logit)`` from 0.5, at alpha_lr like the
concat head's learned alpha; a number in [0, 1] fixes it (a grid sweeps it as it sweeps alpha).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from . import register_head
from .base import DROPOUT, HIDDEN, FusionHead, Head, check_mlp, pooled_dims


@register_head("late", help="one MLP per modality, logits mixed w*video + (1-w)*audio (weight: fixed w, or learned)")
class LateHead(Head):
    def __init__(self, shapes: dict, num_classes: int, weight: float | None = None,
                 hidden: Sequence[int] = HIDDEN, dropout: float = DROPOUT, modality_dropout: float = 0.0):
        super().__init__(modality_dropout)
        check_mlp(hidden, dropout)
        weight = self.check_options({"weight": weight})["weight"]
        video_dim, audio_dim = pooled_dims(shapes, ("video", "audio"))
        self.video_head = FusionHead(video_dim, num_classes, hidden, dropout)
        self.audio_head = FusionHead(audio_dim, num_classes, hidden, dropout)
        self.weight = weight
        if weight is None:
            self.weight_logit = nn.Parameter(torch.zeros(()))
        self._record(shapes, num_classes, weight=weight, hidden=tuple(int(h) for h in hidden), dropout=float(dropout))

    @classmethod
    def needs(cls, **_) -> tuple[str, ...]:
        return ("video", "audio")

    @classmethod
    def check_options(cls, options: dict) -> dict:
        weight = options.get("weight")
        if weight is not None:
            if not (isinstance(weight, numbers.Real) and not isinstance(weight, bool) and math.isfinite(weight)
                    and 0 <= weight <= 1):
                raise ValueError(f"late head: weight must be a number in [0, 1] (the video logits' share) or "
                                 f"None (learned), got {weight!r}")
            options["weight"] = float(weight)
        return options

    def video_weight(self) -> torch.Tensor | float:
        return torch.sigmoid(self.weight_logit) if self.weight is None else self.weight

    def combine(self, inputs: dict) -> torch.Tensor:
        w = self.video_weight()
        return w * self.video_head(inputs["video"]) + (1 - w) * self.audio_head(inputs["audio"])

    def trained_values(self) -> dict:
        return {"learned_weight": float(self.video_weight().detach()) if self.weight is None else None}
