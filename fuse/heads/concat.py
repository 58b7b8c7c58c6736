"""``concat``: the paper's head. Transform one modality, concatenate, MLP (the default head).

    logits = MLP([t(video), audio])   or   MLP([video, t(audio)])

with ``t`` one of fuse/transforms.py's transforms (``none`` is the plain-concatenation
baseline every grid compares against). Its weights are initialised exactly as before heads had
names (ScaledConcat draws nothing; the MLP's layers in order), so seeds give the same numbers.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..transforms import MODALITIES, ScaledConcat
from . import register_head
from .base import DROPOUT, HIDDEN, FusionHead, Head, check_mlp


@register_head("concat", help="the paper's head: transform one modality (--transform), concatenate, MLP (default)")
class AlphaFuseHead(Head):
    """ScaledConcat + FusionHead: ``forward({"video", "audio"}) -> logits``.

    The old call form ``forward(video_emb, audio_emb)`` still works. ``config`` holds everything
    needed to rebuild the module (``from_config``), so a saved run is its config plus a state dict.
    """

    def __init__(self, video_dim: int, audio_dim: int, num_classes: int, transform: str = "none",
                 target: str = "audio", alpha: float | None = None, modalities: str = "both",
                 hidden: Sequence[int] = HIDDEN, dropout: float = DROPOUT, modality_dropout: float = 0.0):
        super().__init__(modality_dropout)
        self.fuse = ScaledConcat(transform, target, alpha, modalities)
        self.head = FusionHead(self.fuse.out_dim(video_dim, audio_dim), num_classes, hidden, dropout)
        self.video_dim, self.audio_dim = int(video_dim), int(audio_dim)

    @classmethod
    def needs(cls, modalities: str = "both", **_) -> tuple[str, ...]:
        return ("video", "audio") if modalities == "both" else (modalities,)

    @classmethod
    def build(cls, shapes: dict, num_classes: int, **options) -> "AlphaFuseHead":
        modalities = options.get("modalities", "both")
        if modalities not in MODALITIES:
            raise ValueError(f"unknown modalities {modalities!r}; choose one of {', '.join(MODALITIES)}")
        check_mlp(options.get("hidden", HIDDEN), options.get("dropout", DROPOUT))
        dims = {m: (tuple(shapes[m]) if m in shapes else (0,)) for m in ("video", "audio")}
        for m in cls.needs(modalities):
            if m not in shapes:
                raise ValueError(f"head concat needs the shape of {m}")
            if len(dims[m]) != 1:
                raise ValueError(f"{m} must be a pooled (N, D) embedding for the concat head, got per-clip "
                                 f"shape {dims[m]}")
        return cls(dims["video"][0], dims["audio"][0], num_classes, **options)

    @property
    def config(self) -> dict:
        return {
            "name": "concat",
            "video_dim": self.video_dim,
            "audio_dim": self.audio_dim,
            "num_classes": self.head.num_classes,
            "transform": self.fuse.transform,
            "target": self.fuse.target,
            "alpha": self.fuse.alpha,
            "modalities": self.fuse.modalities,
            "hidden": list(self.head.hidden),
            "dropout": self.head.dropout,
            "modality_dropout": self.modality_dropout,
        }

    def input_names(self) -> tuple[str, ...]:
        return self.needs(self.fuse.modalities)

    @property
    def shapes(self) -> dict:
        return {m: (getattr(self, f"{m}_dim"),) for m in self.needs(self.fuse.modalities)}

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @classmethod
    def from_config(cls, config: dict) -> "AlphaFuseHead":
        return cls(**{k: v for k, v in config.items() if k != "name"})

    @property
    def learned_alpha(self) -> float | None:
        """The trained scale of a ``learned`` transform; None for the fixed transforms."""
        return self.fuse.learned_alpha

    def trained_values(self) -> dict:
        return {"learned_alpha": self.learned_alpha}

    def forward(self, inputs, audio_emb: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(inputs, dict):   # forward(video_emb, audio_emb)
            inputs = {"video": inputs, "audio": audio_emb}
        inputs = self.drop(inputs)
        return self.head(self.fuse(inputs.get("video"), inputs.get("audio")))
