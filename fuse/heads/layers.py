"""``layers``: a learned softmax-weighted sum over a backbone's cached layers, then the MLP.

    x_m = sum_l softmax(layer_logits_m)_l * layers_m[:, l]      for each modality m
    logits = MLP([x_video, x_audio])

The weighted sum of SUPERB's upstream-downstream protocol (Yang et al. 2021, "SUPERB: Speech
processing Universal PERformance Benchmark": a downstream model on a learnable weighted sum of
a frozen model's hidden states): which block's pooled embedding a task wants is learned rather
than assumed to be the last. The weights start uniform and train at alpha_lr. Reads
``video_layers`` / ``audio_layers`` (N, L, D), written by extraction with ``--layers all``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..transforms import MODALITIES
from . import register_head
from .base import DROPOUT, HIDDEN, FusionHead, Head, check_mlp


@register_head("layers", help="softmax-weighted sum over each backbone's cached layers (SUPERB-style), then the MLP")
class LayersHead(Head):
    def __init__(self, shapes: dict, num_classes: int, modalities: str = "both", hidden: Sequence[int] = HIDDEN,
                 dropout: float = DROPOUT, modality_dropout: float = 0.0):
        super().__init__(modality_dropout)
        check_mlp(hidden, dropout)
        self.names = self.needs(modalities)
        self.layer_logits = nn.ParameterDict()
        width = 0
        for name in self.names:
            shape = tuple(shapes[name])
            if len(shape) != 2:
                raise ValueError(f"{name} must be (N, layers, D) for the layers head, got per-clip shape {shape}")
            self.layer_logits[name.split("_")[0]] = nn.Parameter(torch.zeros(shape[0]))
            width += shape[1]
        self.head = FusionHead(width, num_classes, hidden, dropout)
        self._record(shapes, num_classes, modalities=modalities, hidden=tuple(int(h) for h in hidden),
                     dropout=float(dropout))

    @classmethod
    def needs(cls, modalities: str = "both", **_) -> tuple[str, ...]:
        if modalities not in MODALITIES:
            raise ValueError(f"unknown modalities {modalities!r}; choose one of {', '.join(MODALITIES)}")
        return ("video_layers", "audio_layers") if modalities == "both" else (f"{modalities}_layers",)

    def layer_weights(self) -> dict[str, torch.Tensor]:
        return {m: torch.softmax(logits, dim=0) for m, logits in self.layer_logits.items()}

    def combine(self, inputs: dict) -> torch.Tensor:
        weights = self.layer_weights()
        return self.head(torch.cat([torch.einsum("bld,l->bd", inputs[n], weights[n.split("_")[0]])
                                    for n in self.names], dim=-1))

    def trained_values(self) -> dict:
        return {f"{m}_layer_weights": w.detach().cpu().tolist() for m, w in self.layer_weights().items()}
