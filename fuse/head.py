"""The trainable part of the alpha-transformer: a fully connected head on the fused embedding."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .transforms import ScaledConcat


class FusionHead(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> num_classes`` with ReLU and dropout after each hidden layer.

    The paper's head is 1536 -> 1024 -> 512 -> classes with dropout 0.5; ``hidden=()`` gives a
    linear probe.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int] = (1024, 512),
                 dropout: float = 0.5):
        sizes = [int(in_dim), *(int(h) for h in hidden)]
        if any(s < 1 for s in sizes) or num_classes < 1:
            raise ValueError(f"head sizes must be positive, got in_dim={in_dim}, hidden={tuple(hidden)}, "
                             f"num_classes={num_classes}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], int(num_classes)))
        super().__init__(*layers)
        self.in_dim, self.num_classes = sizes[0], int(num_classes)
        self.hidden, self.dropout = tuple(sizes[1:]), float(dropout)


class AlphaFuseHead(nn.Module):
    """ScaledConcat + FusionHead: ``forward(video_emb, audio_emb) -> logits``.

    ``config`` holds everything needed to rebuild the module (``from_config``), so a saved run
    is its ``config`` plus a state dict.
    """

    def __init__(self, video_dim: int, audio_dim: int, num_classes: int, transform: str = "none",
                 target: str = "audio", alpha: float | None = None, modalities: str = "both",
                 hidden: Sequence[int] = (1024, 512), dropout: float = 0.5):
        super().__init__()
        self.fuse = ScaledConcat(transform, target, alpha, modalities)
        self.head = FusionHead(self.fuse.out_dim(video_dim, audio_dim), num_classes, hidden, dropout)
        self.video_dim, self.audio_dim = int(video_dim), int(audio_dim)

    @property
    def config(self) -> dict:
        return {
            "video_dim": self.video_dim,
            "audio_dim": self.audio_dim,
            "num_classes": self.head.num_classes,
            "transform": self.fuse.transform,
            "target": self.fuse.target,
            "alpha": self.fuse.alpha,
            "modalities": self.fuse.modalities,
            "hidden": list(self.head.hidden),
            "dropout": self.head.dropout,
        }

    @property
    def learned_alpha(self) -> float | None:
        """The trained scale of a ``learned`` transform; None for the fixed transforms."""
        return self.fuse.learned_alpha

    @classmethod
    def from_config(cls, config: dict) -> "AlphaFuseHead":
        return cls(**config)

    def forward(self, video_emb: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
        return self.head(self.fuse(video_emb, audio_emb))
